"""Data specs: the one-string names of a labeled image set that commands take (``evaluate --data``).

Grammar (the first rule that matches wins)::

    SPEC  := "fashion-mnist" [":" SPLIT] [":" ROOT]   the Fashion-MNIST idx files; SPLIT is "test" (the
                                                     default, 10,000 images) or "train" (all 60,000);
                                                     ROOT the folder of the idx files (default: the
                                                     packaged dataset's)
           | "fashion-mnist:" ROOT                   the older form: a ROOT alone (it has a "/" or starts
                                                     with "."), the test split
           | PATH ".csv" | PATH ".parquet"           a manifest (path, label columns; see manifest.py)
           | PATH                                    a folder: an ImageFolder tree (one subfolder a class)
                                                     when labeled, every image under it otherwise

Any other split (``fashion-mnist:val``) is refused naming the two there are, so a typo never silently
evaluates another set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .base import ImageSource

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_SPLITS = ("train", "test")


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: ``kind`` ``fashion_mnist`` (with ``split`` and ``root``), ``manifest`` or ``folder`` (``root``)."""

    kind: str
    root: str
    split: Optional[str] = None


def parse_data_spec(spec: str, what: str = "--data") -> DataSpec:
    """Parse ``spec`` by the grammar above; :class:`UserError` naming ``what`` for an unknown split."""
    if spec == FASHION_MNIST or spec.startswith(FASHION_MNIST + ":"):
        from .fashion_mnist import DEFAULT_ROOT

        rest = spec[len(FASHION_MNIST) + 1:]
        head, _, tail = rest.partition(":")
        if head in FASHION_MNIST_SPLITS:
            return DataSpec("fashion_mnist", tail or DEFAULT_ROOT, head)
        if not head or "/" in head or head.startswith("."):
            return DataSpec("fashion_mnist", rest or DEFAULT_ROOT, "test")
        raise UserError(f"{what}: Fashion-MNIST has no split {head!r}; use fashion-mnist:train or fashion-mnist:test "
                        "(add :ROOT for the idx files elsewhere)")
    if Path(spec).suffix.lower() in (".csv", ".parquet"):
        return DataSpec("manifest", spec)
    return DataSpec("folder", spec)


def open_data_spec(spec: str | DataSpec, in_chans: int, labeled: bool = True, what: str = "--data") -> ImageSource:
    """The image source ``spec`` names (a string is parsed first); :class:`UserError` for a folder that
    does not exist, naming it."""
    s = parse_data_spec(spec, what) if isinstance(spec, str) else spec
    if s.kind == "fashion_mnist":
        from .fashion_mnist import FashionMNISTSource

        return FashionMNISTSource(s.root, s.split, labeled=labeled, in_chans=in_chans)
    if s.kind == "manifest":
        from .manifest import ManifestSource

        return ManifestSource(Path(s.root), in_chans)
    from .folder import ImageFolderSource, UnlabeledFolderSource

    p = Path(s.root)
    if not p.exists():
        raise UserError(f"data path not found: {p}")
    return ImageFolderSource(p, in_chans) if labeled else UnlabeledFolderSource(p, in_chans)
