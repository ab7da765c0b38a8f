"""Configuration of the core: data, models, noise, training jobs and distillation.

Each section is a dataclass validated by :func:`noisystudent.validate.build` (every key known, every
value of the declared type, numbers in their :func:`~noisystudent.validate.range`); errors raise
:class:`ConfigError` naming the dotted field (``student.ladder[1].drop_path_rate``), which the CLI
prints as one line with exit code 2. A ``method`` field is of the ``method`` kind, validated by the
method registry (:mod:`noisystudent.distill`), which this module does not import.

The sections here are what one training job needs. The experiment file a user writes (one YAML: these
sections plus the generation loop's ``student`` ladder and promotion, ``pseudo_labels`` and ``ray``) is
:class:`pipelines.config.ExperimentConfig`, validated by the same :func:`~noisystudent.validate.build`: the core knows no
generations and no Ray.

CLI flags override the file (``apply_overrides``), never the reverse; the resolved config is frozen into
the run folder as ``config.yaml`` at the first step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from . import modality as _modality  # noqa: F401  (registers the `modalities` field kind)
from . import validate
from .errors import ConfigError, UserError


# deprecated private aliases, kept one release for branches written against them: use noisystudent.validate
_range = validate.range
_build = validate.build


@dataclass
class NoiseConfig:
    """Input noise for training (RandAugment plus flips and crops). The teacher labels clean images."""

    randaugment_n: int = field(default=2, metadata=validate.range(0, 14))
    randaugment_m: float = field(default=9.0, metadata=validate.range(0, 30))
    hflip: bool = True
    crop_padding: int = field(default=2, metadata=validate.range(0, 64))
    random_erasing: float = field(default=0.0, metadata=validate.range(0, 1))
    # where the noise runs: cpu (albumentations, image by image in the loaders), device (whole uint8 batches
    # where the model runs: noisystudent/batch_noise.py), auto (device when training on a GPU)
    backend: Literal["auto", "cpu", "device"] = "auto"


@dataclass
class TrainConfig:
    """One supervised (or student) training job."""

    epochs: int = field(default=10, metadata=validate.range(1, 10_000))
    batch_size: int = field(default=128, metadata=validate.range(1, 65_536))
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = field(default=0.1, metadata=validate.range(0, 10, lo_open=True))
    momentum: float = field(default=0.9, metadata=validate.range(0, 1))
    weight_decay: float = field(default=5e-4, metadata=validate.range(0, 1))
    warmup_epochs: float = field(default=0.0, metadata=validate.range(0, 1000))
    label_smoothing: float = field(default=0.0, metadata=validate.range(0, 1, hi_open=True))
    # exponential moving average of the weights, evaluated and exported instead of the last ones; it covers
    # the method's modules too (ONE's branches and gate, DML's peers), so what is exported stays one model
    ema_decay: Optional[float] = field(default=None, metadata=validate.range(0, 1, hi_open=True))
    num_workers: int = field(default=0, metadata=validate.range(0, 256))
    steps_per_epoch: Optional[int] = field(default=None, metadata=validate.range(1))
    # Step budget. Without these, a job runs epochs x steps_per_epoch optimizer steps, an epoch being one
    # pass over the data unless steps_per_epoch is set: 50 epochs of 100 images at batch 64 are 50 steps.
    # total_steps: exactly this many steps, whatever the data size, split into `epochs` rounds (each one
    # evaluation point, checkpoint and history row).
    total_steps: Optional[int] = field(default=None, metadata=validate.range(1))
    # min_steps: a floor for the epoch budget: when epochs x steps_per_epoch comes to fewer steps, each
    # epoch is lengthened so the job runs min_steps (epochs: 30 + min_steps: 1000 is 30 passes over a big
    # set and 1,000 steps on 100 images). Not applied to total_steps. 0: no floor
    min_steps: int = field(default=0, metadata=validate.range(0))
    # a job planned below this many optimizer steps warns before it starts, naming the number and the
    # settings that raise it; 0 never warns
    warn_below_steps: int = field(default=200, metadata=validate.range(0))
    eval_every: int = field(default=1, metadata=validate.range(1))
    # DDP multiplies the global batch by the number of workers; scale lr with it (Goyal et al., 2017)
    scale_lr_with_workers: bool = True
    # mixed precision: auto = bf16 on CUDA (fp16 + loss scaling where the GPU lacks bf16), off on CPU
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    # the student, its method's modules and an online teacher in the channels-last (NHWC) memory format:
    # 1.14-1.37x a training step on a 2-core CPU for the ResNets, WRNs and EfficientNet-B0 (docs/engine.md),
    # the layout tensor cores want on a GPU. Same arithmetic; false: the default NCHW layout
    channels_last: bool = True


@dataclass
class TeacherRef:
    """One member of a weighted teacher ensemble (``pseudo_labels.teachers``, ``distill.teachers``, a rung's
    ``teachers``): a checkpoint (``model.pt`` or its folder), or ``teacher`` for the model that teaches this
    step (the promoted model of the generation before; in ``distill``, ``distill.teacher``), and its weight
    (the weights are normalised to sum 1; noisystudent.distill.ensemble)."""

    path: str = "teacher"
    weight: float = field(default=1.0, metadata=validate.range(0))


@dataclass
class ModelConfig:
    """A model of the ladder with its own noise: student models get dropout, drop path and RandAugment.

    A ladder rung's ``noise`` fields that the rung does not set are the teacher's (see
    :func:`config_from_dict`), so turning a noise off for the teacher turns it off for every rung."""

    name: str = "resnet14"
    drop_rate: float = field(default=0.0, metadata=validate.range(0, 1, hi_open=True))
    drop_path_rate: float = field(default=0.0, metadata=validate.range(0, 1, hi_open=True))
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    # distillation method of this rung ({name, ...params}); null: the student section's method
    method: Optional[dict] = field(default=None, metadata=validate.kind("method"))
    # cross-modal: the data.modalities entry this model reads (teacher.modality; a rung's null: student.modality)
    modality: Optional[str] = None
    # weights the model starts from: null (random, the paper's from-scratch student), `teacher` (the model
    # that teaches this rung; the same architecture), or a checkpoint path (model.pt or its folder)
    init: Optional[str] = None
    # an online ensemble teaching this rung ([{path, weight}], `teacher` for the promoted model); null: the
    # promoted model alone. Response methods learn from the weighted mixture; a feature method names the
    # member it taps (its `tap` parameter)
    teachers: Optional[list[TeacherRef]] = None


@dataclass
class LabelNoiseConfig:
    """Noisy labels on the labeled training images (never validation or test; see
    :mod:`noisystudent.data.conditions`). Exactly ``round(rate * n)`` labels are flipped, each to a class
    other than its own: ``symmetric`` to a uniformly drawn other class, ``asymmetric`` to a fixed similar
    class (Fashion-MNIST: T-shirt<->Shirt, Pullover<->Coat, Trouser<->Dress, Sandal->Sneaker->Ankle
    boot->Sandal, Bag->Pullover; other data c -> c+1 mod C)."""

    rate: float = field(default=0.0, metadata=validate.range(0, 1))
    kind: Literal["symmetric", "asymmetric"] = "symmetric"
    seed: int = field(default=0, metadata=validate.range(0))


@dataclass
class ImbalanceConfig:
    """A long-tailed labeled training set: class c (in class-index order) keeps
    ``n_c = round(n_max * ratio ** (-c / (C - 1)))`` images (at least 1), ``n_max`` the smallest class's
    available count, so the first class has ``ratio`` times as many images as the last (Cao et al. 2019)."""

    ratio: float = field(default=1.0, metadata=validate.range(1, 10_000))
    seed: int = field(default=0, metadata=validate.range(0))


@dataclass
class DataConfig:
    """Where labeled, unlabeled and test images come from.

    ``kind``: ``fashion_mnist`` (idx files under ``root``, seeded split of ``labels_per_class`` labeled
    images per class, the rest unlabeled with hidden labels), ``cifar10``/``cifar100`` (the python-pickle
    batches under ``root``, split the same way; :mod:`noisystudent.data.cifar`), ``folder`` (ImageFolder trees for
    ``labeled``/``test``, any folder of images for ``unlabeled``) or ``manifest`` (CSV/Parquet files
    with ``path[,label]``).
    """

    kind: Literal["fashion_mnist", "cifar10", "cifar100", "folder", "manifest", "paired"] = "fashion_mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    labels_per_class: Optional[int] = field(default=100, metadata=validate.range(1))
    unlabeled_limit: Optional[int] = field(default=None, metadata=validate.range(1))
    test_limit: Optional[int] = field(default=None, metadata=validate.range(1))
    split_seed: int = 0
    labeled: Optional[str] = None
    unlabeled: Optional[str] = None
    # how `unlabeled` is read (kinds folder and manifest). `list`: every image listed up front, as a folder
    # or one manifest. Streaming, partition by partition, never listed on the driver (README: Scale):
    # `manifest_shards` (Parquet/CSV files with a path column), `folder_partitions` (each top-level
    # sub-folder a partition), `webdataset` (.tar shards), `parquet_bytes` (Parquet with encoded images)
    unlabeled_format: Literal["list", "manifest_shards", "folder_partitions", "webdataset", "parquet_bytes"] = "list"
    unlabeled_path_column: str = "path"  # manifest_shards: the column of image paths
    unlabeled_id_column: str = "image_id"  # parquet_bytes: the column of image ids
    unlabeled_bytes_column: str = "image"  # parquet_bytes: the column of encoded bytes (or an HF {bytes, path} struct)
    test: Optional[str] = None
    # validation images, the only data the loop's decisions (promotion) look at: a folder (kind folder)
    # or manifest (kind manifest) of labeled images; null: val_fraction of the labeled images
    val: Optional[str] = None
    # share of each class's labeled images held out for validation (stratified, seeded by split_seed);
    # at least val_min_per_class a class. A class with fewer than 2 x val_min_per_class labeled images
    # makes no split at all (a warning; decisions then have no validation signal). 0: no split
    val_fraction: float = field(default=0.1, metadata=validate.range(0, 0.5))
    val_min_per_class: int = field(default=2, metadata=validate.range(1))
    image_size: int = field(default=28, metadata=validate.range(8, 4096))
    in_chans: int = field(default=1, metadata=validate.range(1, 3))
    mean: list[float] = field(default_factory=lambda: [0.2860])
    std: list[float] = field(default_factory=lambda: [0.3530])
    # data conditions of studies, on the labeled training images only (test and validation stay clean);
    # the flips and kept images are written to the run folder (data_conditions.json, .parquet)
    label_noise: Optional[LabelNoiseConfig] = None
    imbalance: Optional[ImbalanceConfig] = None
    # kind paired (docs/crossmodal.md): {name: {kind, channels, size, mean, std, noise}} per modality; labeled,
    # unlabeled, test and val are paired manifests (image_id + one column per modality) or parallel trees
    modalities: Optional[dict] = field(default=None, metadata=validate.kind("modalities"))
    # an item lacking a modality: `skip` (left out and listed, like an unreadable image) or `error`
    missing_modality: Literal["skip", "error"] = "skip"



@dataclass
class TeachingConfig:
    """What the online teacher sees (Beyer et al., "Knowledge distillation: A good teacher is patient and
    consistent", CVPR 2022), for any method whose teacher runs online:

    - ``fixed``: the clean (eval-transformed) image: the offline labels' view, computed on the fly;
    - ``independent``: its own random augmentation, drawn apart from the student's;
    - ``consistent``: exactly the student's augmented view (the default);
    - ``function_matching``: the student's view, then mixup applied identically to both (same pairs,
      same weight): the teacher's function is matched on images between the data, no label needed.

    ``mixup_alpha``: the mixing weight is Beta(alpha, alpha) per batch, pairs drawn within the labeled
    rows and within the unlabeled rows (labels of labeled rows are mixed the same way for their CE).
    ``teacher_image_size``: the teacher's input side when it differs from the student's (null: the
    teacher checkpoint's own); views are drawn at the larger size and resized (antialiased) per model.
    """

    mode: Literal["fixed", "independent", "consistent", "function_matching"] = "consistent"
    mixup_alpha: float = field(default=1.0, metadata=validate.range(0, 100, lo_open=True))
    teacher_image_size: Optional[int] = field(default=None, metadata=validate.range(8, 4096))



@dataclass
class DistillConfig:
    """``noisystudent distill``: one student trained from a given teacher (model compression).

    The student is ``student.ladder[0]`` trained with ``student.train`` on the labeled images (the
    protocol of Sarfraz et al.: teacher and student see the same labeled data)."""

    teacher: Optional[str] = None  # checkpoint (model.pt or its folder); --teacher overrides
    # an online ensemble instead of one teacher ([{path, weight}], `teacher` meaning distill.teacher)
    teachers: Optional[list[TeacherRef]] = None
    method: dict = field(default_factory=lambda: {"name": "hinton"}, metadata=validate.kind("method"))
    # what the online teacher sees: fixed, independent, consistent (default) or function_matching
    teaching: TeachingConfig = field(default_factory=TeachingConfig)
    # unlabeled images per labeled one in each batch, taught by the online teacher alone (KD needs no label;
    # cross-modal distillation's unlabeled pairs). 0: the labeled images only (Sarfraz et al.'s protocol)
    unlabeled_ratio: float = field(default=0.0, metadata=validate.range(0, 1000))



def check_data(d: DataConfig, prefix: str = "data") -> None:
    """Cross-field rules of a data section (one message naming the field)."""
    if (d.kind == "paired") != (d.modalities is not None):
        raise ConfigError(f"{prefix}.modalities", "is required with data.kind paired" if d.kind == "paired"
                          else f"applies to data.kind paired only, not {d.kind}")
    n = d.in_chans
    if len(d.mean) != n:
        raise ConfigError(f"{prefix}.mean", f"needs {n} value(s) for in_chans={n}, got {len(d.mean)}")
    if len(d.std) != n:
        raise ConfigError(f"{prefix}.std", f"needs {n} value(s) for in_chans={n}, got {len(d.std)}")
    if any(s <= 0 for s in d.std):
        raise ConfigError(f"{prefix}.std", "values must be > 0")
    if d.kind in ("folder", "manifest", "paired"):
        for key in ("labeled", "test"):
            if not getattr(d, key):
                raise ConfigError(f"{prefix}.{key}", f"is required when data.kind is {d.kind}")
    if d.kind in ALL_LABELS_PER_CLASS and d.val:
        raise ConfigError(f"{prefix}.val", f"{d.kind} holds out data.val_fraction of labels_per_class; "
                                           "a val folder or manifest needs kind folder or manifest")
    if d.kind in ALL_LABELS_PER_CLASS and d.labels_per_class is None:
        raise ConfigError(f"{prefix}.labels_per_class", f"is required for {d.kind} "
                                                        f"(use {ALL_LABELS_PER_CLASS[d.kind]} for all labels)")


# kinds split into labeled/unlabeled by labels_per_class, with the labels_per_class that labels every
# training image (what the oracle baseline trains on)
ALL_LABELS_PER_CLASS = {"fashion_mnist": 6000, "cifar10": 5000, "cifar100": 500}


def check_train(t: TrainConfig, where: str) -> None:
    if t.total_steps is not None and t.total_steps < t.epochs:
        raise ConfigError(f"{where}.total_steps", f"is split into {where}.epochs={t.epochs} rounds and must be "
                                                  f">= it, got {t.total_steps}")


def check_model(name: str, where: str) -> None:
    """``where`` (e.g. ``teacher.name``) names a model :func:`noisystudent.models.create_model` builds."""
    from .models import is_model, list_families, list_models  # local import: models import torch

    if not is_model(name):
        fams = ", ".join(list_families())
        raise ConfigError(where, f"unknown model {name!r}; known: {', '.join(list_models())}"
                          + (f" (and the families {fams})" if fams else ""))


def read_mapping(path: str | Path, what: str = "config file", field: str = "<root>") -> dict:
    """A YAML file (``what``: how messages name it) that must hold a mapping; :class:`UserError` naming
    the file otherwise (:class:`ConfigError` on ``field`` when it holds something else)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(field, f"{path} must hold a mapping")
    return data


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys (``student.generations``) in a nested dict.

    A None value sets the field to null (``--set data.unlabeled_limit=null`` clears a limit); CLI flags
    that were not given are dropped by the caller before they get here."""
    import copy

    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(dotted, "cannot override inside a non-mapping")
        node[parts[-1]] = value
    return data


def to_dict(cfg: Any) -> dict:
    """A config dataclass as plain data (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


def non_default(obj: Any) -> dict:
    """A config dataclass as the fields that differ from their defaults, nested ones too: a field added
    later, whose default keeps the old behaviour, leaves a digest of it (a cache key) unchanged."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            if sub := non_default(value):
                out[f.name] = sub
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if value != default:
            out[f.name] = value
    return out


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
