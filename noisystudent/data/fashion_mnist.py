"""Fashion-MNIST from its four idx ``.gz`` files, as :class:`ImageSource` objects.

Why numpy on gzip rather than ``torchvision.datasets.FashionMNIST``: torchvision's dataset class
wants its own folder layout (``<root>/FashionMNIST/raw``) and would try to download, and its idx
reader does not open ``.gz`` files; the format is a 16-byte (images) or 8-byte (labels) header followed
by raw uint8, so reading it is a few lines. The Debian package ``dataset-fashion-mnist`` installs the
files under ``/usr/share/datasets/fashion-mnist``.

A pickled :class:`FashionMNISTSource` carries only its root, split and indices; each process decodes
the arrays once (``functools.lru_cache``) the first time it loads an image, so shipping the source to
Ray actors does not copy 47 MB of pixels per task.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from ..errors import UserError
from .base import ImageSource, to_channels

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

Split = Literal["train", "test"]

_IMAGES_MAGIC = 2051  # idx3, unsigned byte
_LABELS_MAGIC = 2049  # idx1, unsigned byte


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise _missing(path) from None
    except (OSError, EOFError) as exc:
        raise UserError(f"Fashion-MNIST file {path} cannot be read ({exc}); reinstall it with "
                        "`apt-get install --reinstall dataset-fashion-mnist`") from None
    header = 4 * (ndim + 1)
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise UserError(f"Fashion-MNIST file {path} is not an idx file (bad magic number)")
    shape = tuple(int.from_bytes(data[4 * (k + 1): 4 * (k + 2)], "big") for k in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=header)
    if arr.size != int(np.prod(shape)):
        raise UserError(f"Fashion-MNIST file {path} is truncated: header says {shape}, found {arr.size} bytes")
    return arr.reshape(shape)


def _missing(path: Path) -> UserError:
    return UserError(
        f"Fashion-MNIST file not found: {path}. Install the data set with "
        f"`apt-get install dataset-fashion-mnist`, or set data.root to the folder holding the four idx .gz files"
    )


def load_fashion_mnist(root: str | os.PathLike = DEFAULT_ROOT, split: Split = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split: ``(N, 28, 28)`` uint8 and ``(N,)`` int64, read-only.

    Cached per process because every source, subset and data loader worker reads the same arrays;
    the arrays are made read-only so no caller can corrupt the cache. Missing files raise
    :class:`UserError` naming the path and the package that installs them.
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _load_cached(os.path.abspath(os.fspath(root)), split)


@functools.lru_cache(maxsize=4)
def _load_cached(root_str: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(root_str)
    img_name, lbl_name = FILES[split]
    for name in (img_name, lbl_name):
        if not (root / name).is_file():
            raise _missing(root / name)
    images = _read_idx(root / img_name, _IMAGES_MAGIC, 3)
    labels = _read_idx(root / lbl_name, _LABELS_MAGIC, 1).astype(np.int64)
    if len(images) != len(labels):
        raise UserError(f"Fashion-MNIST {split} split under {root}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise UserError(f"Fashion-MNIST labels in {root / lbl_name} exceed the 10 classes")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class FashionMNISTSource(ImageSource):
    """Images ``indices`` of one Fashion-MNIST split.

    ``labeled=True`` exposes the true labels as ``labels`` (labeled and test sets); ``labeled=False``
    makes an unlabeled source (``classes``/``labels`` None) whose true labels are kept as
    ``hidden_labels`` for measuring pseudo-label accuracy. Ids are ``"<split>-<index:05d>"`` with the
    index into the original split, so they stay the same under any subset or split seed.
    """

    def __init__(
        self,
        root: str | os.PathLike = DEFAULT_ROOT,
        split: Split = "train",
        indices: Optional[Sequence[int] | np.ndarray] = None,
        labeled: bool = True,
        in_chans: int = 1,
    ) -> None:
        super().__init__(in_chans, list(CLASSES) if labeled else None)
        self.root = os.path.abspath(os.fspath(root))  # pickled to Ray workers, whose working directory differs
        self.split = split
        _, all_labels = load_fashion_mnist(self.root, split)
        n = len(all_labels)
        idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"Fashion-MNIST {split} indices must lie in [0, {n})")
        self._indices = idx
        if labeled:
            self.labels = all_labels[idx].copy()
        else:
            self.hidden_labels = all_labels[idx].copy()

    @property
    def indices(self) -> np.ndarray:
        """Positions in the original split (what the ids encode)."""
        return self._indices

    def __len__(self) -> int:
        return len(self._indices)

    def image_id(self, i: int) -> str:
        return f"{self.split}-{int(self._indices[self._check_index(i)]):05d}"

    def load(self, i: int) -> np.ndarray:
        images, _ = load_fashion_mnist(self.root, self.split)
        img = images[self._indices[self._check_index(i)]]
        return np.array(to_channels(img, self.in_chans))  # a writable copy: the cache is read-only

    def load_all(self) -> np.ndarray:
        """Every image at once as ``(N, 28, 28, in_chans)`` uint8, for vectorised evaluation."""
        images, _ = load_fashion_mnist(self.root, self.split)
        out = images[self._indices][..., None]  # fancy indexing copies: writable
        return np.repeat(out, 3, axis=3) if self.in_chans == 3 else out

    def load_batch(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images ``indices`` (positions in this source) as ``(N, 28, 28, in_chans)`` uint8, writable."""
        images, _ = load_fashion_mnist(self.root, self.split)
        pos = np.asarray(indices, dtype=np.int64)
        out = images[self._indices[pos]][..., None]  # fancy indexing copies
        return np.repeat(out, 3, axis=3) if self.in_chans == 3 else out

    def _take(self, idx: np.ndarray) -> None:
        self._indices = self._indices[idx]

    def _where(self) -> str:
        return f"{self.root}, {self.split}"
