"""Sources only the benchmarks use: images made on the fly, so a scale run needs no disk.

Here and not in the core's data package, which holds what a user's config can name.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from noisystudent.data.protocols import Batch


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
