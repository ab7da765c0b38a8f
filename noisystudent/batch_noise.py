"""The student's input noise on whole uint8 batches, where the model runs (``noise.backend: device``).

Why: the albumentations path (:mod:`noisystudent.transforms`) augments image by image on the CPU, which
caps a GPU job at what the loader workers can augment (10.8k img/s for ResNet-14 with RandAugment on an
H200, against 48.8k img/s for the same step on device-resident data). Here the loaders only decode and
resize (uint8, 1 byte a pixel to copy), and the noise runs on the ``(N, C, H, W)`` uint8 batch after the
copy, with torchvision's ``transforms.v2.functional`` ops, which take batched tensors on any device (the
CPU too, which is how the tests run it).

Same operations and magnitudes as the CPU path, in the same order: zero-pad by ``crop_padding`` and crop
back at a random offset, horizontal flip with p=0.5, RandAugment (``randaugment_n`` ops per image drawn
with replacement from :data:`~noisystudent.randaugment.RANDAUGMENT_OPS`, each at the strength
:func:`~noisystudent.randaugment.strengths` gives for ``m / 30`` with a random sign), normalise, random
erasing (area 2-33 %, aspect 0.3-3.3, filled with 0 after normalising). Every image draws its own crop
offset, flip, ops, signs and erasing box. Differences from albumentations, all within the ops'
definitions: Sharpness uses PIL's own blend on both signs (the CPU path approximates the blurring sign by a
Gaussian), Equalize and AutoContrast are torchvision's (per channel, as the CPU path's settings), and
bilinear resampling of the geometric ops differs at the pixel level. ``tests/test_batch_noise.py`` checks
op by op that both backends give comparable mean, spread and fraction of changed pixels on a fixed batch.

Hand-written here, and why: torchvision's ``v2.RandAugment``, ``RandomCrop``, ``RandomHorizontalFlip`` and
``RandomErasing`` draw *one* set of parameters per call, i.e. per batch; noise must differ per image. So
the random draws are made here per image (on a seeded CPU generator, so no device sync) and each op is
applied to the rows that drew it (RandAugment: one call per (op, sign) group and slot, at most 28 calls
per slot); crop, flip and erasing are index and mask arithmetic over the batch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .randaugment import MAX_MAGNITUDE, RANDAUGMENT_OPS, strengths

BACKENDS = ("auto", "cpu", "device")
_FILL = 128.0  # geometric ops fill with mid-grey, as the CPU path


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` is ``device`` when training on a GPU, else ``cpu``."""
    if backend == "auto":
        return "device" if torch.device(device).type == "cuda" else "cpu"
    if backend not in BACKENDS:
        raise ValueError(f"noise.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _op_fns(level: float, size: tuple[int, int], in_chans: int) -> dict[str, Optional[Callable[[torch.Tensor, float], torch.Tensor]]]:
    """``name -> fn(x, sign)`` on uint8 ``(n, C, H, W)``; None where the op is the identity at this level."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    st = strengths(level)
    h, w = size
    bil = InterpolationMode.BILINEAR
    fill = [_FILL] * in_chans
    enh, bits, thr = st["enhance"], int(st["bits"]), st["threshold"]

    def affine(x: torch.Tensor, angle: float = 0.0, translate=(0.0, 0.0), shear=(0.0, 0.0)) -> torch.Tensor:
        return TF.affine(x, angle=angle, translate=list(translate), scale=1.0, shear=list(shear), interpolation=bil, fill=fill)

    def signed(value: float, fn: Callable[[torch.Tensor, float], torch.Tensor]):
        return None if value == 0 else (lambda x, s: fn(x, s * value))

    fns: dict[str, Optional[Callable]] = {
        "Identity": None,
        "AutoContrast": lambda x, s: TF.autocontrast(x),
        "Equalize": lambda x, s: equalize_cv(x),
        "Rotate": signed(st["rotate"], lambda x, v: TF.rotate(x, v, interpolation=bil, fill=fill)),
        "Solarize": None if thr > 255.0 else (lambda x, s: TF.solarize(x, thr)),
        "Color": signed(enh, lambda x, v: TF.adjust_saturation(x, 1.0 + v)),
        "Posterize": None if bits >= 8 else (lambda x, s: TF.posterize(x, bits)),
        "Contrast": signed(enh, lambda x, v: TF.adjust_contrast(x, 1.0 + v)),
        "Brightness": signed(enh, lambda x, v: TF.adjust_brightness(x, 1.0 + v)),
        "Sharpness": signed(enh, lambda x, v: TF.adjust_sharpness(x, 1.0 + v)),
        "ShearX": signed(st["shear"], lambda x, v: affine(x, shear=(v, 0.0))),
        "ShearY": signed(st["shear"], lambda x, v: affine(x, shear=(0.0, v))),
        "TranslateX": signed(st["translate"], lambda x, v: affine(x, translate=(v * w, 0.0))),
        "TranslateY": signed(st["translate"], lambda x, v: affine(x, translate=(0.0, v * h))),
    }
    if in_chans == 1:
        del fns["Color"]
    assert tuple(n for n in RANDAUGMENT_OPS if n in fns) == tuple(fns), "op table out of step with randaugment.py"
    return fns


def equalize_cv(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``equalizeHist`` per image and channel on a uint8 batch: the CPU path's Equalize
    (albumentations ``mode="cv"``). torchvision's ``equalize`` is PIL's, which maps each level to the
    count *below* it and brightens images markedly more (mean 154 against 126 on the test batch)."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, device=x.device, dtype=torch.float32).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    cdf = hist.cumsum(1)
    lo = cdf.gather(1, flat.min(1, keepdim=True).values)  # count of the darkest level present
    total = float(h * w)
    scale = 255.0 / (total - lo).clamp_min(1.0)
    lut = ((cdf - lo) * scale).round().clamp_(0, 255).to(torch.uint8)
    out = lut.gather(1, flat).reshape(n, c, h, w)
    constant = (lo == total).view(n, c, 1, 1)  # one level only: OpenCV leaves such an image as it is
    return torch.where(constant, x, out)


class BatchNoise:
    """``noise`` (a :class:`~noisystudent.config.NoiseConfig`) on uint8 ``(N, C, S, S)`` batches.

    ``noise(x)`` returns the noised batch normalised by ``mean``/``std`` (float32, on ``x``'s device);
    :meth:`clean` the same without noise (the ``fixed`` teacher's view); :meth:`rand_augment` the
    RandAugment part alone on uint8. Draws come from a CPU generator seeded by ``seed`` (None: one draw of
    torch's global generator, so a seeded job augments the same way every run)."""

    def __init__(self, noise: Any, image_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float],
                 seed: Optional[int] = None) -> None:
        self.noise, self.image_size, self.in_chans = noise, int(image_size), int(in_chans)
        self.mean = torch.tensor([float(v) * 255.0 for v in mean]).view(1, -1, 1, 1)
        self.std = torch.tensor([float(v) * 255.0 for v in std]).view(1, -1, 1, 1)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
        self.gen = torch.Generator().manual_seed(int(seed))
        self.fns = _op_fns(float(noise.randaugment_m) / MAX_MAGNITUDE, (self.image_size, self.image_size), self.in_chans)
        self.names = list(self.fns)

    # -- the pieces, each per image ------------------------------------------------------------------
    def crop(self, x: torch.Tensor) -> torch.Tensor:
        p = int(self.noise.crop_padding)
        if p <= 0:
            return x
        n, c, h, w = x.shape
        xp = F.pad(x, (p, p, p, p), value=0)
        oy = torch.randint(0, 2 * p + 1, (n,), generator=self.gen).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=self.gen).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        return xp[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
                  rows, cols]

    def flip(self, x: torch.Tensor) -> torch.Tensor:
        if not self.noise.hflip:
            return x
        mask = (torch.rand(len(x), generator=self.gen) < 0.5).to(x.device)
        return torch.where(mask[:, None, None, None], x.flip(-1), x)

    def rand_augment(self, x: torch.Tensor, only: Optional[str] = None) -> torch.Tensor:
        """``randaugment_n`` draws per image (``only``: every draw is that op, for the per-op comparison)."""
        n_ops = int(self.noise.randaugment_n)
        if n_ops <= 0 or len(x) == 0:
            return x
        x = x.clone()
        for _ in range(n_ops):
            ops = (torch.full((len(x),), self.names.index(only)) if only is not None
                   else torch.randint(0, len(self.names), (len(x),), generator=self.gen))
            signs = torch.randint(0, 2, (len(x),), generator=self.gen) * 2 - 1
            for k, name in enumerate(self.names):
                fn = self.fns[name]
                if fn is None:
                    continue
                for s in (1, -1):
                    rows = torch.nonzero((ops == k) & (signs == s)).flatten()  # CPU: no device sync
                    if len(rows):
                        idx = rows.to(x.device)
                        x[idx] = fn(x[idx], float(s))
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return x.float().sub_(mean).div_(std)

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """Random erasing on a normalised batch: a box of 2-33 % of the area, aspect 0.3-3.3, set to 0."""
        p = float(self.noise.random_erasing)
        if p <= 0:
            return x
        n, _, h, w = x.shape
        g = self.gen
        hit = torch.rand(n, generator=g) < p
        area = (0.02 + torch.rand(n, generator=g) * (0.33 - 0.02)) * h * w
        ratio = torch.exp(np.log(0.3) + torch.rand(n, generator=g) * (np.log(3.3) - np.log(0.3)))
        bh = torch.sqrt(area * ratio).round().clamp(1, h).long()
        bw = torch.sqrt(area / ratio).round().clamp(1, w).long()
        top = (torch.rand(n, generator=g) * (h - bh + 1)).long()
        left = (torch.rand(n, generator=g) * (w - bw + 1)).long()
        bh, bw, top, left, hit = (t.to(x.device) for t in (bh, bw, top, left, hit))
        r = torch.arange(h, device=x.device)[None, :, None]
        c = torch.arange(w, device=x.device)[None, None, :]
        box = ((r >= top[:, None, None]) & (r < (top + bh)[:, None, None]) & (c >= left[:, None, None])
               & (c < (left + bw)[:, None, None]) & hit[:, None, None])
        return x.masked_fill(box[:, None], 0.0)

    # -- the whole noise -------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.erase(self.normalize(self.rand_augment(self.flip(self.crop(x)))))

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.normalize(x)

    def _check(self, x: torch.Tensor) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected a (N, {self.in_chans}, H, W) uint8 batch, got {tuple(x.shape)} {x.dtype}")

    def views(self, x: torch.Tensor, mode: Optional[str]) -> torch.Tensor:
        """What the CPU path's loader transform gives for a teaching ``mode``: the student's view, or for
        ``fixed``/``independent`` ``(N, 2, C, H, W)`` with the teacher's view second (clean, or noised
        independently)."""
        if mode == "fixed":
            return torch.stack([self(x), self.clean(x)], dim=1)
        if mode == "independent":
            return torch.stack([self(x), self(x)], dim=1)
        return self(x)


class ToUint8:
    """The loaders' transform under the device backend: HWC uint8 image -> CHW uint8 tensor at ``image_size``
    (the eval transform's resize, nothing random: the noise comes after the copy)."""

    def __init__(self, image_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float]) -> None:
        from .feed import EvalInput

        inp = EvalInput(image_size, in_chans, mean, std)
        self.fit, self.fit_batch = inp.fit, inp.fit_batch

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.fit(np.asarray(image)).transpose(2, 0, 1)))

    def batch(self, images: np.ndarray) -> torch.Tensor:
        """``(N, H, W, C)`` uint8 -> ``(N, C, S, S)`` uint8, what stacking :meth:`__call__` of each gives
        (the datasets' batched fetch, :meth:`noisystudent.data.torch_dataset.SourceDataset.__getitems__`)."""
        return torch.from_numpy(np.ascontiguousarray(self.fit_batch(np.asarray(images)).transpose(0, 3, 1, 2)))


class DeviceNoiseHook:
    """The training loop's side of the device backend: the loaders give uint8 views, this turns each
    batch's images into the float views the CPU path's loader would have given (``views``)."""

    def __init__(self, noise: BatchNoise, mode: Optional[str]) -> None:
        self.noise, self.mode = noise, mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise.views(x, self.mode)


def device_noise_for(noise_cfg: Any, teaching: Any, spec: Any,
                     device: torch.device) -> tuple[Optional[DeviceNoiseHook], Optional[ToUint8]]:
    """``(hook, loader transform)`` when ``noise.backend`` resolves to ``device``, else ``(None, None)``.
    Views are made at ``teaching.view_size`` and paired as ``teaching.mode`` says, as on the CPU path."""
    if resolve_backend(getattr(noise_cfg, "backend", "auto"), device) != "device":
        return None, None
    size = teaching.view_size
    noise = BatchNoise(noise_cfg, size, spec.in_chans, spec.mean, spec.std)
    return DeviceNoiseHook(noise, teaching.mode), ToUint8(size, spec.in_chans, spec.mean, spec.std)
