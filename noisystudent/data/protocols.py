"""The kinds of image source, declared: what a caller may rely on when it holds one.

- :class:`RandomAccessSource`: images by index (``len``, ``image_id(i)``, ``load(i)``), ``subset`` and
  ``positions`` (ids -> indices). Every :class:`~noisystudent.data.base.ImageSource` (idx arrays, folders,
  manifests, the selected files of a streaming source).
- :class:`PartitionedSource`: images read partition by partition where they are processed
  (``partitions``, ``partition_name(p)``, ``read_partition(p, batch_size)`` -> ``(ids, raws)`` batches,
  ``decode(image_id, raw)``). The streaming sources, and the index chunks the labeling job cuts an
  in-memory source into. One that a resumed job must recognise also has ``identity()``
  (:class:`IdentifiedSource`); one whose state arrives on the worker separately has ``attach()``
  (:class:`AttachedOnWorker`); one that can look its images' hidden labels up has ``hidden(raws)``
  (:class:`HiddenLabelReader`).

Callers test membership with ``isinstance`` (the protocols are ``runtime_checkable``: the members exist;
the signatures are what the docstrings promise), never with ``hasattr`` or a type's name.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

#: A batch of one partition: image ids and what :meth:`PartitionedSource.decode` turns into pixels.
Batch = tuple[list[str], list[Any]]


@runtime_checkable
class RandomAccessSource(Protocol):
    """Images by index with stable ids; ``classes``/``labels``/``hidden_labels`` None when absent."""

    in_chans: int
    classes: Optional[list[str]]
    labels: Optional[np.ndarray]
    hidden_labels: Optional[np.ndarray]

    def __len__(self) -> int: ...

    def image_id(self, i: int) -> str: ...

    def load(self, i: int) -> np.ndarray: ...

    def subset(self, indices: Sequence[int] | np.ndarray) -> "RandomAccessSource": ...

    def positions(self, image_ids: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class PartitionedSource(Protocol):
    """Images in a fixed list of partitions, each read (and decoded, one image at a time) by the worker
    that processes it; the driver holds only the partition list."""

    in_chans: int
    partitions: list

    @property
    def num_partitions(self) -> int: ...

    def partition_name(self, p: int) -> str: ...

    def read_partition(self, p: int, batch_size: int) -> Iterator[Batch]: ...

    def decode(self, image_id: str, raw: Any) -> np.ndarray: ...


@runtime_checkable
class IdentifiedSource(Protocol):
    """A partitioned source that names itself: a hash a resumed job must find unchanged."""

    def identity(self) -> str: ...


@runtime_checkable
class AttachedOnWorker(Protocol):
    """A reader whose heavy state reaches the worker separately and is resolved there before reading."""

    def attach(self) -> None: ...


@runtime_checkable
class HiddenLabelReader(Protocol):
    """A partition reader that can give the hidden labels (source class indices, -1 unknown) of the raws
    it read, for scoring pseudo-label accuracy on the worker."""

    def hidden(self, raws: list[Any]) -> Optional[np.ndarray]: ...
