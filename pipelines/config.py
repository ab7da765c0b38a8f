"""The experiment file: the core's sections plus the generation loop's, validated into dataclasses.

One YAML file per experiment (``configs/*.yaml``). The sections a single training job needs (``data``,
``teacher``, ``teacher_train``, ``student.train``, noise, ``distill``) are the core's
(:mod:`noisystudent.config`); the ones only the loop and the Ray layer read live here: the student
``ladder`` and ``generations``, promotion, ``pseudo_labels`` (the labeling job and selection) and
``ray``. Validation is the core's validator (:func:`noisystudent.validate.build`: every key known, every
value typed and in range, errors naming the dotted field), so the YAML a user writes is one tree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from noisystudent.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    NoiseConfig,
    TeacherRef,
    TeachingConfig,
    TrainConfig,
    apply_overrides,
    check_data,
    check_model,
    check_train,
    dump_config,
    read_mapping,
    to_dict,
)
from noisystudent import validate
from noisystudent.errors import ConfigError

__all__ = ["ExperimentConfig", "PseudoLabelConfig", "RayConfig", "StudentConfig", "config_from_dict", "dump_config",
           "load_config", "to_dict"]


@dataclass
class PseudoLabelConfig:
    """How the teacher labels unlabeled images and which labels the student sees.

    ``per_class``: the paper's balancing K; classes with fewer than K selected images are duplicated up
    to K, classes with more keep their K most confident. ``None`` keeps the filtered set unbalanced;
    ``0`` means auto: K = number of selected images / number of classes.
    """

    temperature: float = field(default=1.0, metadata=validate.range(0, 100, lo_open=True))
    topk: Optional[int] = field(default=None, metadata=validate.range(1))
    soft: bool = True
    threshold: float = field(default=0.0, metadata=validate.range(0, 1))
    per_class: Optional[int] = field(default=0, metadata=validate.range(0))
    batch_size: int = field(default=512, metadata=validate.range(1))
    num_actors: int = field(default=1, metadata=validate.range(1, 1024))
    num_gpus_per_actor: float = field(default=0.0, metadata=validate.range(0, 8))
    num_cpus_per_actor: float = field(default=1.0, metadata=validate.range(0, 256))
    # a weighted ensemble labeling every generation ([{path, weight}]; `teacher`: the promoted model of the
    # generation before); null: that model alone. `label --teacher ... --weights ...` overrides it
    teachers: Optional[list[TeacherRef]] = None



@dataclass
class StudentConfig:
    """The noised student and the generation loop."""

    generations: int = field(default=3, metadata=validate.range(0, 100))
    ladder: list[ModelConfig] = field(default_factory=lambda: [ModelConfig(name="resnet20", drop_rate=0.3, drop_path_rate=0.1)])
    train: TrainConfig = field(default_factory=TrainConfig)
    ratio: float = field(default=3.0, metadata=validate.range(0, 1000))
    loss: Literal["soft", "hard", "hinton"] = "soft"
    temperature: float = field(default=1.0, metadata=validate.range(0, 100, lo_open=True))
    alpha: float = field(default=0.5, metadata=validate.range(0, 1))
    unlabeled_weight: float = field(default=1.0, metadata=validate.range(0, 1000))
    finetune_epochs: int = field(default=0, metadata=validate.range(0, 10_000))
    finetune_lr: float = field(default=0.01, metadata=validate.range(0, 10, lo_open=True))
    # which model teaches generation g + 1 (pipelines/promotion.py): `unless_worse` the student unless the
    # validation images show it worse (significantly, or by more than promote_margin); `if_better` only a
    # student at least as good as its teacher; `always` the student (the paper's loop). A refused student is
    # kept and reported; without validation data every student is promoted, saying so
    promote: Literal["always", "if_better", "unless_worse"] = "unless_worse"
    # one-sided exact McNemar level on the validation images below which a student is "significantly worse";
    # null: the policy's own (unless_worse 0.05; if_better 1, i.e. every student below is refused)
    promote_alpha: Optional[float] = field(default=None, metadata=validate.range(0, 1))
    # unless_worse: a student more than this far below its teacher's validation accuracy is refused whatever
    # the test says (a collapse shows on few images before it is significant)
    promote_margin: float = field(default=0.05, metadata=validate.range(0, 1))
    # distillation method of every rung ({name, ...params}; `noisystudent methods` lists them). null: the
    # Noisy Student loss of `loss`, `temperature`, `alpha`, `unlabeled_weight` above (older configs)
    method: Optional[dict] = field(default=None, metadata=validate.kind("method"))
    # what an online teacher sees (methods with an online teacher only; offline labels are `fixed`)
    teaching: TeachingConfig = field(default_factory=TeachingConfig)
    # cross-modal (docs/crossmodal.md): the data.modalities entry the students read (a rung's modality wins)
    modality: Optional[str] = None

    def method_for(self, rung: "ModelConfig") -> dict:
        """The resolved method of a ladder rung: its own, else this section's, else ``noisy_student``."""
        from noisystudent.distill import resolve_method_config

        if rung.method is not None:
            return rung.method
        if self.method is not None:
            return self.method
        return resolve_method_config({"name": "noisy_student", "mode": self.loss, "temperature": self.temperature,
                                      "alpha": self.alpha, "unlabeled_weight": self.unlabeled_weight}, "student.method")



