"""The one face every image source shows: random access to HWC uint8 images by index.

Why a small class of our own instead of a torch ``Dataset``: the same source is read by the Ray Data
labeling job (no torch transforms, images shipped to actors by pickling), by training (through
:class:`~noisystudent.data.torch_dataset.SourceDataset`) and by evaluation. Each needs stable image ids
(the pseudo-label Parquet key), labels, hidden labels and a record of files that could not be read, and
none of them should care whether the pixels come from an idx array, an ImageFolder tree or a manifest.

Concrete sources keep their per-image data in numpy arrays so that :meth:`ImageSource.subset` is a
cheap fancy-index and a pickled source stays small (paths and indices, never decoded pixels).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageDecodeError

# Files with these extensions are images to a folder or manifest source (compared case-insensitively).
IMG_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_EXIF_ORIENTATION = 0x0112  # the EXIF tag cameras use to say "stored rotated"

# Pillow refuses images above ~179 Mpx as possible decompression bombs; that error is one bad file,
# not a crash, and is reported as an ImageDecodeError like any other unreadable image.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, MemoryError)


class ImageSource:
    """Random-access images with stable ids, optional labels and a record of unreadable files.

    Attributes every source sets:

    - ``classes``: class names, or ``None`` for an unlabeled source.
    - ``labels``: int64 class index per image for labeled/test sources, else ``None``.
    - ``hidden_labels``: int64 per image for unlabeled sources whose true labels are known but must not
      be used for training (Fashion-MNIST's unlabeled split); ``-1`` where unknown; else ``None``.
      Only evaluation of pseudo-label quality may read them.
    - ``in_chans``: 1 (grayscale) or 3 (RGB); :meth:`load` always returns this many channels.
    - ``skipped``: ``(image_id, reason)`` for files found unreadable while the source was built.

    Subclasses implement ``__len__``, ``image_id``, ``load`` and ``_take`` (keep only the given
    positions of their per-image arrays); :meth:`subset` does the rest.
    """

    classes: Optional[list[str]] = None
    labels: Optional[np.ndarray] = None
    hidden_labels: Optional[np.ndarray] = None
    in_chans: int = 3
    skipped: list[tuple[str, str]]

    def __init__(self, in_chans: int, classes: Optional[list[str]] = None) -> None:
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.in_chans = in_chans
        self.classes = list(classes) if classes is not None else None
        self.labels = None
        self.hidden_labels = None
        self.skipped = []

    # -- the interface ------------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def image_id(self, i: int) -> str:
        """The stable key of image ``i``: its path relative to the source's root (forward slashes), or
        ``<split>-<index>`` for array sources. Unique within a source and unchanged by :meth:`subset`."""
        raise NotImplementedError

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as an ``(H, W, in_chans)`` uint8 array. Raises :class:`ImageDecodeError` if the
        file is missing, empty, corrupt or not an image."""
        raise NotImplementedError

    def _take(self, idx: np.ndarray) -> None:
        """Keep only positions ``idx`` of this (already copied) source's per-image arrays."""
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------------------
    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageSource":
        """A new source holding images ``indices`` (in that order) with their ids and labels.

        The original is left untouched; ``skipped`` is carried over because it describes how the
        source was built, not which images were kept.
        """
        n = len(self)
        raw = np.asarray(indices)
        if raw.dtype == bool:  # a mask: an int cast would silently turn it into indices 0 and 1
            if raw.shape != (n,):
                raise IndexError(f"a boolean mask must have {n} entries, got shape {raw.shape}")
            raw = np.flatnonzero(raw)
        idx = raw.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"subset index out of range for a source of {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        new = copy.copy(self)
        new.skipped = list(self.skipped)
        new._id_index = None
        if self.labels is not None:
            new.labels = self.labels[idx]
        if self.hidden_labels is not None:
            new.hidden_labels = self.hidden_labels[idx]
        new._take(idx)
        return new

    def load_batch(self, indices: Sequence[int]) -> Optional[np.ndarray]:
        """Images ``indices`` at once as ``(N, H, W, in_chans)`` uint8, or None when this source has no
        faster way than :meth:`load` one by one (files). Sources that hold their pixels in one array
        override it: a batch is then one fancy index instead of N Python calls (:mod:`noisystudent.feed`)."""
        return None

    def image_ids(self) -> list[str]:
        """All ids in index order (the labeling job writes them as the Parquet key)."""
        return [self.image_id(i) for i in range(len(self))]

    def positions(self, image_ids: Sequence[str]) -> np.ndarray:
        """Index of each id in this source (int64, -1 where absent), through one cached hash index.

        The selection and the report look rows of a Parquet table up by ``image_id``; building a dict
        per caller scanned every id each time."""
        import pandas as pd

        index = getattr(self, "_id_index", None)
        if index is None:
            index = pd.Index(self.image_ids())
            self._id_index = index
        return index.get_indexer(list(image_ids)).astype(np.int64)

    def describe(self) -> str:
        """One line for logs and the CLI: kind, where from, size, classes and skipped files."""
        parts = [f"{len(self)} images"]
        if self.classes is not None:
            parts.append(f"{len(self.classes)} classes")
        if self.hidden_labels is not None:
            parts.append("hidden labels")
        parts.append(f"in_chans={self.in_chans}")
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable files skipped")
        return f"{type(self).__name__}({self._where()}): " + ", ".join(parts)

    def _where(self) -> str:
        return ""

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for a source of {n} images")
        return int(i) + n if i < 0 else int(i)


# --------------------------------------------------------------------------------------------------
# decoding files


def to_channels(arr: np.ndarray, in_chans: int) -> np.ndarray:
    """Make an HW or HWC uint8 array exactly ``in_chans`` channels (gray <-> RGB) as HWC."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    c = arr.shape[2]
    if c == in_chans:
        return arr
    if in_chans == 3 and c == 1:
        return np.repeat(arr, 3, axis=2)
    if in_chans == 1 and c == 3:
        # ITU-R 601-2 luma, the same weights PIL's convert("L") uses.
        gray = arr[:, :, 0] * 0.299 + arr[:, :, 1] * 0.587 + arr[:, :, 2] * 0.114
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[:, :, None]
    raise ValueError(f"cannot turn {c} channels into {in_chans}")


def to_channels_batch(arr: np.ndarray, in_chans: int) -> np.ndarray:
    """:func:`to_channels` for a ``(N, H, W[, C])`` batch."""
    if arr.ndim == 3:
        arr = arr[..., None]
    c = arr.shape[3]
    if c == in_chans:
        return arr
    if in_chans == 3 and c == 1:
        return np.repeat(arr, 3, axis=3)
    if in_chans == 1 and c == 3:
        gray = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]
    raise ValueError(f"cannot turn {c} channels into {in_chans}")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit int and float grayscale images to 8-bit L, scaling instead of clipping.

    Pillow's ``convert("L")`` clips 16-bit values at 255, which turns most 16-bit scans white.
    """
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or arr.dtype == np.uint16:
        out = (arr.astype(np.uint32) >> 8).astype(np.uint8)
    elif img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64))
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        out = np.clip(arr * scale, 0, 255).astype(np.uint8)
    else:  # "I": 32-bit ints; 16-bit PNGs open in this mode in some Pillow versions
        hi = int(arr.max()) if arr.size else 0
        if hi > 255:
            out = (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        else:
            out = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def pil_to_array(img: Image.Image, in_chans: int) -> np.ndarray:
    """Any PIL image as ``(H, W, in_chans)`` uint8: grayscale kept gray, everything else RGB.

    Alpha is dropped (not composited) because the classifiers never saw alpha; palette images with a
    transparency entry go through RGBA so Pillow does not warn.
    """
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        img = _to_8bit(img)
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "LA", "La"):
        img = img.convert("L")
    if img.mode != "L":
        img = img.convert("RGB")
    target = "L" if in_chans == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    # np.array copies: np.asarray over a PIL image is read-only, which torch and in-place
    # augmentations complain about.
    arr = np.array(img, dtype=np.uint8)
    return to_channels(arr, in_chans)


