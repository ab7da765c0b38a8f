"""Paired items: one id, one file per modality (an RGB image and its depth map, an image and its signal).

Cross-modal distillation needs the *same item* in two modalities: the teacher reads one, the student the
other, and pseudo-labels made on one are joined to the other by ``image_id``. A :class:`PairedSource` is
an :class:`~noisystudent.data.base.ImageSource` whose ``load`` reads its current modality; :meth:`view`
gives the same items (same ids, labels, order) read in another modality, so every consumer that takes an
``ImageSource`` (training, evaluation, the labeling job) takes a paired one unchanged.

Two layouts (:mod:`.paired_readers` builds them):

- a manifest (CSV/Parquet) with an ``image_id`` column, one path column per modality (named as the
  modality) and an optional ``label`` column;
- parallel folder trees, ``root/<modality>/<relative path>``, labeled trees being ImageFolder trees inside
  each modality's folder; files pair by their relative path without extension (``rgb/cat/1.jpg`` with
  ``depth/cat/1.png``: id ``cat/1``).

An item missing a modality (an empty manifest cell, a file in one tree only) or with a file that cannot be
read is left out, listed in ``skipped`` and warned about once, like an unreadable image; with
``data.missing_modality: error`` modalities that disagree in count are a config error instead.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import numpy as np

from ..errors import ImageDecodeError
from .base import ImageSource, decode_file

__all__ = ["PairedSource", "Modality", "decode_modality"]


class Modality:
    """How one modality's files decode: ``kind`` (image or signal) and ``channels``. Plain and picklable
    (sources travel to Ray workers), unlike the config dataclass it is made from."""

    def __init__(self, kind: str = "image", channels: int = 1):
        self.kind, self.channels = kind, int(channels)

    def __repr__(self) -> str:
        return f"Modality({self.kind!r}, {self.channels})"


def decode_modality(path: str, image_id: str, m: Modality) -> np.ndarray:
    """One file of modality ``m`` as an HWC uint8 array: an image ``(H, W, channels)``, a signal
    ``(1, length, channels)`` (its file is a grayscale image with one row per channel)."""
    if m.kind == "image":
        return decode_file(path, image_id, m.channels)
    rows = decode_file(path, image_id, 1)[:, :, 0]
    if rows.shape[0] != m.channels:
        raise ImageDecodeError(image_id, f"signal file {path} has {rows.shape[0]} rows, the modality {m.channels} channels")
    return np.ascontiguousarray(rows.T[None])


class PairedSource(ImageSource):
    """Items with one file per modality; reads modality ``modality`` (see :meth:`view`).

    ``paths`` maps every modality name to the items' files (index-aligned with ``ids``); ``modalities``
    maps the names to :class:`Modality`. Items are expected complete: the readers drop incomplete ones."""

    def __init__(self, root: str, ids: Sequence[str], paths: dict[str, Sequence[str]], modalities: dict[str, Modality],
                 modality: str, classes: Optional[list[str]] = None, labels: Optional[np.ndarray] = None) -> None:
        super().__init__(1, classes)
        if modality not in modalities:
            raise ValueError(f"modality {modality!r} is not one of {', '.join(modalities)}")
        self.root = str(root)
        self._ids = np.asarray(list(ids), dtype=object)
        self._paths = {name: np.asarray(list(p), dtype=object) for name, p in paths.items()}
        for name, p in self._paths.items():
            if len(p) != len(self._ids):
                raise ValueError(f"modality {name} lists {len(p)} files for {len(self._ids)} items")
        self.modalities = dict(modalities)
        self.modality = modality
        self.in_chans = self.modalities[modality].channels
        if labels is not None:
            self.labels = np.asarray(labels, dtype=np.int64)

    def view(self, modality: Optional[str]) -> "PairedSource":
        """The same items read in ``modality`` (None: this one); ``skipped`` and labels carried over."""
        if modality is None or modality == self.modality:
            return self
        if modality not in self.modalities:
            raise ValueError(f"modality {modality!r} is not one of {', '.join(self.modalities)}")
        new = copy.copy(self)
        new.skipped = list(self.skipped)
        new.modality, new.in_chans = modality, self.modalities[modality].channels
        return new

    def __len__(self) -> int:
        return len(self._ids)

    def image_id(self, i: int) -> str:
        return str(self._ids[self._check_index(i)])

    def path(self, i: int, modality: Optional[str] = None) -> str:
        return str(self._paths[modality or self.modality][self._check_index(i)])

    def load(self, i: int) -> np.ndarray:
        return self.load_modality(i, self.modality)

    def load_modality(self, i: int, modality: str) -> np.ndarray:
        """Item ``i`` in ``modality`` (any of the source's), whatever the source's current one."""
        i = self._check_index(i)
        return decode_modality(self._paths[modality][i], str(self._ids[i]), self.modalities[modality])

    def _take(self, idx: np.ndarray) -> None:
        self._ids = self._ids[idx]
        self._paths = {name: p[idx] for name, p in self._paths.items()}

    def _where(self) -> str:
        return f"{self.root}, modality {self.modality} of {', '.join(self.modalities)}"


def view_of(source: Optional[ImageSource], modality: Optional[str]) -> Optional[ImageSource]:
    """``source`` read in ``modality`` when it is paired and a modality is named; else ``source`` itself."""
    if source is None or modality is None or not hasattr(source, "view"):  # PairedSource, PairedStreamSource
        return source
    return source.view(modality)
