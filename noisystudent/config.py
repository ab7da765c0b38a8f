"""Experiment configuration: one YAML file validated into dataclasses.

Why dataclasses and a hand-written validator instead of a schema library: the stack is fixed by the
user (no pydantic), and the rules are few: every key must be known, every value must have the declared
type, numbers must lie in their range. Errors raise :class:`ConfigError` naming the dotted field
(``student.ladder[1].drop_path_rate``), which the CLI prints as one line with exit code 2.

CLI flags override the file (``apply_overrides``), never the reverse; the resolved config is frozen into
the run folder as ``config.yaml`` at the first step.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError, UserError


def _range(lo=None, hi=None, lo_open=False, hi_open=False):
    return {"range": (lo, hi, lo_open, hi_open)}


@dataclass
class NoiseConfig:
    """Input noise for training (RandAugment plus flips and crops). The teacher labels clean images."""

    randaugment_n: int = field(default=2, metadata=_range(0, 14))
    randaugment_m: float = field(default=9.0, metadata=_range(0, 30))
    hflip: bool = True
    crop_padding: int = field(default=2, metadata=_range(0, 64))
    random_erasing: float = field(default=0.0, metadata=_range(0, 1))


@dataclass
class TrainConfig:
    """One supervised (or student) training job."""

    epochs: int = field(default=10, metadata=_range(1, 10_000))
    batch_size: int = field(default=128, metadata=_range(1, 65_536))
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = field(default=0.1, metadata=_range(0, 10, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    weight_decay: float = field(default=5e-4, metadata=_range(0, 1))
    warmup_epochs: float = field(default=0.0, metadata=_range(0, 1000))
    label_smoothing: float = field(default=0.0, metadata=_range(0, 1, hi_open=True))
    # exponential moving average of the weights, evaluated and exported instead of the last ones; it covers
    # the method's modules too (ONE's branches and gate, DML's peers), so what is exported stays one model
    ema_decay: Optional[float] = field(default=None, metadata=_range(0, 1, hi_open=True))
    num_workers: int = field(default=0, metadata=_range(0, 256))
    steps_per_epoch: Optional[int] = field(default=None, metadata=_range(1))
    # Step budget. Without these, a job runs epochs x steps_per_epoch optimizer steps, an epoch being one
    # pass over the data unless steps_per_epoch is set: 50 epochs of 100 images at batch 64 are 50 steps.
    # total_steps: exactly this many steps, whatever the data size, split into `epochs` rounds (each one
    # evaluation point, checkpoint and history row).
    total_steps: Optional[int] = field(default=None, metadata=_range(1))
    # min_steps: a floor for the epoch budget: when epochs x steps_per_epoch comes to fewer steps, each
    # epoch is lengthened so the job runs min_steps (epochs: 30 + min_steps: 1000 is 30 passes over a big
    # set and 1,000 steps on 100 images). Not applied to total_steps. 0: no floor
    min_steps: int = field(default=0, metadata=_range(0))
    # a job planned below this many optimizer steps warns before it starts, naming the number and the
    # settings that raise it; 0 never warns
    warn_below_steps: int = field(default=200, metadata=_range(0))
    eval_every: int = field(default=1, metadata=_range(1))
    # DDP multiplies the global batch by the number of workers; scale lr with it (Goyal et al., 2017)
    scale_lr_with_workers: bool = True
    # mixed precision: auto = bf16 on CUDA (fp16 + loss scaling where the GPU lacks bf16), off on CPU
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"


@dataclass
class ModelConfig:
    """A model of the ladder with its own noise: student models get dropout, drop path and RandAugment.

    A ladder rung's ``noise`` fields that the rung does not set are the teacher's (see
    :func:`config_from_dict`), so turning a noise off for the teacher turns it off for every rung."""

    name: str = "resnet14"
    drop_rate: float = field(default=0.0, metadata=_range(0, 1, hi_open=True))
    drop_path_rate: float = field(default=0.0, metadata=_range(0, 1, hi_open=True))
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    # distillation method of this rung ({name, ...params}); null: the student section's method
    method: Optional[dict] = field(default=None, metadata={"method": True})


@dataclass
class LabelNoiseConfig:
    """Noisy labels on the labeled training images (never validation or test; see
    :mod:`noisystudent.data.conditions`). Exactly ``round(rate * n)`` labels are flipped, each to a class
    other than its own: ``symmetric`` to a uniformly drawn other class, ``asymmetric`` to a fixed similar
    class (Fashion-MNIST: T-shirt<->Shirt, Pullover<->Coat, Trouser<->Dress, Sandal->Sneaker->Ankle
    boot->Sandal, Bag->Pullover; other data c -> c+1 mod C)."""

    rate: float = field(default=0.0, metadata=_range(0, 1))
    kind: Literal["symmetric", "asymmetric"] = "symmetric"
    seed: int = field(default=0, metadata=_range(0))


@dataclass
class ImbalanceConfig:
    """A long-tailed labeled training set: class c (in class-index order) keeps
    ``n_c = round(n_max * ratio ** (-c / (C - 1)))`` images (at least 1), ``n_max`` the smallest class's
    available count, so the first class has ``ratio`` times as many images as the last (Cao et al. 2019)."""

    ratio: float = field(default=1.0, metadata=_range(1, 10_000))
    seed: int = field(default=0, metadata=_range(0))


@dataclass
class DataConfig:
    """Where labeled, unlabeled and test images come from.

    ``kind``: ``fashion_mnist`` (idx files under ``root``, seeded split of ``labels_per_class`` labeled
    images per class, the rest unlabeled with hidden labels), ``folder`` (ImageFolder trees for
    ``labeled``/``test``, any folder of images for ``unlabeled``) or ``manifest`` (CSV/Parquet files
    with ``path[,label]``).
    """

    kind: Literal["fashion_mnist", "folder", "manifest"] = "fashion_mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    labels_per_class: Optional[int] = field(default=100, metadata=_range(1))
    unlabeled_limit: Optional[int] = field(default=None, metadata=_range(1))
    test_limit: Optional[int] = field(default=None, metadata=_range(1))
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
    val_fraction: float = field(default=0.1, metadata=_range(0, 0.5))
    val_min_per_class: int = field(default=2, metadata=_range(1))
    image_size: int = field(default=28, metadata=_range(8, 4096))
    in_chans: int = field(default=1, metadata=_range(1, 3))
    mean: list[float] = field(default_factory=lambda: [0.2860])
    std: list[float] = field(default_factory=lambda: [0.3530])
    # data conditions of studies, on the labeled training images only (test and validation stay clean);
    # the flips and kept images are written to the run folder (data_conditions.json, .parquet)
    label_noise: Optional[LabelNoiseConfig] = None
    imbalance: Optional[ImbalanceConfig] = None


@dataclass
class PseudoLabelConfig:
    """How the teacher labels unlabeled images and which labels the student sees.

    ``per_class``: the paper's balancing K; classes with fewer than K selected images are duplicated up
    to K, classes with more keep their K most confident. ``None`` keeps the filtered set unbalanced;
    ``0`` means auto: K = number of selected images / number of classes.
    """

    temperature: float = field(default=1.0, metadata=_range(0, 100, lo_open=True))
    topk: Optional[int] = field(default=None, metadata=_range(1))
    soft: bool = True
    threshold: float = field(default=0.0, metadata=_range(0, 1))
    per_class: Optional[int] = field(default=0, metadata=_range(0))
    batch_size: int = field(default=512, metadata=_range(1))
    num_actors: int = field(default=1, metadata=_range(1, 1024))
    num_gpus_per_actor: float = field(default=0.0, metadata=_range(0, 8))
    num_cpus_per_actor: float = field(default=1.0, metadata=_range(0, 256))


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
    mixup_alpha: float = field(default=1.0, metadata=_range(0, 100, lo_open=True))
    teacher_image_size: Optional[int] = field(default=None, metadata=_range(8, 4096))


@dataclass
class StudentConfig:
    """The noised student and the generation loop."""

    generations: int = field(default=3, metadata=_range(0, 100))
    ladder: list[ModelConfig] = field(default_factory=lambda: [ModelConfig(name="resnet20", drop_rate=0.3, drop_path_rate=0.1)])
    train: TrainConfig = field(default_factory=TrainConfig)
    ratio: float = field(default=3.0, metadata=_range(0, 1000))
    loss: Literal["soft", "hard", "hinton"] = "soft"
    temperature: float = field(default=1.0, metadata=_range(0, 100, lo_open=True))
    alpha: float = field(default=0.5, metadata=_range(0, 1))
    unlabeled_weight: float = field(default=1.0, metadata=_range(0, 1000))
    finetune_epochs: int = field(default=0, metadata=_range(0, 10_000))
    finetune_lr: float = field(default=0.01, metadata=_range(0, 10, lo_open=True))
    # which model teaches generation g + 1: `always` the student of g; `if_better` the student only when
    # its validation accuracy is at least its teacher's, else that teacher again (the student is kept
    # and reported). Without validation data if_better promotes the student and says so
    promote: Literal["always", "if_better"] = "if_better"
    # below 1: if_better refuses a student below its teacher only when it is significantly worse (one-sided
    # exact McNemar test on the same validation images, p < promote_alpha); 1 refuses every such student
    promote_alpha: float = field(default=1.0, metadata=_range(0, 1))
    # distillation method of every rung ({name, ...params}; `noisystudent methods` lists them). null: the
    # Noisy Student loss of `loss`, `temperature`, `alpha`, `unlabeled_weight` above (older configs)
    method: Optional[dict] = field(default=None, metadata={"method": True})
    # what an online teacher sees (methods with an online teacher only; offline labels are `fixed`)
    teaching: TeachingConfig = field(default_factory=TeachingConfig)

    def method_for(self, rung: "ModelConfig") -> dict:
        """The resolved method of a ladder rung: its own, else this section's, else ``noisy_student``."""
        from .distill import resolve_method_config

        if rung.method is not None:
            return rung.method
        if self.method is not None:
            return self.method
        return resolve_method_config({"name": "noisy_student", "mode": self.loss, "temperature": self.temperature,
                                      "alpha": self.alpha, "unlabeled_weight": self.unlabeled_weight}, "student.method")


