"""Image transforms: the clean eval transform and the student's input noise.

The teacher labels clean images (``noise=None``: resize and normalise, nothing random) and the
student trains on noised ones (resize, pad-and-crop, flip, RandAugment, normalise, random erasing).
Both are albumentations pipelines over the HWC uint8 arrays that every
:class:`~noisystudent.data.base.ImageSource` returns, wrapped in :class:`ImageTransform`, a small
picklable callable that yields a float32 CHW tensor, so the same object works in the main process,
in DataLoader workers and in Ray actors.

Randomness. albumentations draws from the Compose's own generators, not from numpy's or torch's
global state, so ``seed_everything`` alone would not make augmentation reproducible, and forked
DataLoader workers would all inherit the *same* generator state and apply identical augmentations.
:class:`ImageTransform` therefore

- seeds its generators at construction from ``seed``, or, when ``seed`` is None, from one draw of
  torch's global generator (plus the distributed rank when torch.distributed is up), so a run seeded
  with ``torch.manual_seed`` augments the same way every time and DDP ranks differ;
- re-seeds itself inside every DataLoader worker from ``(own seed, worker seed)`` the first time it is
  called there; torch gives each worker of each epoch a different seed derived from its own global
  generator, so workers differ from each other and between epochs, reproducibly.

All children of the Compose share one generator (``set_random_state``) instead of each getting a copy
of the same seed (``set_random_seed``), which would make, say, the flip and the erasing coin flips
identical.
"""

from __future__ import annotations

import os
import random
from typing import Optional, Sequence

# albumentations asks PyPI for a newer version at import (a network call in every fresh Ray worker);
# clusters are often offline, so opt out unless the user decided otherwise.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch

from .config import NoiseConfig
from .feed import check_stats
from .randaugment import MAX_MAGNITUDE, RANDAUGMENT_OPS, parse_randaugment, rand_augment

__all__ = [
    "ImageTransform",
    "MAX_MAGNITUDE",
    "RANDAUGMENT_OPS",
    "create_transform",
    "denormalize",
    "parse_randaugment",
    "rand_augment",
]


def _default_seed() -> int:
    """One draw from torch's global generator, mixed with the distributed rank when there is one."""
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        seed = int(np.random.SeedSequence([seed, torch.distributed.get_rank()]).generate_state(1, np.uint64)[0])
    return seed


class ImageTransform:
    """HWC uint8 numpy image -> float32 CHW tensor ``(in_chans, image_size, image_size)``.

    Wraps an ``A.Compose`` (attribute ``compose``) and owns its random state (see the module
    docstring). Picklable: pickling keeps the generator state, so an unpickled copy continues the
    same stream (reproducible), except inside DataLoader workers, where each copy re-seeds itself.
    A 2-D ``(H, W)`` array is taken as one channel.
    """

    def __init__(self, compose: A.Compose, in_chans: int, image_size: int, seed: Optional[int] = None) -> None:
        self.compose = compose
        self.in_chans = in_chans
        self.image_size = image_size
        self.seed = _default_seed() if seed is None else int(seed)
        self._worker_key: Optional[tuple[int, int]] = None
        self._reseed([self.seed])

    def _reseed(self, entropy: list[int]) -> None:
        seq = np.random.SeedSequence(entropy)
        py_seed = int.from_bytes(seq.generate_state(4, np.uint32).tobytes(), "little")
        self.compose.set_random_state(np.random.default_rng(seq), random.Random(py_seed))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            key = (os.getpid(), int(info.seed))
            if key != self._worker_key:
                self._worker_key = key
                self._reseed([self.seed, int(info.seed) % 2**63])
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] != self.in_chans or image.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W, {self.in_chans}) uint8 image, got shape {image.shape} dtype {image.dtype}"
            )
        out = self.compose(image=np.ascontiguousarray(image))["image"]
        if out.ndim == 2:  # guard: a 1-channel image must stay (1, H, W) even if a step returned HW
            out = out[None]
        return out

    def __repr__(self) -> str:
        return f"ImageTransform(in_chans={self.in_chans}, image_size={self.image_size}, compose={self.compose!r})"


def create_transform(
    image_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    noise: Optional[NoiseConfig] = None,
    *,
    seed: Optional[int] = None,
) -> ImageTransform:
    """The eval transform (``noise=None``) or the student's training transform (with ``noise``).

    Eval: resize to ``image_size`` x ``image_size`` (area interpolation when shrinking; aspect ratio is
    not kept, so the whole image is seen), normalise. Deterministic.

    Train: the same resize, then zero-pad by ``noise.crop_padding`` and randomly crop back (skipped when
    0), horizontal flip with p=0.5 if ``noise.hflip``, RandAugment(``randaugment_n``,
    ``randaugment_m``), normalise, random erasing with probability ``noise.random_erasing`` (area
    2-33 %, filled with 0 after normalisation, i.e. the dataset mean). With n=0, no flip, no crop and
    no erasing it returns exactly what the eval transform returns.

    ``seed`` fixes the augmentation stream; None derives it from torch's global generator.
    """
    if isinstance(image_size, (list, tuple)):  # a signal modality's [1, length] (docs/crossmodal.md)
        from .signal_transform import signal_transform

        return signal_transform(image_size, in_chans, mean, std, noise)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    mean_t, std_t = check_stats(in_chans, mean, std)
    ops: list = [
        A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR, area_for_downscale="image", p=1.0)
    ]
    if noise is not None:
        if noise.crop_padding > 0:
            padded = image_size + 2 * noise.crop_padding
            ops += [
                A.PadIfNeeded(padded, padded, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
                A.RandomCrop(image_size, image_size, p=1.0),
            ]
        if noise.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if noise.randaugment_n > 0:
            ops.append(rand_augment(noise.randaugment_n, noise.randaugment_m, in_chans))
    ops.append(A.Normalize(mean=mean_t, std=std_t, max_pixel_value=255.0, p=1.0))
    if noise is not None and noise.random_erasing > 0:
        ops.append(A.Erasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), fill=0, p=float(noise.random_erasing)))
    ops.append(A.ToTensorV2(p=1.0))
    if noise is None and seed is None:
        seed = 0  # nothing random: do not consume a draw from torch's global generator
    return ImageTransform(A.Compose(ops, p=1.0), in_chans, image_size, seed=seed)


def denormalize(tensor: torch.Tensor | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo ``Normalize``: a CHW (or NCHW) float image -> HWC (or NHWC) uint8, for plotting sample grids."""
    arr = tensor.detach().cpu().float().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor, np.float32)
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected a CHW or NCHW image, got shape {arr.shape}")
    chans = arr.shape[-3]
    mean_a = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std_a = np.asarray(std, np.float32).reshape(-1, 1, 1)
    if mean_a.shape[0] != chans or std_a.shape[0] != chans:
        raise ValueError(f"mean/std need {chans} value(s) for a {chans}-channel image")
    pixels = (arr * std_a + mean_a) * 255.0
    out = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return np.moveaxis(out, -3, -1)
