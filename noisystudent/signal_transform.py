"""The transform of a signal modality: a ``(1, length, channels)`` uint8 array to a ``(channels, 1, length)``
float tensor, normalised per channel, with the signal's own training noise.

Written by hand, not taken from albumentations: its operations are image operations (RandAugment's
rotations, shears, colour ops) that mean nothing for a signal, and its crop/pad act on both axes. The
signal's noise maps :class:`~noisystudent.config.NoiseConfig` onto the time axis: ``crop_padding`` shifts
the signal by up to that many samples (zero-padded), ``hflip`` reverses time with p = 0.5,
``random_erasing`` zeroes (the mean after normalisation) a random 2-33 % span with that probability.
Random numbers come from torch's global generator, which DataLoader seeds per worker.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


class SignalTransform:
    """Callable on one item; ``noise`` None gives the deterministic eval transform."""

    def __init__(self, length: int, channels: int, mean: Sequence[float], std: Sequence[float], noise=None):
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} value(s) each, got {len(mean)} and {len(std)}")
        self.length, self.channels, self.noise = int(length), int(channels), noise
        self.mean = torch.tensor([float(v) for v in mean]).view(-1, 1, 1)
        self.std = torch.tensor([float(v) for v in std]).view(-1, 1, 1)
        self.in_chans, self.image_size = self.channels, [1, self.length]

    def __call__(self, item: np.ndarray) -> torch.Tensor:
        arr = np.asarray(item)
        if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[2] != self.channels:
            raise ValueError(f"expected a (1, length, {self.channels}) signal, got shape {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)
        if x.shape[-1] != self.length:  # resample to the modality's length (linear)
            x = torch.nn.functional.interpolate(x, size=self.length, mode="linear", align_corners=False)
        x = (x - self.mean) / self.std
        return x if self.noise is None else self._noise(x)

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        n = self.noise
        if n.crop_padding > 0:
            shift = int(torch.randint(-n.crop_padding, n.crop_padding + 1, ()))
            x = torch.roll(x, shift, dims=-1)
            if shift > 0:
                x[..., :shift] = 0
            elif shift < 0:
                x[..., shift:] = 0
        if n.hflip and float(torch.rand(())) < 0.5:
            x = x.flip(-1)
        if n.random_erasing > 0 and float(torch.rand(())) < n.random_erasing:
            span = max(1, int(self.length * (0.02 + 0.31 * float(torch.rand(())))))
            start = int(torch.randint(0, self.length - span + 1, ()))
            x[..., start:start + span] = 0
        return x

    def __repr__(self) -> str:
        return f"SignalTransform(channels={self.channels}, length={self.length}, noise={self.noise is not None})"


def signal_transform(image_size: Sequence[int], in_chans: int, mean, std, noise: Optional[object] = None) -> SignalTransform:
    """What :func:`noisystudent.transforms.create_transform` returns for an ``image_size`` of ``[1, length]``."""
    if len(image_size) != 2 or int(image_size[0]) != 1:
        raise ValueError(f"a signal's input size is [1, length], got {list(image_size)}")
    return SignalTransform(int(image_size[1]), in_chans, mean, std, noise)
