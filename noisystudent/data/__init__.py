"""Data sources: labeled, unlabeled and test images behind one :class:`ImageSource` interface.

:func:`create_data` turns a :class:`~noisystudent.config.DataConfig` into a :class:`DataBundle`. Every
random choice (the Fashion-MNIST labeled split, ``unlabeled_limit`` and ``test_limit`` subsets) is drawn
from ``split_seed`` with its own stream per purpose, so changing one limit never changes another set,
and every machine of a cluster builds the same split.

Test labels are always expressed in the training class indices: a test set whose classes are a subset
of the training classes is remapped; one with a class the model never saw is a :class:`UserError`.

Validation (``DataBundle.val``) is what the loop decides on (promotion); test accuracy is only reported.
It is ``data.val`` (a folder or manifest) when given, else ``data.val_fraction`` of each class's labeled
images, held out from training (:func:`split_validation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..config import ALL_LABELS_PER_CLASS
from ..errors import ConfigError, NoisyStudentWarning, UserError
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
    "ALL_LABELS_PER_CLASS",
    "FashionMNISTSource",
    "FileSource",
    "ImageFolderSource",
    "ImageSource",
    "ManifestSource",
    "SkippedImagesWarning",
    "SourceDataset",
    "UnlabeledFolderSource",
    "ValidationWarning",
    "collate_skip_none",
    "create_data",
    "load_fashion_mnist",
    "split_validation",
]

# Independent random streams drawn from split_seed, one per purpose.
_STREAM_LABELED, _STREAM_UNLABELED, _STREAM_TEST, _STREAM_VAL = 0, 1, 2, 3


class ValidationWarning(NoisyStudentWarning):
    """The labeled set is too small to hold out a validation split; decisions run without one."""


@dataclass
class DataBundle:
    """The sources one experiment uses. ``classes`` are the training classes; ``labeled.labels`` and
    ``test.labels`` index into them. ``unlabeled`` is None when there is nothing left to pseudo-label.
    ``labeled`` is what training sees: the validation images (``val``, None without a split) are not in it."""

    labeled: ImageSource
    unlabeled: Optional[ImageSource]
    test: Optional[ImageSource]
    classes: list[str]
    val: Optional[ImageSource] = None
    # the audit record of data.label_noise / data.imbalance (noisystudent.data.conditions), None without
    conditions: Optional[dict] = None

    def describe(self) -> str:
        lines = [f"labeled:   {self.labeled.describe()}"]
        lines.append(f"val:       {self.val.describe() if self.val is not None else 'none'}")
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


def split_validation(labels: np.ndarray, fraction: float, min_per_class: int, seed: int) -> Optional[np.ndarray]:
    """Positions of ``labels`` to hold out for validation (sorted), or None when no split can be made.

    Stratified: each class gives ``round(fraction * n)`` of its ``n`` images, at least ``min_per_class``
    and never so many that fewer than ``min_per_class`` remain for training. When a class has fewer than
    ``2 * min_per_class`` images (10 labels a class and the default 2 still split: 8 train, 2 val), a
    per-class comparison would rest on one image or take most of a class's labels, so no split is made
    at all. Seeded by ``seed`` on its own stream: the split never moves another random choice.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if fraction <= 0 or len(labels) == 0:
        return None
    rng = _rng(seed, _STREAM_VAL)
    held = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        n = len(pool)
        if n < 2 * min_per_class:
            return None
        k = min(max(min_per_class, int(np.floor(fraction * n + 0.5))), n - min_per_class)
        held.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(held))


def _hold_out(cfg: "DataConfig", labeled: ImageSource) -> tuple[ImageSource, Optional[ImageSource]]:
    """``(training images, validation images)`` of a labeled source as ``data.val_fraction`` says."""
    if cfg.val_fraction <= 0:
        return labeled, None
    held = split_validation(labeled.labels, cfg.val_fraction, cfg.val_min_per_class, cfg.split_seed)
    if held is None:
        import warnings

        counts = np.bincount(np.asarray(labeled.labels, dtype=np.int64))
        warnings.warn(f"data.val_fraction: no validation split: the smallest class has {int(counts[counts > 0].min())} labeled "
                      f"image(s), fewer than 2 x data.val_min_per_class={cfg.val_min_per_class}; every labeled image "
                      "trains, and promotion has no validation signal (give data.val, or more labels)",
                      ValidationWarning, stacklevel=3)
        return labeled, None
    mask = np.zeros(len(labeled), dtype=bool)
    mask[held] = True
    return labeled.subset(~mask), labeled.subset(mask)


