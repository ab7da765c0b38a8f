"""Images held in a numpy array as an :class:`ImageSource`: made in memory, not read from files.

For images a program makes itself (the anomaly benchmark's synthetic defects, tests): the same face as
every other source, so the Ray Data scoring job, training and evaluation take them unchanged. A pickled
source carries its pixels, which suits thousands of small images, not millions of large ones (use a
folder or a manifest for those).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .base import ImageSource, to_channels, to_channels_batch


class ArraySource(ImageSource):
    """``images`` (``(N, H, W)`` or ``(N, H, W, C)`` uint8) with ids ``ids`` (default ``"<prefix>-<index:06d>"``).

    ``labels`` (with ``classes``) makes a labeled source; ids stay the same under :meth:`subset`."""

    def __init__(self, images: np.ndarray, ids: Optional[Sequence[str]] = None, labels: Optional[np.ndarray] = None,
                 classes: Optional[list[str]] = None, in_chans: Optional[int] = None, prefix: str = "img") -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be (N, H, W[, C]) uint8, got {images.dtype} {images.shape}")
        chans = 1 if images.ndim == 3 else images.shape[3]
        super().__init__(in_chans or chans, classes)
        self.images = images
        self._ids = np.asarray(list(ids) if ids is not None else [f"{prefix}-{i:06d}" for i in range(len(images))],
                               dtype=object)
        if len(self._ids) != len(images):
            raise ValueError(f"{len(self._ids)} ids for {len(images)} images")
        self._idx = np.arange(len(images), dtype=np.int64)
        if labels is not None:
            self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._idx)

    def image_id(self, i: int) -> str:
        return str(self._ids[self._idx[self._check_index(i)]])

    def load(self, i: int) -> np.ndarray:
        return np.array(to_channels(self.images[self._idx[self._check_index(i)]], self.in_chans))

    def load_batch(self, indices: Sequence[int]) -> np.ndarray:
        n = len(self)
        pos = np.asarray(indices, dtype=np.int64)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"image index out of range for a source of {n} images")
        return np.ascontiguousarray(to_channels_batch(self.images[self._idx[pos]], self.in_chans))

    def _take(self, idx: np.ndarray) -> None:
        self._idx = self._idx[idx]

    def _where(self) -> str:
        return f"{len(self.images)} images in memory"