def decode_file(path: str | os.PathLike, image_id: str, in_chans: int) -> np.ndarray:
    """Read one image file into ``(H, W, in_chans)`` uint8, honouring EXIF orientation (camera photos
    are stored sideways otherwise). Every failure becomes :class:`ImageDecodeError` naming ``image_id``."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            return pil_to_array(img, in_chans)
    except FileNotFoundError:
        raise ImageDecodeError(image_id, "file not found") from None
    except Image.UnidentifiedImageError:
        size = _size(path)
        reason = "empty file" if size == 0 else "not an image Pillow can identify"
        raise ImageDecodeError(image_id, reason) from None
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(image_id, f"{type(exc).__name__}: {exc}") from None


def check_file(path: str | os.PathLike, image_id: str) -> Optional[str]:
    """Why ``path`` cannot be read as an image, or None if it can.

    Decodes the whole file (JPEGs in draft mode, at 1/8 scale, which still reads every byte of the
    entropy-coded data) so truncated files are caught here rather than in the middle of training.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
            if img.width == 0 or img.height == 0:
                return "image has zero size"
        return None
    except FileNotFoundError:
        return "file not found"
    except Image.UnidentifiedImageError:
        return "empty file" if _size(path) == 0 else "not an image Pillow can identify"
    except _DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"