@dataclass
class RayConfig:
    address: Optional[str] = None
    num_cpus: Optional[int] = field(default=None, metadata=_range(1))
    # 0 trains in the driver process; N >= 1 trains on Ray Train with N workers (DDP when N > 1)
    workers: int = field(default=1, metadata=_range(0, 4096))
    gpus_per_worker: float = field(default=0.0, metadata=_range(0, 8))
    max_failures: int = field(default=1, metadata=_range(-1, 1000))
    # torch threads of each Ray Train worker (torch.set_num_threads); null: Ray's OMP_NUM_THREADS, the
    # worker's CPUs. 1: on 2 cores with another job running, 2 threads collapse in OpenMP barriers
    torch_threads: Optional[int] = field(default=1, metadata=_range(1, 1024))


@dataclass
class DistillConfig:
    """``noisystudent distill``: one student trained from a given teacher (model compression).

    The student is ``student.ladder[0]`` trained with ``student.train`` on the labeled images (the
    protocol of Sarfraz et al.: teacher and student see the same labeled data)."""

    teacher: Optional[str] = None  # checkpoint (model.pt or its folder); --teacher overrides
    method: dict = field(default_factory=lambda: {"name": "hinton"}, metadata={"method": True})
    # what the online teacher sees: fixed, independent, consistent (default) or function_matching
    teaching: TeachingConfig = field(default_factory=TeachingConfig)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(name="resnet14"))
    teacher_train: TrainConfig = field(default_factory=TrainConfig)
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # the all-labels oracle sees ~60x more images per epoch than the teacher; it gets its own budget
    oracle_epochs: int = field(default=5, metadata=_range(1, 10_000))
    # the converged oracle of the accuracy benchmark: the same model and labels, trained to convergence
    oracle_converged_epochs: int = field(default=30, metadata=_range(1, 10_000))

    def student_model(self, generation: int) -> ModelConfig:
        """The ladder's model for ``generation`` (1-based); the last rung repeats for later generations."""
        if generation < 1:
            raise ValueError("students start at generation 1")
        ladder = self.student.ladder
        return ladder[min(generation, len(ladder)) - 1]


