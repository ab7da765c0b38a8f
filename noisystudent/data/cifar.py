"""CIFAR-10 and CIFAR-100 from the standard python-pickle batches, as :class:`ImageSource` objects.

Read through torchvision's :class:`~torchvision.datasets.CIFAR10` / :class:`~torchvision.datasets.CIFAR100`
with ``download=False``: nothing is ever fetched. The files are the ones of the "python version" archives
(``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) extracted under ``data.root``::

    <root>/cifar-10-batches-py/{data_batch_1 ... data_batch_5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

(``data.root`` may also name the extracted folder itself.)

Two departures from torchvision's defaults, and why:

- The md5 sums torchvision keeps are download checks; files a user repacked (or a test wrote) fail them
  while being perfectly readable, so only the presence of every file is required here.
- The batches are Python pickles, and unpickling a file can run code. Before torchvision reads a file it
  is parsed once by a restricted unpickler that allows only what a CIFAR batch holds (dicts, lists, bytes,
  numpy arrays); anything else is a :class:`UserError` naming the file. The same promise the checkpoint
  loader keeps (``weights_only``).

Like Fashion-MNIST, a pickled :class:`CifarSource` carries only its root, kind, split and indices; each
process decodes the arrays once (``functools.lru_cache``).
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from ..errors import UserError
from .base import ImageSource, to_channels

Kind = Literal["cifar10", "cifar100"]
Split = Literal["train", "test"]

# what each kind's archive extracts to, and the files in it (train, test, meta)
LAYOUT: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta"),
}
ARCHIVE = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}

# the only globals a CIFAR batch pickle refers to (numpy arrays, and bytes as Python 3 writes them at protocol 2)
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _vet(path: Path) -> None:
    """Parse ``path`` with :class:`_BatchUnpickler`; :class:`UserError` if it is not a plain CIFAR pickle."""
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise UserError(f"CIFAR file {path} is not a CIFAR python-pickle batch ({exc})") from None
    if not isinstance(entry, dict):
        raise UserError(f"CIFAR file {path} is not a CIFAR python-pickle batch (holds a {type(entry).__name__})")


def folder(root: str | os.PathLike, kind: Kind) -> Path:
    """The folder holding ``kind``'s files: ``root/<archive folder>``, or ``root`` itself when it is that folder."""
    root = Path(root)
    sub, _, _, _ = LAYOUT[kind]
    return root if root.name == sub and not (root / sub).is_dir() else root / sub


def _missing(root: Path, kind: Kind, name: str) -> UserError:
    sub, train, test, meta = LAYOUT[kind]
    files = ", ".join((*train, *test, meta))
    return UserError(f"{kind} file not found: {folder(root, kind) / name}; data.root must hold {sub}/ with "
                     f"{files} (extract {ARCHIVE[kind]}, the python version, into data.root; nothing is downloaded)")


def load_cifar(root: str | os.PathLike, kind: Kind, split: Split = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images, labels, classes)`` of one split: ``(N, 32, 32, 3)`` uint8, ``(N,)`` int64 (read-only) and the
    class names of the meta file. Cached per process; missing or unsafe files raise :class:`UserError`."""
    if kind not in LAYOUT:
        raise ValueError(f"kind must be cifar10 or cifar100, got {kind!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _load_cached(os.path.abspath(os.fspath(root)), kind, split)


@functools.lru_cache(maxsize=4)
def _load_cached(root_str: str, kind: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision.datasets import CIFAR10, CIFAR100

    where = folder(root_str, kind)
    sub, train, test, meta = LAYOUT[kind]
    for name in (*(train if split == "train" else test), meta):
        if not (where / name).is_file():
            raise _missing(Path(root_str), kind, name)
        _vet(where / name)
    base = CIFAR10 if kind == "cifar10" else CIFAR100
    # md5 None: torchvision then checks that each file exists, not that it is the downloaded archive's
    unchecked = type(f"Unchecked{base.__name__}", (base,), {
        "train_list": [[name, None] for name, _ in base.train_list],
        "test_list": [[name, None] for name, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })
    try:
        ds = unchecked(str(where.parent), train=split == "train", download=False)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"{kind} files under {where} cannot be read as CIFAR batches ({exc!r})") from None
    images = np.ascontiguousarray(ds.data, dtype=np.uint8)
    labels = np.asarray(ds.targets, dtype=np.int64)
    classes = [str(c) for c in ds.classes]
    if len(images) != len(labels) or (labels.size and (labels.min() < 0 or labels.max() >= len(classes))):
        raise UserError(f"{kind} {split} split under {where}: {len(images)} images, {len(labels)} labels "
                        f"and {len(classes)} classes do not agree")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels, classes


class CifarSource(ImageSource):
    """Images ``indices`` of one CIFAR split; ids ``"<split>-<index:05d>"`` (index into the original split).

    ``labeled=False`` makes an unlabeled source whose true labels are kept as ``hidden_labels``.
    ``in_chans=1`` turns the RGB images gray (ITU-R 601-2 luma), as every other source does."""

    def __init__(self, root: str | os.PathLike, kind: Kind, split: Split = "train",
                 indices: Optional[Sequence[int] | np.ndarray] = None, labeled: bool = True, in_chans: int = 3) -> None:
        self.root = os.path.abspath(os.fspath(root))  # pickled to Ray workers, whose working directory differs
        self.kind = kind
        self.split = split
        _, all_labels, classes = load_cifar(self.root, kind, split)
        super().__init__(in_chans, classes if labeled else None)
        n = len(all_labels)
        idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"{kind} {split} indices must lie in [0, {n})")
        self._indices = idx
        if labeled:
            self.labels = all_labels[idx].copy()
        else:
            self.hidden_labels = all_labels[idx].copy()

    def __len__(self) -> int:
        return len(self._indices)

    def image_id(self, i: int) -> str:
        return f"{self.split}-{int(self._indices[self._check_index(i)]):05d}"

    def load(self, i: int) -> np.ndarray:
        images, _, _ = load_cifar(self.root, self.kind, self.split)
        return np.array(to_channels(images[self._indices[self._check_index(i)]], self.in_chans))

    def load_all(self) -> np.ndarray:
        """Every image at once as ``(N, 32, 32, in_chans)`` uint8, for vectorised evaluation."""
        images, _, _ = load_cifar(self.root, self.kind, self.split)
        out = images[self._indices]
        if self.in_chans == 1:
            return np.stack([to_channels(img, 1) for img in out]) if len(out) else out[..., :1]
        return out

    def _take(self, idx: np.ndarray) -> None:
        self._indices = self._indices[idx]

    def _where(self) -> str:
        return f"{self.root}, {self.kind} {self.split}"
