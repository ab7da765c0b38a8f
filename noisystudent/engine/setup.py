"""Building a job's parts: the method, the student, the online teacher, the loaders and the state.

:func:`setup` returns a :class:`Training`, one object per concern (what is trained, its data, its
budget, its state, its precision, its evaluation), which the epoch loop and the export read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..checkpoint import ModelSpec, load_checkpoint
from ..distill.teacher import OnlineTeacher
from ..distill.teaching import Teaching
from ..errors import PseudoLabelWarning, UserError
from .budget import StepPlan, plan_steps
from .evaluation import Evaluator
from .job import TrainHooks, TrainJob
from .loaders import JobData, build_data
from .optim import Precision
from .state import TrainState
from .step import StudentStep


def job_method(job: TrainJob, use_pseudo: bool) -> dict:
    """The job's resolved method: as given, else the student's Noisy Student loss, else supervised."""
    from ..distill import resolve_method_config

    if job.method is not None:
        return resolve_method_config(job.method, "method")
    if use_pseudo and job.student is not None:
        return job.student.method_for(job.model_cfg)
    return resolve_method_config({"name": "supervised"}, "method")


def teacher_modality(job: TrainJob, teacher_spec) -> Optional[str]:
    """The modality a cross-modal job's teacher reads (``job.teacher_modality``, else its checkpoint's), or None
    when the teacher reads the student's own input."""
    m = job.teacher_modality or teacher_spec.modality
    return m if m is not None and m != job.spec.modality else None


def load_teacher(job: TrainJob, device: torch.device, stages) -> OnlineTeacher:
    """The job's teacher checkpoint, frozen on ``device``, refused when its channels differ from the student's
    (or, cross-modal, from those of the modality it reads)."""
    ckpt = load_checkpoint(job.teacher_ckpt, expected_classes=job.spec.classes)
    s, t = job.spec, ckpt.spec
    reads = job.teacher_modality or t.modality
    if reads is not None and hasattr(job.labeled, "modalities"):  # paired data: the teacher's modality decides
        from ..distill.crossmodal import check_teacher_input

        check_teacher_input(t, reads, job.labeled.modalities, "teacher.modality")
    elif s.in_chans != t.in_chans:  # a different side is fine: the teaching setting resizes each model's view
        raise UserError(f"teacher {job.teacher_ckpt} takes {t.in_chans}-channel images, the student "
                        f"{s.in_chans}-channel ones")
    return OnlineTeacher(ckpt, device, stages=stages, channels_last=job.train_cfg.channels_last)


def init_weights(model: torch.nn.Module, path: str, spec: ModelSpec) -> None:
    """Start ``model`` from the weights of checkpoint ``path`` (a student initialised from its teacher).

    The architecture and classes must be the checkpoint's; dropout and drop path may differ (they hold no
    weights), which is what lets a noised student continue from a clean teacher."""
    ckpt = load_checkpoint(path, expected_classes=spec.classes)
    if (ckpt.spec.name, ckpt.spec.in_chans) != (spec.name, spec.in_chans):
        raise UserError(f"init checkpoint {path} is a {ckpt.spec.name} on {ckpt.spec.in_chans}-channel images; the "
                        f"student is a {spec.name} on {spec.in_chans}-channel ones (init needs the same architecture)")
    model.load_state_dict(ckpt.state_dict)


def build_student(job: TrainJob, device: torch.device) -> torch.nn.Module:
    """The job's student on ``device``: freshly initialised, or from ``job.init_ckpt``'s weights."""
    student = job.spec.build(inference=False)
    if job.init_ckpt:
        init_weights(student, job.init_ckpt, job.spec)
    return student.to(device)


@dataclass
class Trainee:
    """What a job trains and with what: the (maybe DDP-wrapped) step module, the method, the teacher."""

    model: torch.nn.Module  # StudentStep, maybe DDP-wrapped
    core: StudentStep
    method_cfg: dict
    teacher: Optional[OnlineTeacher]
    teaching: Teaching
    use_pseudo: bool

    @property
    def student(self) -> torch.nn.Module:
        return self.core.student


def _offline_without_labels(job: TrainJob, hooks: TrainHooks, method_cfg: dict) -> dict:
    """Supervised in place of an offline method when the loop's selection kept nothing (it warned then)."""
    from ..distill import resolve_method_config

    if hooks.is_main:
        import warnings

        warnings.warn(f"the student of generation {job.generation} has no pseudo-labels to learn from "
                      f"(selection kept none, or student.ratio is 0); it trains on the {len(job.labeled)} labeled "
                      f"images alone, as method supervised instead of {method_cfg['name']}", PseudoLabelWarning,
                      stacklevel=5)
    return resolve_method_config({"name": "supervised"}, "method")