def _fashion_mnist(cfg: "DataConfig") -> DataBundle:
    _, train_labels = load_fashion_mnist(cfg.root, "train")

    def make(split: str, idx: Optional[np.ndarray], labeled: bool) -> ImageSource:
        return FashionMNISTSource(cfg.root, split, idx, labeled=labeled, in_chans=cfg.in_chans)

    return _class_split(cfg, train_labels, list(FASHION_MNIST_CLASSES), make)


def _cifar(cfg: "DataConfig") -> DataBundle:
    from .cifar import CifarSource, load_cifar

    _, train_labels, classes = load_cifar(cfg.root, cfg.kind, "train")

    def make(split: str, idx: Optional[np.ndarray], labeled: bool) -> ImageSource:
        return CifarSource(cfg.root, cfg.kind, split, idx, labeled=labeled, in_chans=cfg.in_chans)

    return _class_split(cfg, train_labels, classes, make)


def _class_split(cfg: "DataConfig", train_labels: np.ndarray, classes: list[str], make: Any) -> DataBundle:
    """A train/test data set split as ``data.labels_per_class`` says: that many labeled images per class
    (seeded), the rest unlabeled with hidden labels, the whole test split as test. ``make(split, indices,
    labeled)`` builds a source of the data set."""
    per_class = cfg.labels_per_class
    if per_class is None:
        raise ConfigError("data.labels_per_class", f"is required for {cfg.kind} "
                                                   f"(use {ALL_LABELS_PER_CLASS[cfg.kind]} for all labels)")
    rng = _rng(cfg.split_seed, _STREAM_LABELED)
    chosen = []
    for c, name in enumerate(classes):
        pool = np.flatnonzero(train_labels == c)
        if per_class > len(pool):
            raise ConfigError("data.labels_per_class",
                              f"asks for {per_class} labeled images per class but class {name!r} has only {len(pool)}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    labeled_idx = np.sort(np.concatenate(chosen))
    rest = np.setdiff1d(np.arange(len(train_labels)), labeled_idx, assume_unique=True)

    labeled = make("train", labeled_idx, True)
    unlabeled: Optional[ImageSource] = None
    if len(rest):
        unlabeled = _limit(make("train", rest, False), cfg.unlabeled_limit, cfg.split_seed, _STREAM_UNLABELED)
    test = _limit(make("test", None, True), cfg.test_limit, cfg.split_seed, _STREAM_TEST)
    labeled, val = _hold_out(cfg, labeled)
    return DataBundle(labeled, unlabeled, test, list(classes), val)


def remap_to_classes(source: ImageSource, classes: list[str], field: str) -> ImageSource:
    """Express ``source``'s labels in the indices of ``classes`` (in place; returns ``source``).

    Raises :class:`UserError` naming ``field`` and the first class not in ``classes``.
    """
    if source.classes is None or source.labels is None:
        raise UserError(f"{field}: the images must be labeled")
    index = {name: k for k, name in enumerate(classes)}
    unknown = [name for name in source.classes if name not in index]
    if unknown:
        raise UserError(f"{field}: class {unknown[0]!r} is not a training class "
                        f"(training classes: {', '.join(classes[:10])}{'...' if len(classes) > 10 else ''})")
    mapping = np.asarray([index[name] for name in source.classes], dtype=np.int64)
    source.labels = mapping[source.labels] if len(source.labels) else source.labels.astype(np.int64)
    source.classes = list(classes)
    return source


def _folder(cfg: "DataConfig") -> DataBundle:
    labeled = ImageFolderSource(_required(cfg, "labeled"), cfg.in_chans)
    classes = list(labeled.classes or [])
    unlabeled = _streaming(cfg) or (UnlabeledFolderSource(cfg.unlabeled, cfg.in_chans) if cfg.unlabeled else None)
    test = None
    if cfg.test:
        test = remap_to_classes(ImageFolderSource(cfg.test, cfg.in_chans), classes, "data.test")
    val = remap_to_classes(ImageFolderSource(cfg.val, cfg.in_chans), classes, "data.val") if cfg.val else None
    return _finish(cfg, labeled, unlabeled, test, classes, val)


def _manifest(cfg: "DataConfig") -> DataBundle:
    labeled = ManifestSource(_required(cfg, "labeled"), cfg.in_chans)
    if labeled.classes is None:
        raise UserError(f"data.labeled: manifest {cfg.labeled} has no column 'label'")
    classes = list(labeled.classes)
    unlabeled = _streaming(cfg)
    if cfg.unlabeled and unlabeled is None:
        unlabeled = ManifestSource(cfg.unlabeled, cfg.in_chans, classes=classes, verify=False)
        if unlabeled.labels is not None:
            # Labels of unlabeled images are only for measuring pseudo-label quality: never train on them.
            unlabeled.hidden_labels, unlabeled.labels, unlabeled.classes = unlabeled.labels, None, None
    test = None
    if cfg.test:
        test = ManifestSource(cfg.test, cfg.in_chans, classes=classes)
        if test.labels is None:
            raise UserError(f"data.test: manifest {cfg.test} has no column 'label'")
    val = None
    if cfg.val:
        val = ManifestSource(cfg.val, cfg.in_chans, classes=classes)
        if val.labels is None:
            raise UserError(f"data.val: manifest {cfg.val} has no column 'label'")
    return _finish(cfg, labeled, unlabeled, test, classes, val)


def _streaming(cfg: "DataConfig") -> Optional[Any]:
    """The unlabeled :class:`~.streaming.StreamSource` when ``data.unlabeled_format`` streams, else None."""
    if cfg.unlabeled_format == "list" or not cfg.unlabeled:
        return None
    from .streaming import StreamSource

    if cfg.unlabeled_limit is not None:
        raise ConfigError("data.unlabeled_limit", f"cannot subset a streaming source (data.unlabeled_format="
                          f"{cfg.unlabeled_format}); leave it null, or list fewer shards in data.unlabeled")
    return StreamSource(cfg.unlabeled_format, cfg.unlabeled, cfg.in_chans, path_column=cfg.unlabeled_path_column,
                        id_column=cfg.unlabeled_id_column, bytes_column=cfg.unlabeled_bytes_column)


def _required(cfg: "DataConfig", key: str) -> str:
    value = getattr(cfg, key)
    if not value:
        raise ConfigError(f"data.{key}", f"is required when data.kind is {cfg.kind}")
    return value


def _finish(cfg: "DataConfig", labeled: ImageSource, unlabeled: Optional[ImageSource],
            test: Optional[ImageSource], classes: list[str], val: Optional[ImageSource] = None) -> DataBundle:
    unlabeled = _limit(unlabeled, cfg.unlabeled_limit, cfg.split_seed, _STREAM_UNLABELED)
    test = _limit(test, cfg.test_limit, cfg.split_seed, _STREAM_TEST)
    if val is None:
        labeled, val = _hold_out(cfg, labeled)
    return DataBundle(labeled, unlabeled, test, classes, val)


def create_data(cfg: "DataConfig") -> DataBundle:
    """Build the labeled, unlabeled and test sources ``cfg`` describes.

    ``labels_per_class`` applies to Fashion-MNIST only (folder and manifest sources use every labeled
    image given); ``unlabeled_limit`` and ``test_limit`` apply to every kind as seeded random subsets.
    Validation is ``data.val`` when given, else ``data.val_fraction`` of the labeled images (taken out
    of ``labeled``); see :func:`split_validation` for the policy on very few labels.
    Label noise and class imbalance (``data.label_noise``, ``data.imbalance``) then change the labeled
    training images only (:mod:`.conditions`); ``DataBundle.conditions`` records what they did.
    """
    from .conditions import apply_conditions

    builders = {"fashion_mnist": _fashion_mnist, "cifar10": _cifar, "cifar100": _cifar, "folder": _folder,
                "manifest": _manifest}
    if cfg.kind not in builders:
        raise ConfigError("data.kind", f"must be one of {', '.join(builders)}; got {cfg.kind!r}")
    if cfg.kind in ALL_LABELS_PER_CLASS and cfg.unlabeled_format != "list":
        raise ConfigError("data.unlabeled_format", f"applies to kinds folder and manifest, not {cfg.kind} "
                          f"(got {cfg.unlabeled_format!r})")
    bundle = builders[cfg.kind](cfg)
    bundle.labeled, bundle.conditions = apply_conditions(cfg, bundle.labeled, bundle.classes)
    return bundle


def __getattr__(name: str) -> Any:
    # The torch Dataset lives in its own module so Ray Data actors and the CLI can use sources without
    # importing torch; it is still reachable as noisystudent.data.SourceDataset.
    if name in ("SourceDataset", "collate_skip_none", "EMPTY_BATCH"):
        from . import torch_dataset

        return getattr(torch_dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
