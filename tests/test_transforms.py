"""Input noise and the eval transform, on real Fashion-MNIST pixels when installed (else a textured
synthetic image), with real albumentations, real pickling and real DataLoader worker processes."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from noisystudent.config import NoiseConfig
from noisystudent.errors import UserError
from noisystudent.randaugment import RANDAUGMENT_OPS, _ops
from noisystudent.transforms import ImageTransform, create_transform, denormalize, parse_randaugment, rand_augment

FMNIST_TEST_IMAGES = Path(os.environ.get("NOISYSTUDENT_FMNIST", "/usr/share/datasets/fashion-mnist")) / "t10k-images-idx3-ubyte.gz"
SIZE = 28
CLEAN = dict(randaugment_n=0, randaugment_m=0.0, hflip=False, crop_padding=0, random_erasing=0.0)


def _stats(in_chans: int) -> tuple[list[float], list[float]]:
    return [0.2860, 0.30, 0.25][:in_chans], [0.3530, 0.32, 0.40][:in_chans]


@pytest.fixture(scope="module")
def gray_images(tmp_path_factory) -> list[np.ndarray]:
    """Eight 28x28 uint8 images: Fashion-MNIST test images, or textured synthetic ones without it."""
    if FMNIST_TEST_IMAGES.exists():
        from torchvision.datasets.mnist import read_image_file

        raw = tmp_path_factory.mktemp("fmnist") / "t10k-images-idx3-ubyte"
        with gzip.open(FMNIST_TEST_IMAGES, "rb") as src, open(raw, "wb") as dst:
            shutil.copyfileobj(src, dst)
        images = read_image_file(str(raw))[:8].numpy()
        return [np.ascontiguousarray(im) for im in images]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out = []
    for k in range(8):
        texture = 120 + 80 * np.sin(xx / (2 + k)) * np.cos(yy / (3 + k)) + 2 * (xx - yy)
        out.append(np.clip(texture + rng.normal(0, 10, texture.shape), 0, 255).astype(np.uint8))
    return out


def _as_chans(gray: np.ndarray, in_chans: int) -> np.ndarray:
    """HWC with ``in_chans`` channels; the RGB version has distinct colour channels (saturation matters)."""
    if in_chans == 1:
        return gray[:, :, None]
    return np.ascontiguousarray(np.stack([gray, 255 - gray, np.roll(gray, 5, axis=1) // 2 + 60], axis=-1))


def _mixed_sizes(gray_images: list[np.ndarray], in_chans: int) -> list[np.ndarray]:
    """The same pixels at the sizes a folder of photos mixes: native, larger, smaller, non-square."""
    sizes = [(28, 28), (36, 50), (20, 17), (64, 64)]
    out = []
    for i, gray in enumerate(gray_images):
        h, w = sizes[i % len(sizes)]
        resized = cv2.resize(gray, (w, h), interpolation=cv2.INTER_LINEAR)
        out.append(_as_chans(resized, in_chans))
    return out


# -- shapes, dtypes, changes --------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 3])
def test_randaugment_changes_images_and_keeps_shape_and_dtype(gray_images, in_chans):
    mean, std = _stats(in_chans)
    noisy = create_transform(SIZE, in_chans, mean, std, NoiseConfig(randaugment_n=2, randaugment_m=15.0), seed=0)
    clean = create_transform(SIZE, in_chans, mean, std)
    changed = total = 0
    for img in _mixed_sizes(gray_images, in_chans):
        ref = clean(img)
        assert ref.shape == (in_chans, SIZE, SIZE) and ref.dtype == torch.float32
        for _ in range(10):
            out = noisy(img)
            assert out.shape == (in_chans, SIZE, SIZE)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all()
            changed += int(not torch.equal(out, ref))
            total += 1
    assert changed >= 0.9 * total


@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_op_changes_a_real_image_at_full_magnitude_and_keeps_channels(gray_images, in_chans):
    import albumentations as A

    img = _as_chans(gray_images[0], in_chans)
    ops = _ops(1.0, in_chans)
    expected = [n for n in RANDAUGMENT_OPS if not (in_chans == 1 and n == "Color")]
    assert list(ops) == expected
    for name, op in ops.items():
        outs = [A.Compose([op], seed=s)(image=img)["image"] for s in range(4)]
        for out in outs:
            assert out.shape == img.shape and out.dtype == np.uint8, name
        if name != "Identity":
            assert any(not np.array_equal(out, img) for out in outs), f"{name} left the image unchanged"


@pytest.mark.parametrize("in_chans", [1, 3])
def test_ops_with_a_strength_are_identity_at_magnitude_zero(gray_images, in_chans):
    import albumentations as A

    img = _as_chans(gray_images[1], in_chans)
    for name, op in _ops(0.0, in_chans).items():
        if name in ("AutoContrast", "Equalize"):  # these have no strength
            continue
        assert np.array_equal(A.Compose([op], seed=0)(image=img)["image"], img), name


@pytest.mark.parametrize("in_chans", [1, 3])
def test_no_noise_config_equals_eval_transform(gray_images, in_chans):
    mean, std = _stats(in_chans)
    clean = create_transform(SIZE, in_chans, mean, std)
    quiet = create_transform(SIZE, in_chans, mean, std, NoiseConfig(**CLEAN), seed=3)
    for img in _mixed_sizes(gray_images, in_chans):
        for _ in range(3):
            assert torch.equal(quiet(img), clean(img))


def test_stronger_magnitude_changes_images_more_on_average(gray_images):
    mean, std = _stats(1)
    clean = create_transform(SIZE, 1, mean, std)
    imgs = _mixed_sizes(gray_images, 1)
    refs = [clean(img) for img in imgs]
    diffs = []
    for m in (3.0, 15.0, 30.0):
        tf = create_transform(SIZE, 1, mean, std, NoiseConfig(**{**CLEAN, "randaugment_n": 2, "randaugment_m": m}), seed=7)
        d = [float((tf(img) - ref).abs().mean()) for _ in range(40) for img, ref in zip(imgs, refs)]
        diffs.append(float(np.mean(d)))
    assert diffs[0] < diffs[1] < diffs[2], diffs
    assert diffs[2] > 1.5 * diffs[0], diffs


def test_grayscale_randaugment_never_draws_color():
    gray_ops = rand_augment(2, 9.0, 1).transforms
    rgb_ops = rand_augment(2, 9.0, 3).transforms
    assert len(rgb_ops) == len(RANDAUGMENT_OPS) == 14
    assert len(gray_ops) == 13


def test_rand_augment_rejects_out_of_range_arguments():
    for n, m, c in [(-1, 9.0, 3), (15, 9.0, 3), (2, 31.0, 3), (2, -0.5, 1), (2, 9.0, 2)]:
        with pytest.raises(ValueError):
            rand_augment(n, m, c)


# -- the other noise ops ---------------------------------------------------------------------------


def test_hflip_gives_the_image_or_its_mirror_and_both_happen(gray_images):
    mean, std = _stats(1)
    img = _as_chans(gray_images[2], 1)
    ref = create_transform(SIZE, 1, mean, std)(img)
    tf = create_transform(SIZE, 1, mean, std, NoiseConfig(**{**CLEAN, "hflip": True}), seed=0)
    seen = set()
    for _ in range(30):
        out = tf(img)
        if torch.equal(out, ref):
            seen.add("same")
        elif torch.equal(out, ref.flip(-1)):
            seen.add("mirror")
        else:
            pytest.fail("hflip produced something other than the image or its mirror")
    assert seen == {"same", "mirror"}


def test_pad_and_crop_is_a_shifted_window_of_the_zero_padded_image(gray_images):
    mean, std = _stats(1)
    pad = 3
    img = _as_chans(gray_images[3], 1)
    padded = np.pad(img[:, :, 0], pad).astype(np.float32)
    windows = {
        (dy, dx): torch.from_numpy(((padded[dy : dy + SIZE, dx : dx + SIZE] / 255.0 - mean[0]) / std[0])[None])
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
    }
    tf = create_transform(SIZE, 1, mean, std, NoiseConfig(**{**CLEAN, "crop_padding": pad}), seed=1)
    offsets = set()
    for _ in range(40):
        out = tf(img)
        match = [k for k, w in windows.items() if torch.allclose(out, w, atol=1e-5)]
        assert match, "crop output is not a window of the padded image"
        offsets.add(match[0])
    assert len(offsets) > 5


def test_random_erasing_fills_a_rectangle_with_the_mean(gray_images):
    mean, std = _stats(3)
    img = _as_chans(gray_images[4], 3)
    ref = create_transform(SIZE, 3, mean, std)(img)
    tf = create_transform(SIZE, 3, mean, std, NoiseConfig(**{**CLEAN, "random_erasing": 1.0}), seed=2)
    for _ in range(10):
        out = tf(img)
        erased = (out == 0).all(dim=0) & (ref != 0).any(dim=0)
        assert erased.sum() >= 0.02 * SIZE * SIZE * 0.5
        rows, cols = torch.nonzero(erased, as_tuple=True)
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert (out[:, box[0], box[1]] == 0).all()  # one filled rectangle
        keep = torch.ones(SIZE, SIZE, dtype=torch.bool)
        keep[box] = False
        assert torch.equal(out[:, keep], ref[:, keep])  # nothing else touched


# -- eval transform ------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 3])
def test_eval_transform_is_deterministic_and_normalises(gray_images, in_chans):
    mean, std = _stats(in_chans)
    a = create_transform(SIZE, in_chans, mean, std)
    b = create_transform(SIZE, in_chans, mean, std)
    for img in _mixed_sizes(gray_images, in_chans):
        out = a(img)
        assert torch.equal(out, a(img))
        assert torch.equal(out, b(img))
    native = _as_chans(gray_images[0], in_chans)  # already 28x28: resize is the identity
    expected = (native.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(a(native).numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_eval_transform_accepts_2d_grayscale_and_rejects_wrong_channels(gray_images):
    mean, std = _stats(1)
    tf = create_transform(SIZE, 1, mean, std)
    assert torch.equal(tf(gray_images[0]), tf(gray_images[0][:, :, None]))
    with pytest.raises(ValueError, match="uint8"):
        tf(np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        tf(np.zeros((28, 28, 1), np.float32))


@pytest.mark.parametrize("in_chans", [1, 3])
def test_denormalize_inverts_the_eval_transform(gray_images, in_chans):
    mean, std = _stats(in_chans)
    tf = create_transform(SIZE, in_chans, mean, std)
    imgs = [_as_chans(g, in_chans) for g in gray_images[:4]]
    out = denormalize(tf(imgs[0]), mean, std)
    assert out.dtype == np.uint8 and out.shape == (SIZE, SIZE, in_chans)
    assert np.abs(out.astype(int) - imgs[0]).max() <= 1
    batch = denormalize(torch.stack([tf(im) for im in imgs]), mean, std)
    assert batch.shape == (4, SIZE, SIZE, in_chans)
    assert np.abs(batch.astype(int) - np.stack(imgs)).max() <= 1


# -- pickling and randomness ---------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 3])
def test_transforms_survive_a_pickle_round_trip(gray_images, in_chans):
    mean, std = _stats(in_chans)
    img = _mixed_sizes(gray_images, in_chans)[1]
    clean = create_transform(SIZE, in_chans, mean, std)
    assert torch.equal(pickle.loads(pickle.dumps(clean))(img), clean(img))
    noisy = create_transform(SIZE, in_chans, mean, std, NoiseConfig(randaugment_n=3, randaugment_m=20.0, random_erasing=0.5))
    copy = pickle.loads(pickle.dumps(noisy))
    assert isinstance(copy, ImageTransform)
    for _ in range(5):  # the copy carries the generator state: it continues the same stream
        assert torch.equal(copy(img), noisy(img))


def test_seed_fixes_the_stream_and_torch_seed_fixes_the_default(gray_images):
    mean, std = _stats(1)
    img = _as_chans(gray_images[5], 1)
    noise = NoiseConfig(randaugment_n=2, randaugment_m=12.0)

    def draws(tf: ImageTransform) -> list[torch.Tensor]:
        return [tf(img) for _ in range(6)]

    same = [draws(create_transform(SIZE, 1, mean, std, noise, seed=11)) for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(*same))
    other = draws(create_transform(SIZE, 1, mean, std, noise, seed=12))
    assert not all(torch.equal(x, y) for x, y in zip(same[0], other))
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(draws(create_transform(SIZE, 1, mean, std, noise)))
    assert all(torch.equal(x, y) for x, y in zip(*runs))


class _Repeat(Dataset):
    """The same image ``n`` times, through ``transform``."""

    def __init__(self, image: np.ndarray, transform, n: int) -> None:
        self.image, self.transform, self.n = image, transform, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.image)


def test_dataloader_workers_augment_differently_and_reproducibly(gray_images):
    """Forked workers inherit one generator state; without re-seeding both would emit the same images."""
    mean, std = _stats(1)
    tf = create_transform(SIZE, 1, mean, std, NoiseConfig(randaugment_n=3, randaugment_m=20.0), seed=0)
    loader = DataLoader(_Repeat(_as_chans(gray_images[6], 1), tf, 8), batch_size=1, num_workers=2)

    def epoch(seed: int | None) -> list[torch.Tensor]:
        if seed is not None:
            torch.manual_seed(seed)
        return [b[0] for b in loader]

    first = epoch(0)
    # batches alternate between the two workers: 0, 2, 4, 6 come from worker 0, the others from worker 1
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[2], first[3])
    assert all(torch.equal(x, y) for x, y in zip(first, epoch(0)))
    assert not all(torch.equal(x, y) for x, y in zip(first, epoch(1)))


# -- the config string --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("rand-m9-n2", (2, 9.0)),
        ("rand-n3-m27", (3, 27.0)),
        ("rand-m9.5-n1", (1, 9.5)),
        ("rand-m30-n0", (0, 30.0)),
        ("rand-m15", (NoiseConfig().randaugment_n, 15.0)),
        ("rand-n4", (4, NoiseConfig().randaugment_m)),
        (" rand-m0-n14 ", (14, 0.0)),
    ],
)
def test_parse_randaugment_valid(spec, expected):
    assert parse_randaugment(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "rand-", "rnd-m9-n2", "m9-n2", "rand-m9-n2-x1", "rand-m9n2", "rand-m-n2", "rand-m31-n2",
     "rand-m9-n15", "rand-m9-n2.5", "rand-m9-m3", "rand-M9-n2", "rand-m9--n2", "rand-mstd0.5-n2"],
)
def test_parse_randaugment_invalid_names_the_spec(spec):
    with pytest.raises(UserError) as info:
        parse_randaugment(spec)
    assert repr(spec) in str(info.value)


def test_eval_transform_leaves_torch_global_generator_alone():
    mean, std = _stats(1)
    torch.manual_seed(9)
    expected = torch.rand(3)
    torch.manual_seed(9)
    create_transform(SIZE, 1, mean, std)
    assert torch.equal(torch.rand(3), expected)
