"""The anomaly detector's config: one small YAML file, validated like the experiment config.

A separate file from :class:`~pipelines.config.ExperimentConfig` because a detector shares nothing with
a Noisy Student run but the training settings (:class:`~noisystudent.config.TrainConfig`) and where Ray
runs (:class:`~pipelines.config.RayConfig`), which it reuses; it lives beside the code that runs it, out
of the core, because of that ``ray`` section. Validation is the same validator
(:func:`noisystudent.validate.build`): an unknown key, a wrong type or a value out of range raises
:class:`~noisystudent.errors.ConfigError` naming the dotted field (``train.lr``, ``teacher.weights``).

Example (``configs/anomaly/``)::

    name: sneaker
    data: {kind: folder, train: data/good, val_fraction: 0.1}
    teacher: {checkpoint: runs/fmnist/gen-0/teacher/model.pt}   # or weights: resnet18.pth + model: resnet18
    stpm: {stages: [0, 1, 2], combine: product}
    train: {epochs: 20, batch_size: 32, lr: 0.4, momentum: 0.9, weight_decay: 1.0e-4}
    threshold: {fpr: 0.05}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from noisystudent.config import (
    NoiseConfig,
    TrainConfig,
    apply_overrides,
    check_model,
    check_train,
    dump_config,
    read_mapping,
    to_dict,
)
from noisystudent import validate
from noisystudent.errors import ConfigError

from ..config import RayConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class AnomalyDataConfig:
    """The normal (defect-free) images the student learns from, and the normal images the threshold is set on.

    ``kind``: ``folder`` (every image below ``train``, recursive) or ``fashion_mnist`` (the training
    images of class ``normal_class`` under ``root``). Validation normals: the ``val`` folder when given,
    else ``val_fraction`` of the training images, held out (seeded by ``split_seed``)."""

    kind: Literal["folder", "fashion_mnist"] = "folder"
    train: Optional[str] = None
    val: Optional[str] = None
    val_fraction: float = field(default=0.1, metadata=validate.range(0, 0.9))
    split_seed: int = 0
    train_limit: Optional[int] = field(default=None, metadata=validate.range(1))
    root: str = "/usr/share/datasets/fashion-mnist"
    normal_class: Optional[str] = None


@dataclass
class AnomalyTeacherConfig:
    """The frozen teacher: a classifier checkpoint of this project, or torchvision weights from a local file.

    ``weights`` is a state dict saved by torchvision (``torch.save(model.state_dict())``, or the ``.pth``
    files torchvision downloads), read with the weights-only loader; ``model`` names its architecture
    (``resnet18``, ``efficientnet_b0``, ...), and ``image_size``/``in_chans``/``mean``/``std`` how images
    are fed to it (ImageNet's statistics by default). A checkpoint carries all of these itself. Nothing is
    ever downloaded."""

    checkpoint: Optional[str] = None
    weights: Optional[str] = None
    model: Optional[str] = None
    image_size: int = field(default=224, metadata=validate.range(8, 4096))
    in_chans: int = field(default=3, metadata=validate.range(1, 3))
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class STPMConfig:
    """Which stages are matched, and how their anomaly maps make one map (the paper: product)."""

    stages: list[int] = field(default_factory=lambda: [0, 1, 2])
    combine: Literal["product", "sum"] = "product"


@dataclass
class ThresholdConfig:
    """An image is flagged when its score exceeds the threshold; the threshold is the score that at most
    ``fpr`` of the validation normals exceed (it needs about 1 / ``fpr`` validation images to mean it)."""

    fpr: float = field(default=0.05, metadata=validate.range(0, 1, hi_open=True))


@dataclass
class ScoreConfig:
    """Defaults of ``noisystudent anomaly score`` (its flags override them): the Ray Data actor pool, the
    shard size, and whether each image's map is stored."""

    batch_size: int = field(default=128, metadata=validate.range(1))
    num_actors: int = field(default=1, metadata=validate.range(1, 1024))
    num_gpus_per_actor: float = field(default=0.0, metadata=validate.range(0, 8))
    num_cpus_per_actor: float = field(default=1.0, metadata=validate.range(0, 256))
    chunk_size: int = field(default=4096, metadata=validate.range(1))
    save_maps: bool = True


def _stpm_train() -> TrainConfig:
    # the paper's optimisation (SGD, lr 0.4, momentum 0.9, weight decay 1e-4, batch 32); fewer epochs (it trains 100)
    return TrainConfig(epochs=20, batch_size=32, optimizer="sgd", lr=0.4, momentum=0.9, weight_decay=1e-4)


@dataclass
class AnomalyConfig:
    name: str = "anomaly"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: AnomalyDataConfig = field(default_factory=AnomalyDataConfig)
    teacher: AnomalyTeacherConfig = field(default_factory=AnomalyTeacherConfig)
    stpm: STPMConfig = field(default_factory=STPMConfig)
    train: TrainConfig = field(default_factory=_stpm_train)
    # input noise while the student trains; null (the paper): none, the student sees the images as scored
    augment: Optional[NoiseConfig] = None
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    # ray.workers 0 (the default here) trains in the driver process; N >= 1 on Ray Train
    ray: RayConfig = field(default_factory=lambda: RayConfig(workers=0))


# Fields a resumed `anomaly train` may change: where and how it runs, how `score` runs, and the threshold
# (recomputed from the stored validation scores without training again).
RUNTIME_FIELDS = ("ray", "device", "score", "threshold")


def _check(cfg: AnomalyConfig) -> AnomalyConfig:
    d, t = cfg.data, cfg.teacher
    if d.kind == "folder" and not d.train:
        raise ConfigError("data.train", "is required when data.kind is folder (a folder of normal images)")
    if d.kind == "fashion_mnist":
        from noisystudent.data.fashion_mnist import CLASSES

        if d.normal_class not in CLASSES:
            raise ConfigError("data.normal_class", f"must name a Fashion-MNIST class ({', '.join(CLASSES)}); "
                                                   f"got {d.normal_class!r}")
        if d.val:
            raise ConfigError("data.val", "fashion_mnist holds out data.val_fraction of the class's training images")
    if d.val is None and d.val_fraction <= 0:
        raise ConfigError("data.val_fraction", "must be > 0 without a data.val folder: the threshold is set on "
                                               "validation normals the student never saw")
    if bool(t.checkpoint) == bool(t.weights):
        raise ConfigError("teacher.checkpoint" if not t.checkpoint else "teacher.weights",
                          "give exactly one of teacher.checkpoint (a model.pt of this project) and teacher.weights "
                          "(a torchvision state dict file)")
    if t.weights:
        if not t.model:
            raise ConfigError("teacher.model", "names the architecture of teacher.weights (e.g. resnet18)")
        check_model(t.model, "teacher.model")
        for key in ("mean", "std"):
            if len(getattr(t, key)) != t.in_chans:
                raise ConfigError(f"teacher.{key}", f"needs {t.in_chans} value(s) for teacher.in_chans={t.in_chans}")
        if any(s <= 0 for s in t.std):
            raise ConfigError("teacher.std", "values must be > 0")
    if not cfg.stpm.stages:
        raise ConfigError("stpm.stages", "needs at least one stage")
    if len(set(cfg.stpm.stages)) != len(cfg.stpm.stages):
        raise ConfigError("stpm.stages", f"lists a stage twice: {cfg.stpm.stages}")
    check_train(cfg.train, "train")
    return cfg


def anomaly_config_from_dict(data: Any) -> AnomalyConfig:
    """Validate a mapping (a loaded YAML file) into an :class:`AnomalyConfig`; errors name the field."""
    return _check(validate.build(AnomalyConfig, data if data is not None else {}, ""))


def load_anomaly_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> AnomalyConfig:
    """Read, override (``--set a.b=v``; flags win over the file) and validate an anomaly config file."""
    return anomaly_config_from_dict(apply_overrides(read_mapping(path), overrides or {}))


__all__ = ["AnomalyConfig", "anomaly_config_from_dict", "dump_config", "load_anomaly_config", "to_dict"]
