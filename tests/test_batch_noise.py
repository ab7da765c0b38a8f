"""noise.backend: device: the batched noise gives per op what the albumentations path gives (mean, spread,
fraction of pixels changed on a fixed batch), draws per image, and makes the teaching modes' views."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from noisystudent.batch_noise import BatchNoise, ToUint8, equalize_cv, resolve_backend
from noisystudent.config import NoiseConfig
from noisystudent.randaugment import randaugment_op
from noisystudent.transforms import create_transform

SIDE = 32


def _batch(n: int, chans: int, seed: int = 0) -> np.ndarray:
    """Smooth random images with a little grain: structure for the geometric ops, a spread of levels for the colour ones."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.integers(0, 256, (6, 6, chans)).astype(np.float32)
        img = cv2.resize(low, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC).reshape(SIDE, SIDE, chans)
        out.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def _stats(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    y, x = y.astype(np.float32), x.astype(np.float32)
    return float(y.mean()), float(y.std()), float((np.abs(y - x) > 8).mean())


@pytest.mark.parametrize("chans", [3, 1])
@pytest.mark.parametrize("m", [9.0, 27.0])
def test_each_randaugment_op_matches_the_cpu_backend(chans, m):
    x = _batch(64, chans)
    noise = NoiseConfig(randaugment_n=1, randaugment_m=m, hflip=False, crop_padding=0, random_erasing=0.0)
    dev = BatchNoise(noise, SIDE, chans, [0.5] * chans, [0.25] * chans, seed=0)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    bad = []
    for name in dev.names:
        op = randaugment_op(name, m, chans)
        # a signed op is OneOf(+v, -v): compare sign by sign, so the two backends' coin flips do not count
        variants = list(op.transforms) if isinstance(op, A.OneOf) else [op]
        for sign, cpu_op in zip((1.0, -1.0), variants):
            comp = A.Compose([cpu_op], p=1.0, seed=0)
            cpu = np.stack([comp(image=im)["image"].reshape(SIDE, SIDE, chans) for im in x])
            fn = dev.fns[name]
            got = (fn(xt, sign) if fn is not None else xt).permute(0, 2, 3, 1).numpy()
            a, b = _stats(cpu, x), _stats(got, x)
            # grey levels for mean and spread, a fraction for changed pixels; the ops differ at the pixel
            # level (resampling, PIL's sharpness blend) but not in what they do to the batch
            if abs(a[0] - b[0]) > 3.0 or abs(a[1] - b[1]) > 3.0 or abs(a[2] - b[2]) > 0.05:
                bad.append(f"{name}{'+' if sign > 0 else '-'}: cpu mean/std/changed {a[0]:.1f}/{a[1]:.1f}/{a[2]:.3f}, "
                           f"device {b[0]:.1f}/{b[1]:.1f}/{b[2]:.3f}")
    # and the batch path draws every op it is told to, per image
    assert not torch.equal(dev.rand_augment(xt, only="Rotate"), xt)
    assert not bad, "; ".join(bad)


def test_equalize_is_opencvs():
    x = np.random.default_rng(1).integers(30, 200, (4, 3, 17, 19), dtype=np.uint8)
    got = equalize_cv(torch.from_numpy(x)).numpy().astype(int)
    want = np.stack([np.stack([cv2.equalizeHist(ch) for ch in im]) for im in x]).astype(int)
    assert np.abs(got - want).max() <= 1 and (got != want).mean() < 0.01


def test_whole_noise_matches_the_cpu_transform_in_distribution():
    """Crop, flip, RandAugment n2 m9 and erasing, normalised: the two backends' outputs share mean and spread,
    and differ from the clean image by as much."""
    chans, mean, std = 3, [0.5, 0.45, 0.4], [0.25, 0.25, 0.25]
    noise = NoiseConfig(randaugment_n=2, randaugment_m=9.0, hflip=True, crop_padding=4, random_erasing=0.5)
    x = _batch(128, chans, seed=2)
    tf = create_transform(SIDE, chans, mean, std, noise, seed=0)
    cpu = torch.stack([tf(im) for im in x])
    dev = BatchNoise(noise, SIDE, chans, mean, std, seed=0)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    got = dev(xt)
    clean = dev.clean(xt)
    assert got.shape == cpu.shape and got.dtype == torch.float32
    assert abs(float(cpu.mean() - got.mean())) < 0.08
    assert abs(float(cpu.std() - got.std())) < 0.08
    d_cpu, d_dev = float((cpu - clean).abs().mean()), float((got - clean).abs().mean())
    assert abs(d_cpu - d_dev) < 0.15 * d_cpu, (d_cpu, d_dev)
    erased = lambda t: float((t == 0).all(1).float().mean())  # noqa: E731 - pixels set to 0 in every channel
    assert abs(erased(cpu) - erased(got)) < 0.04


def test_draws_are_per_image_and_seeded():
    noise = NoiseConfig(randaugment_n=2, randaugment_m=15.0, hflip=True, crop_padding=2, random_erasing=0.25)
    one = _batch(1, 1, seed=3)
    xt = torch.from_numpy(np.repeat(one, 32, axis=0)).permute(0, 3, 1, 2).contiguous()
    a = BatchNoise(noise, SIDE, 1, [0.5], [0.25], seed=7)(xt)
    b = BatchNoise(noise, SIDE, 1, [0.5], [0.25], seed=7)(xt)
    assert torch.equal(a, b)
    distinct = {tuple(r.flatten()[::37].tolist()) for r in a}
    assert len(distinct) > 16  # 32 copies of one image come out mostly different


def test_teaching_views_and_loader_transform():
    noise = NoiseConfig(randaugment_n=1, randaugment_m=9.0, hflip=True, crop_padding=2)
    bn = BatchNoise(noise, SIDE, 3, [0.5] * 3, [0.25] * 3, seed=0)
    x = _batch(6, 3)
    u8 = ToUint8(SIDE, 3, [0.5] * 3, [0.25] * 3)(x[0])
    assert u8.dtype == torch.uint8 and u8.shape == (3, SIDE, SIDE)
    xt = torch.stack([ToUint8(SIDE, 3, [0.5] * 3, [0.25] * 3)(im) for im in x])
    assert bn.views(xt, "consistent").shape == (6, 3, SIDE, SIDE)
    fixed = bn.views(xt, "fixed")
    assert fixed.shape == (6, 2, 3, SIDE, SIDE) and torch.equal(fixed[:, 1], bn.clean(xt))
    ind = bn.views(xt, "independent")
    assert not torch.equal(ind[:, 0], ind[:, 1])
    with pytest.raises(ValueError, match="uint8"):
        bn(xt.float())


def test_backend_resolution():
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert resolve_backend("auto", torch.device("cuda")) == "device"
    assert resolve_backend("device", torch.device("cpu")) == "device"
    with pytest.raises(ValueError, match="noise.backend"):
        resolve_backend("gpu", torch.device("cpu"))