@dataclass
class RayConfig:
    address: Optional[str] = None
    num_cpus: Optional[int] = field(default=None, metadata=validate.range(1))
    # 0 trains in the driver process; N >= 1 trains on Ray Train with N workers (DDP when N > 1)
    workers: int = field(default=1, metadata=validate.range(0, 4096))
    gpus_per_worker: float = field(default=0.0, metadata=validate.range(0, 8))
    max_failures: int = field(default=1, metadata=validate.range(-1, 1000))
    # torch threads of each Ray Train worker (torch.set_num_threads); null (default): Ray's OMP_NUM_THREADS,
    # the worker's CPUs, which the embedded instance divides among the workers (a 1-worker student on an idle
    # 2-core machine: 320 img/s against 218 with 1 thread). Set 1 on a small machine shared with other jobs,
    # where 2 threads collapse in OpenMP barriers
    torch_threads: Optional[int] = field(default=None, metadata=validate.range(1, 1024))



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
    oracle_epochs: int = field(default=5, metadata=validate.range(1, 10_000))
    # the converged oracle of the accuracy benchmark: the same model and labels, trained to convergence
    oracle_converged_epochs: int = field(default=30, metadata=validate.range(1, 10_000))

    def student_model(self, generation: int) -> ModelConfig:
        """The ladder's model for ``generation`` (1-based); the last rung repeats for later generations."""
        if generation < 1:
            raise ValueError("students start at generation 1")
        ladder = self.student.ladder
        return ladder[min(generation, len(ladder)) - 1]



def _check(cfg: ExperimentConfig) -> ExperimentConfig:
    check_data(cfg.data)
    from noisystudent.modality import check_modality_name

    check_modality_name(cfg.teacher.modality, cfg.data.modalities, "teacher.modality")
    check_modality_name(cfg.student.modality, cfg.data.modalities, "student.modality")
    for i, rung in enumerate(cfg.student.ladder):
        if rung.modality is not None:
            check_modality_name(rung.modality, cfg.data.modalities, f"student.ladder[{i}].modality")
    if not cfg.student.ladder:
        raise ConfigError("student.ladder", "needs at least one model")
    for where, t in (("teacher_train", cfg.teacher_train), ("student.train", cfg.student.train)):
        check_train(t, where)
    for where, mc in [("teacher.name", cfg.teacher)] + [
        (f"student.ladder[{i}].name", m) for i, m in enumerate(cfg.student.ladder)
    ]:
        check_model(mc.name, where)
    if cfg.teacher.init == "teacher":
        raise ConfigError("teacher.init", "the generation-0 teacher has no teacher to start from; give a checkpoint path or null")
    for i, rung in enumerate(cfg.student.ladder):
        before = cfg.student.ladder[i - 1] if i else cfg.teacher
        if rung.init == "teacher" and rung.name != before.name:
            raise ConfigError(f"student.ladder[{i}].init", f"`teacher` needs the architecture of the model that teaches "
                              f"this rung ({before.name}), got {rung.name}; use null to train it from scratch")
    from noisystudent.distill import resolve_method_config

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
    base = dataclasses.asdict(validate.build(NoiseConfig, noise, "teacher.noise"))
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
    import noisystudent.distill  # noqa: F401  (registers the validator of the `method` fields)

    data = data or {}
    if isinstance(data, dict):
        data = _inherit_teacher_noise(data)
    return _check(validate.build(ExperimentConfig, data, ""))


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> ExperimentConfig:
    """Read, override and validate a config file. Raises :class:`UserError` on any problem."""
    data = apply_overrides(read_mapping(path), overrides or {})
    return config_from_dict(data)