def _size(path: str | os.PathLike) -> int:
    try:
        return Path(path).stat().st_size
    except (OSError, TypeError):  # TypeError: an in-memory file (decode_bytes); empty ones never get here
        return -1


class FileSource(ImageSource):
    """Images stored as files under ``root``, addressed by root-relative ids.

    ``ids`` are the stable keys (forward slashes); ``paths`` the files to open (absolute, or relative to
    the current directory). Both are numpy object arrays so :meth:`subset` is a fancy-index.
    """

    def __init__(self, root: str | os.PathLike, ids: Sequence[str], paths: Sequence[str], in_chans: int,
                 classes: Optional[list[str]] = None) -> None:
        super().__init__(in_chans, classes)
        self.root = str(root)
        self._ids = np.asarray(list(ids), dtype=object)
        self._paths = np.asarray(list(paths), dtype=object)
        if len(self._ids) != len(self._paths):
            raise ValueError("ids and paths differ in length")

    def __len__(self) -> int:
        return len(self._ids)

    def image_id(self, i: int) -> str:
        return str(self._ids[self._check_index(i)])

    def path(self, i: int) -> str:
        """The file image ``i`` is read from."""
        return str(self._paths[self._check_index(i)])

    def load(self, i: int) -> np.ndarray:
        i = self._check_index(i)
        return decode_file(self._paths[i], str(self._ids[i]), self.in_chans)

    def _take(self, idx: np.ndarray) -> None:
        self._ids = self._ids[idx]
        self._paths = self._paths[idx]

    def _where(self) -> str:
        return self.root


def verify_files(ids: Sequence[str], paths: Sequence[str], max_workers: Optional[int] = None) -> list[Optional[str]]:
    """:func:`check_file` for many files on a thread pool (Pillow releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    if not paths:
        return []
    workers = max_workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 64:
        return [check_file(p, i) for i, p in zip(ids, paths)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check_file, paths, ids, chunksize=64))


def warn_skipped(where: str, skipped: list[tuple[str, str]], show: int = 5) -> None:
    """One warning per build, with the count and the first few files, so a bad folder is noticed but a
    thousand bad files do not flood the log."""
    import warnings

    if not skipped:
        return
    first = "; ".join(f"{iid} ({reason})" for iid, reason in skipped[:show])
    more = f"; and {len(skipped) - show} more" if len(skipped) > show else ""
    warnings.warn(
        f"{where}: skipped {len(skipped)} unreadable image file(s): {first}{more}",
        SkippedImagesWarning,
        stacklevel=3,
    )


class SkippedImagesWarning(UserWarning):
    """Some image files could not be read while a source was built; they are left out."""