def build_trainee(job: TrainJob, hooks: TrainHooks, device: torch.device) -> Trainee:
    """The method, the student, the online teacher (when the method runs one) and the teaching setting."""
    from ..distill import create_method, get_method

    spec, use_pseudo = job.spec, job.uses_pseudo
    method_cfg = job_method(job, use_pseudo)
    if job.pseudo is not None and not use_pseudo and get_method(method_cfg["name"]).teacher_for(method_cfg) == "offline":
        method_cfg = _offline_without_labels(job, hooks, method_cfg)
    student = build_student(job, device)
    teacher = None
    if get_method(method_cfg["name"]).teacher_for(method_cfg) == "online":
        if not job.teacher_ckpt:
            raise UserError(f"method {method_cfg['name']!r} runs a teacher online: give its checkpoint "
                            "(distill.teacher or --teacher)")
        if job.teachers:  # several teachers online: a weighted ensemble (noisystudent.distill.ensemble)
            from ..distill.ensemble import load_ensemble

            teacher = load_ensemble(job.teachers, spec, device, method_cfg.get("tap"),
                                    "distill.method" if job.role == "distill" else "student.method",
                                    channels_last=job.train_cfg.channels_last)
        else:
            teacher = load_teacher(job, device, ())
    # each stage dict also names its model, so a method's config error can name both models
    method = create_method(method_cfg, student_info=[{**s, "model": spec.name} for s in student.feature_info],
                           teacher_info=[{**s, "model": teacher.checkpoint.spec.name} for s in teacher.feature_info]
                           if teacher is not None else None,
                           num_classes=spec.num_classes, label_smoothing=job.train_cfg.label_smoothing,
                           student_spec=spec).to(device)
    if teacher is not None:
        teacher.stages = tuple(method.teacher_stages)
    if method.teacher_kind == "offline" and not use_pseudo:
        raise UserError(f"method {method_cfg['name']!r} learns from stored pseudo-labels, which this job has none of; "
                        "use it in `noisystudent run`, or an online method (e.g. hinton) with `noisystudent distill`")
    from ..models import to_memory_format

    # the student and the method's modules (a regressor, ONE's branches) in the job's memory format, before
    # DDP wraps them: its gradient buckets follow the parameters' layout
    model = hooks.prepare_model(to_memory_format(StudentStep(student, method), job.train_cfg.channels_last))
    # the teaching setting applies to an online teacher only (stored labels were made on clean images)
    cross = teacher_modality(job, teacher.checkpoint.spec) if teacher is not None else None
    if cross is not None:  # the teacher reads another modality of the same items (docs/crossmodal.md)
        from ..distill.crossmodal import CrossModalTeaching

        teaching = CrossModalTeaching.create(job.teaching, spec, teacher.checkpoint.spec, cross)
    else:
        teaching = Teaching.from_config(job.teaching if teacher is not None else None, spec.image_size,
                                        teacher.checkpoint.spec.image_size if teacher is not None else None,
                                        spec.num_classes)
    return Trainee(model=model, core=getattr(model, "module", model), method_cfg=method_cfg, teacher=teacher,
                   teaching=teaching, use_pseudo=use_pseudo)


@dataclass
class Training:
    """One job's parts, each owning one concern; built by :func:`setup`."""

    job: TrainJob
    hooks: TrainHooks
    device: torch.device
    trainee: Trainee
    data: JobData
    plan: StepPlan
    state: TrainState
    precision: Precision
    evaluator: Evaluator

    @property
    def finetune_epochs(self) -> int:
        """Labeled fine-tune epochs after training: a student's, when it learns from pseudo-labels."""
        student = self.job.student
        return student.finetune_epochs if (student is not None and self.trainee.use_pseudo) else 0

    @property
    def total_epochs(self) -> int:
        return self.job.train_cfg.epochs + self.finetune_epochs

    @property
    def final_model(self) -> torch.nn.Module:
        """The student as evaluated and exported (its EMA when ``ema_decay`` is set)."""
        return self.state.final_core.student


def setup(job: TrainJob, hooks: TrainHooks, device: torch.device) -> Training:
    """Build the models, the method, the online teacher, the loaders and the optimisation of a job."""
    trainee = build_trainee(job, hooks, device)
    data = build_data(job, hooks, trainee.teaching, trainee.use_pseudo, device)
    plan = plan_steps(job, hooks.world_size)  # each DDP worker sees 1/world_size of the data per epoch
    state = TrainState.create(trainee.core, job.train_cfg, plan, hooks.world_size, trainee.method_cfg["name"])
    evaluator = Evaluator(data.eval_transform, device, job.spec.classes)
    return Training(job=job, hooks=hooks, device=device, trainee=trainee, data=data, plan=plan, state=state,
                    precision=Precision.create(job.train_cfg.amp, device), evaluator=evaluator)
