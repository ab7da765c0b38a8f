"""Data only the benchmarks use: images made on the fly (a scale run needs no disk) or held in memory.

Here and not in the core's data package, which holds what a user's config can name.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from noisystudent.data.protocols import Batch

#: the ten classes of the synthetic images of the GPU check and bench.feed
CLASSES = [f"class{i}" for i in range(10)]


def images_for(n: int, size: int, ch: int, seed: int = 0) -> np.ndarray:
    """``n`` random ``(size, size, ch)`` uint8 images: pixel content does not change the speed of any
    transform or model the throughput benchmarks time."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, ch), dtype=np.uint8)


def array_source(images: np.ndarray, labels: Optional[np.ndarray] = None):
    """``images`` (ids ``syn-<index>``) as the project's in-memory source, labeled with :data:`CLASSES`
    when ``labels`` are given."""
    from noisystudent.data.array import ArraySource

    if labels is None:
        return ArraySource(images, prefix="syn")
    return ArraySource(images, labels=labels, classes=list(CLASSES), prefix="syn")


def spec_of(name: str, size: int, ch: int, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> Any:
    """The :class:`~noisystudent.checkpoint.ModelSpec` of model ``name`` on these images (mean 0.5, std 0.25)."""
    from noisystudent.checkpoint import ModelSpec

    return ModelSpec(name=name, num_classes=len(CLASSES), in_chans=ch, image_size=size, mean=[0.5] * ch,
                     std=[0.25] * ch, classes=list(CLASSES), drop_rate=drop_rate, drop_path_rate=drop_path_rate)


class SyntheticStream:
    """``n`` deterministic pseudo-random images made on the fly in the worker (no disk): the scale bench's source.

    Partition ``p`` holds images ``p * partition_size ..``; image ``i`` is a fixed function of ``(seed, i)``
    with a bright band whose position is its "class", so a teacher can tell images apart."""

    format = "synthetic"
    classes = None
    labels = None
    hidden_labels = None

    def __init__(self, n: int, partition_size: int, image_size: int = 16, in_chans: int = 1, seed: int = 0,
                 bands: int = 10) -> None:
        self.n, self.partition_size, self.image_size = int(n), int(partition_size), int(image_size)
        self.in_chans, self.seed, self.bands = in_chans, seed, bands
        self.skipped: list[tuple[str, str]] = []
        self.partitions = list(range(-(-self.n // self.partition_size)))
        self.root = ""

    @property
    def num_partitions(self) -> int:
        return len(self.partitions)

    def identity(self) -> str:
        return f"synthetic-{self.n}-{self.partition_size}-{self.image_size}-{self.in_chans}-{self.seed}"

    def partition_name(self, p: int) -> str:
        return f"synthetic-{p}"

    def describe(self) -> str:
        return f"SyntheticStream({self.n} images, {self.num_partitions} partitions)"

    def read_partition(self, p: int, batch_size: int) -> Iterator[Batch]:
        start, stop = p * self.partition_size, min(self.n, (p + 1) * self.partition_size)
        for s in range(start, stop, batch_size):
            idx = list(range(s, min(stop, s + batch_size)))
            yield [f"syn-{i:09d}" for i in idx], idx

    def decode(self, image_id: str, raw: int) -> np.ndarray:
        size = self.image_size
        rng = np.random.default_rng([self.seed, int(raw)])
        img = rng.integers(0, 60, size=(size, size, self.in_chans), dtype=np.uint8)
        band = int(raw) % self.bands
        w = max(1, size // self.bands)
        img[:, band * w:(band + 1) * w] += 180
        return img
