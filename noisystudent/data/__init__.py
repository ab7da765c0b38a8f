"""Data sources: labeled, unlabeled and test images behind one :class:`ImageSource` interface.

:func:`create_data` turns a :class:`~noisystudent.config.DataConfig` into a :class:`DataBundle`. Every
random choice (the Fashion-MNIST labeled split, ``unlabeled_limit`` and ``test_limit`` subsets) is drawn
from ``split_seed`` with its own stream per purpose, so changing one limit never changes another set,
and every machine of a cluster builds the same split.

Test labels are always expressed in the training class indices: a test set whose classes are a subset
of the training classes is remapped; one with a class the model never saw is a :class:`UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..errors import ConfigError, UserError
from .base import IMG_EXTENSIONS, FileSource, ImageSource, SkippedImagesWarning
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import FashionMNISTSource, load_fashion_mnist
from .folder import ImageFolderSource, UnlabeledFolderSource
from .manifest import ManifestSource

if TYPE_CHECKING:
    from ..config import DataConfig

__all__ = [
    "IMG_EXTENSIONS",
    "DataBundle",
    "FASHION_MNIST_CLASSES",
    "FashionMNISTSource",
    "FileSource",
    "ImageFolderSource",
    "ImageSource",
    "ManifestSource",
    "SkippedImagesWarning",
    "SourceDataset",
    "UnlabeledFolderSource",
    "collate_skip_none",
    "create_data",
    "load_fashion_mnist",
]

# Independent random streams drawn from split_seed, one per purpose.
_STREAM_LABELED, _STREAM_UNLABELED, _STREAM_TEST = 0, 1, 2


@dataclass
class DataBundle:
    """The sources one experiment uses. ``classes`` are the training classes; ``labeled.labels`` and
    ``test.labels`` index into them. ``unlabeled`` is None when there is nothing left to pseudo-label."""

    labeled: ImageSource
    unlabeled: Optional[ImageSource]
    test: Optional[ImageSource]
    classes: list[str]

    def describe(self) -> str:
        lines = [f"labeled:   {self.labeled.describe()}"]
        lines.append(f"unlabeled: {self.unlabeled.describe() if self.unlabeled is not None else 'none'}")
        lines.append(f"test:      {self.test.describe() if self.test is not None else 'none'}")
        return "\n".join(lines)


def _rng(seed: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise ConfigError("data.split_seed", f"must be >= 0, got {seed}")
    return np.random.default_rng([seed, stream])


def _limit(source: Optional[ImageSource], limit: Optional[int], seed: int, stream: int) -> Optional[ImageSource]:
    """A seeded random subset of ``limit`` images (kept in index order), or the source unchanged."""
    if source is None or limit is None or limit >= len(source):
        return source
    keep = np.sort(_rng(seed, stream).choice(len(source), size=limit, replace=False))
    return source.subset(keep)


def _fashion_mnist(cfg: "DataConfig") -> DataBundle:
    per_class = cfg.labels_per_class
    if per_class is None:
        raise ConfigError("data.labels_per_class", "is required for fashion_mnist (use 6000 for all labels)")
    _, train_labels = load_fashion_mnist(cfg.root, "train")
    rng = _rng(cfg.split_seed, _STREAM_LABELED)
    chosen = []
    for c, name in enumerate(FASHION_MNIST_CLASSES):
        pool = np.flatnonzero(train_labels == c)
        if per_class > len(pool):
            raise ConfigError("data.labels_per_class",
                              f"asks for {per_class} labeled images per class but class {name!r} has only {len(pool)}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    labeled_idx = np.sort(np.concatenate(chosen))
    rest = np.setdiff1d(np.arange(len(train_labels)), labeled_idx, assume_unique=True)

    labeled = FashionMNISTSource(cfg.root, "train", labeled_idx, labeled=True, in_chans=cfg.in_chans)
    unlabeled: Optional[ImageSource] = None
    if len(rest):
        unlabeled = FashionMNISTSource(cfg.root, "train", rest, labeled=False, in_chans=cfg.in_chans)
        unlabeled = _limit(unlabeled, cfg.unlabeled_limit, cfg.split_seed, _STREAM_UNLABELED)
    test = FashionMNISTSource(cfg.root, "test", None, labeled=True, in_chans=cfg.in_chans)
    test = _limit(test, cfg.test_limit, cfg.split_seed, _STREAM_TEST)
    return DataBundle(labeled, unlabeled, test, list(FASHION_MNIST_CLASSES))


def remap_to_classes(source: ImageSource, classes: list[str], field: str) -> ImageSource:
    """Express ``source``'s labels in the indices of ``classes`` (in place; returns ``source``).

    Raises :class:`UserError` naming ``field`` and the first class not in ``classes``.
    """
    if source.classes is None or source.labels is None:
        raise UserError(f"{field}: the test set must be labeled")
    index = {name: k for k, name in enumerate(classes)}
    unknown = [name for name in source.classes if name not in index]
    if unknown:
        raise UserError(f"{field}: test class {unknown[0]!r} is not a training class "
                        f"(training classes: {', '.join(classes[:10])}{'...' if len(classes) > 10 else ''})")
    mapping = np.asarray([index[name] for name in source.classes], dtype=np.int64)
    source.labels = mapping[source.labels] if len(source.labels) else source.labels.astype(np.int64)
    source.classes = list(classes)
    return source


def _folder(cfg: "DataConfig") -> DataBundle:
    labeled = ImageFolderSource(_required(cfg, "labeled"), cfg.in_chans)
    classes = list(labeled.classes or [])
    unlabeled = UnlabeledFolderSource(cfg.unlabeled, cfg.in_chans) if cfg.unlabeled else None
    test = None
    if cfg.test:
        test = remap_to_classes(ImageFolderSource(cfg.test, cfg.in_chans), classes, "data.test")
    return _finish(cfg, labeled, unlabeled, test, classes)


def _manifest(cfg: "DataConfig") -> DataBundle:
    labeled = ManifestSource(_required(cfg, "labeled"), cfg.in_chans)
    if labeled.classes is None:
        raise UserError(f"data.labeled: manifest {cfg.labeled} has no column 'label'")
    classes = list(labeled.classes)
    unlabeled = None
    if cfg.unlabeled:
        unlabeled = ManifestSource(cfg.unlabeled, cfg.in_chans, classes=classes, verify=False)
        if unlabeled.labels is not None:
            # Labels of unlabeled images are only for measuring pseudo-label quality: never train on them.
            unlabeled.hidden_labels, unlabeled.labels, unlabeled.classes = unlabeled.labels, None, None
    test = None
    if cfg.test:
        test = ManifestSource(cfg.test, cfg.in_chans, classes=classes)
        if test.labels is None:
            raise UserError(f"data.test: manifest {cfg.test} has no column 'label'")
    return _finish(cfg, labeled, unlabeled, test, classes)


def _required(cfg: "DataConfig", key: str) -> str:
    value = getattr(cfg, key)
    if not value:
        raise ConfigError(f"data.{key}", f"is required when data.kind is {cfg.kind}")
    return value


def _finish(cfg: "DataConfig", labeled: ImageSource, unlabeled: Optional[ImageSource],
            test: Optional[ImageSource], classes: list[str]) -> DataBundle:
    unlabeled = _limit(unlabeled, cfg.unlabeled_limit, cfg.split_seed, _STREAM_UNLABELED)
    test = _limit(test, cfg.test_limit, cfg.split_seed, _STREAM_TEST)
    return DataBundle(labeled, unlabeled, test, classes)


def create_data(cfg: "DataConfig") -> DataBundle:
    """Build the labeled, unlabeled and test sources ``cfg`` describes.

    ``labels_per_class`` applies to Fashion-MNIST only (folder and manifest sources use every labeled
    image given); ``unlabeled_limit`` and ``test_limit`` apply to every kind as seeded random subsets.
    """
    if cfg.kind == "fashion_mnist":
        return _fashion_mnist(cfg)
    if cfg.kind == "folder":
        return _folder(cfg)
    if cfg.kind == "manifest":
        return _manifest(cfg)
    raise ConfigError("data.kind", f"must be one of fashion_mnist, folder, manifest; got {cfg.kind!r}")


def __getattr__(name: str) -> Any:
    # The torch Dataset lives in its own module so Ray Data actors and the CLI can use sources without
    # importing torch; it is still reachable as noisystudent.data.SourceDataset.
    if name in ("SourceDataset", "collate_skip_none", "EMPTY_BATCH"):
        from . import torch_dataset

        return getattr(torch_dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