# --------------------------------------------------------------------------------------------------
# validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, name: str, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], name, meta)
    if value is None:
        raise ConfigError(name, f"must be {_type_name(tp)}, got null")
    if meta.get("method"):
        from .distill import resolve_method_config  # local import: the registry imports torch

        return resolve_method_config(value, name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(name, f"must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"must be a list, got {type(value).__name__} {value!r}")
        (item_tp,) = args
        return [_convert(v, item_tp, f"{name}[{i}]", {}) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"must be a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
    if "range" in meta:
        lo, hi, lo_open, hi_open = meta["range"]
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise ConfigError(name, f"must be {'>' if lo_open else '>='} {lo}, got {value!r}")
        if hi is not None and (value > hi or (hi_open and value == hi)):
            raise ConfigError(name, f"must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if isinstance(data, cls):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(where, f"unknown key; known keys here: {', '.join(fields)}")
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _convert(value, hints[key], name, dict(fields[key].metadata))
    return cls(**kwargs)


def _check(cfg: ExperimentConfig) -> ExperimentConfig:
    d = cfg.data
    n = d.in_chans
    if len(d.mean) != n:
        raise ConfigError("data.mean", f"needs {n} value(s) for in_chans={n}, got {len(d.mean)}")
    if len(d.std) != n:
        raise ConfigError("data.std", f"needs {n} value(s) for in_chans={n}, got {len(d.std)}")
    if any(s <= 0 for s in d.std):
        raise ConfigError("data.std", "values must be > 0")
    if d.kind in ("folder", "manifest"):
        for key in ("labeled", "test"):
            if not getattr(d, key):
                raise ConfigError(f"data.{key}", f"is required when data.kind is {d.kind}")
    if d.kind == "fashion_mnist" and d.val:
        raise ConfigError("data.val", "fashion_mnist holds out data.val_fraction of labels_per_class; "
                                      "a val folder or manifest needs kind folder or manifest")
    if d.kind == "fashion_mnist" and d.labels_per_class is None:
        raise ConfigError("data.labels_per_class", "is required for fashion_mnist (use 6000 for all labels)")
    if not cfg.student.ladder:
        raise ConfigError("student.ladder", "needs at least one model")
    for where, t in (("teacher_train", cfg.teacher_train), ("student.train", cfg.student.train)):
        if t.total_steps is not None and t.total_steps < t.epochs:
            raise ConfigError(f"{where}.total_steps", f"is split into {where}.epochs={t.epochs} rounds and must be "
                                                      f">= it, got {t.total_steps}")
    from .models import is_model, list_families, list_models  # local import: models import torch

    for name, mc in [("teacher.name", cfg.teacher)] + [
        (f"student.ladder[{i}].name", m) for i, m in enumerate(cfg.student.ladder)
    ]:
        if not is_model(mc.name):
            fams = ", ".join(list_families())
            raise ConfigError(name, f"unknown model {mc.name!r}; known: {', '.join(list_models())}"
                              + (f" (and the families {fams})" if fams else ""))
    from .distill import resolve_method_config

    cfg.distill.method = resolve_method_config(cfg.distill.method, "distill.method")  # defaults filled in
    pl_t = cfg.pseudo_labels.temperature
    methods = [("student.method", cfg.student.method), ("distill.method", cfg.distill.method)] + [
        (f"student.ladder[{i}].method", m.method) for i, m in enumerate(cfg.student.ladder)]
    for where, m in methods:
        if m and m.get("name") == "hinton" and m.get("source") == "offline" and m["temperature"] != pl_t:
            raise ConfigError(f"{where}.temperature", f"offline hinton reads probabilities stored at "
                              f"pseudo_labels.temperature={pl_t:g}; set both to the same value, got {m['temperature']:g}")
    return cfg


def _inherit_teacher_noise(data: dict) -> dict:
    """Ladder rungs start from the teacher's noise: every ``noise`` field a rung does not set is the
    teacher's (as resolved: the teacher's own fields over the defaults), so a rung never re-enables what
    the user turned off for the teacher (``hflip: false`` on images that are not mirror-symmetric).

    The default ladder (no ``student.ladder`` given) inherits the same way. Works on the raw mapping,
    before validation, because only there is it known which fields a rung set."""
    teacher = data.get("teacher") if isinstance(data.get("teacher"), dict) else {}
    noise = teacher.get("noise", {}) if teacher.get("noise") is not None else {}
    student = data.get("student") if isinstance(data.get("student"), dict) else None
    if not isinstance(noise, dict):
        return data  # validation names teacher.noise
    base = dataclasses.asdict(_build(NoiseConfig, noise, "teacher.noise"))
    data = dict(data)
    if student is None or "ladder" not in student:
        ladder = [{**dataclasses.asdict(m), "noise": None} for m in StudentConfig().ladder]
    else:
        ladder = student["ladder"]
    if not isinstance(ladder, list):
        return data  # validation names student.ladder
    rungs = []
    for rung in ladder:
        if isinstance(rung, dict) and (rung.get("noise") is None or isinstance(rung.get("noise"), dict)):
            rung = {**rung, "noise": {**base, **(rung.get("noise") or {})}}
        rungs.append(rung)
    data["student"] = {**(student or {}), "ladder": rungs}
    return data


def config_from_dict(data: dict) -> ExperimentConfig:
    """Validate a config mapping (a loaded YAML file) into an :class:`ExperimentConfig`.

    Ladder rungs inherit the teacher's noise fields they do not set (:func:`_inherit_teacher_noise`)."""
    data = data or {}
    if isinstance(data, dict):
        data = _inherit_teacher_noise(data)
    return _check(_build(ExperimentConfig, data, ""))


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> ExperimentConfig:
    """Read, override and validate a config file. Raises :class:`UserError` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError("<root>", f"{path} must hold a mapping")
    data = apply_overrides(data, overrides or {})
    return config_from_dict(data)


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


def to_dict(cfg: ExperimentConfig) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
