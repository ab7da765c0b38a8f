"""Images from folders: an ImageFolder tree (labeled/test) or any folder of images (unlabeled).

Why not ``torchvision.datasets.ImageFolder``: it opens files only when indexed, so one corrupt file
stops an epoch, and it does not give ids, hidden labels or a list of skipped files. The layout is the
same (``root/<class>/.../*.png``, classes sorted), so existing ImageFolder trees work unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IMG_EXTENSIONS, FileSource, verify_files, warn_skipped


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def scan_images(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursive, symlinks followed), sorted by relative path so ids
    and indices are the same on every machine. Hidden files and folders (``.DS_Store``,
    ``.ipynb_checkpoints``) and files with non-image extensions are ignored."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if _is_image_name(f))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _require_dir(root: str | os.PathLike, what: str) -> Path:
    # absolute: a source is pickled to Ray workers, whose working directory is not the user's
    path = Path(os.path.abspath(Path(root).expanduser()))
    if not path.exists():
        raise UserError(f"{what} folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"{what} path is not a folder: {path}")
    return path


class ImageFolderSource(FileSource):
    """A labeled tree ``root/<class>/**/<image>``; class names are the sorted folder names.

    With ``verify=True`` (the default) every file is decoded once here: unreadable files are left out,
    listed in ``skipped`` and reported in one :class:`SkippedImagesWarning`, so training never meets
    them. Raises :class:`UserError` if ``root`` is missing, has no class folders, or a class folder
    holds no readable image (that class could never be learned).
    """

    def __init__(self, root: str | os.PathLike, in_chans: int = 3, verify: bool = True) -> None:
        path = _require_dir(root, "image folder")
        class_dirs = sorted((d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")),
                            key=lambda d: d.name)
        if not class_dirs:
            raise UserError(f"image folder {path} has no class folders; expected {path}/<class>/<image>")
        classes = [d.name for d in class_dirs]
        ids: list[str] = []
        paths: list[str] = []
        labels: list[int] = []
        for ci, d in enumerate(class_dirs):
            for f in scan_images(d):
                ids.append(f.relative_to(path).as_posix())
                paths.append(str(f))
                labels.append(ci)
        skipped: list[tuple[str, str]] = []
        if verify:
            reasons = verify_files(ids, paths)
            keep = [k for k, r in enumerate(reasons) if r is None]
            skipped = [(ids[k], r) for k, r in enumerate(reasons) if r is not None]
            ids = [ids[k] for k in keep]
            paths = [paths[k] for k in keep]
            labels = [labels[k] for k in keep]
        counts = [0] * len(classes)
        for label in labels:
            counts[label] += 1
        for name, count in zip(classes, counts):
            if count == 0:
                bad = sum(1 for iid, _ in skipped if iid.split("/", 1)[0] == name)
                why = f" ({bad} unreadable file(s) skipped)" if bad else ""
                raise UserError(f"class folder '{name}' in {path} has no readable image{why}")
        super().__init__(path, ids, paths, in_chans, classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.skipped = skipped
        warn_skipped(str(path), skipped)


class UnlabeledFolderSource(FileSource):
    """Every image below ``root`` (flat or nested); ids are the paths relative to ``root``.

    ``verify`` defaults to False because unlabeled sets are the large ones: a corrupt file then
    surfaces at :meth:`load` as :class:`~noisystudent.errors.ImageDecodeError`, which the labeling job
    records as a rejected row. Raises :class:`UserError` if ``root`` is missing or holds no images.
    """

    def __init__(self, root: str | os.PathLike, in_chans: int = 3, verify: bool = False) -> None:
        path = _require_dir(root, "unlabeled image folder")
        files = scan_images(path)
        if not files:
            raise UserError(f"unlabeled image folder {path} holds no images ({', '.join(IMG_EXTENSIONS)})")
        ids = [f.relative_to(path).as_posix() for f in files]
        paths = [str(f) for f in files]
        skipped: list[tuple[str, str]] = []
        if verify:
            reasons = verify_files(ids, paths)
            skipped = [(ids[k], r) for k, r in enumerate(reasons) if r is not None]
            ids = [ids[k] for k, r in enumerate(reasons) if r is None]
            paths = [paths[k] for k, r in enumerate(reasons) if r is None]
            if not ids:
                raise UserError(f"unlabeled image folder {path} holds no readable images")
        super().__init__(path, ids, paths, in_chans, None)
        self.skipped = skipped
        warn_skipped(str(path), skipped)
