"""An in-memory source cut into fixed chunks of indices: the partitions the labeling job (and anomaly
scoring) give a source that lists every image up front (Fashion-MNIST, a folder or manifest).

Here and not in the core's data package because it is Ray-aware: the source goes to the workers through
Ray's object store once (``source_ref``, see :func:`pseudo_labels.sharded.reader_for`), not pickled into
every actor's constructor, and a worker resolves it in :meth:`IndexChunks.attach`.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from noisystudent.data.protocols import Batch


def _resolve(ref: Any) -> Any:
    """The object behind a Ray object reference, or ``ref`` itself when it is the source."""
    try:
        import ray
    except ImportError:  # pragma: no cover - Ray is a dependency; a source passed as itself needs no Ray
        return ref
    return ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref


class IndexChunks:
    """Partitions of ``chunk_size`` consecutive indices of ``source`` (a random-access source): a
    :class:`~noisystudent.data.protocols.PartitionedSource` whose raws are indices."""

    format = "index_chunks"

    def __init__(self, source: Any, chunk_size: int, source_ref: Any = None) -> None:
        self.n, self.chunk_size = len(source), int(chunk_size)
        self.in_chans = source.in_chans
        self.partitions = list(range(-(-self.n // self.chunk_size)))
        self._source_ref = source_ref if source_ref is not None else source
        self._source = None

    @property
    def num_partitions(self) -> int:
        return len(self.partitions)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    def attach(self) -> None:
        if self._source is None:
            self._source = _resolve(self._source_ref)

    def partition_name(self, p: int) -> str:
        return f"indices {p * self.chunk_size}..{min(self.n, (p + 1) * self.chunk_size) - 1}"

    def read_partition(self, p: int, batch_size: int) -> Iterator[Batch]:
        self.attach()
        start, stop = p * self.chunk_size, min(self.n, (p + 1) * self.chunk_size)
        for s in range(start, stop, batch_size):
            idx = list(range(s, min(stop, s + batch_size)))
            yield [self._source.image_id(i) for i in idx], idx

    def decode(self, image_id: str, raw: int) -> np.ndarray:
        self.attach()
        return self._source.load(int(raw))

    def decode_batch(self, raws: list[int]) -> Optional[np.ndarray]:
        """The whole batch at once when the source holds its pixels in an array, else None (decode one by one)."""
        self.attach()
        return self._source.load_batch(raws) if hasattr(self._source, "load_batch") else None

    def hidden(self, raws: list[int]) -> Optional[np.ndarray]:
        """The source's hidden labels of these indices (source class indices), or None without."""
        self.attach()
        h = getattr(self._source, "hidden_labels", None)
        return None if h is None else np.asarray(h, dtype=np.int64)[np.asarray(raws, dtype=np.int64)]
