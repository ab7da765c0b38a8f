"""What a distillation method is, and what the engine hands it each step.

A method is an ``nn.Module`` so that its extra trainable modules (FitNet's regressor, a connector, a
cohort peer) are its submodules: the engine puts them in the optimizer, the resume state and the DDP
wrapper with the student, with no list to keep in sync. Class attributes declare what it needs:

- ``teacher``: ``"none"`` (the student learns from labels alone), ``"offline"`` (targets are the
  pseudo-label probabilities read from Parquet: Noisy Student) or ``"online"`` (a frozen teacher runs
  on exactly the batch the student sees, without autograd);
- ``student_stages`` / ``teacher_stages``: stage indices (of the models' ``feature_info``) whose outputs
  the loss needs; empty for response-only methods, which then cost no extra memory.

``loss(student, teacher, batch)`` returns the scalar loss and its named parts (floats or 0-d tensors)
for logging; the engine logs every part under its name.

Three optional hooks let a method reach past one student and one loss, without the engine knowing it:

- ``extra_inputs(batch, teacher)``: images appended after the batch's rows, which both the student and
  the online teacher then run on (BSS's adversarial samples); ``Outputs.extra`` holds their logits;
- ``members()``: the other full models a method trains beside the student (a DML cohort); the engine
  evaluates each, writes its checkpoint and metrics, and ``export_model`` may pick one of them;
- ``export_model(student, spec)``: the model (and its spec) written as the job's ``model.pt``; by default
  the student itself (ONE exports one branch, or the gated ensemble).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from noisystudent.errors import ConfigError

TeacherKind = Literal["none", "offline", "online"]


@dataclass
class Outputs:
    """One model's outputs on the step's images: labeled rows first, then unlabeled ones."""

    logits: torch.Tensor
    features: list[torch.Tensor]  # the outputs of the stages the method asked for, in its order
    n_labeled: int
    n_extra: int = 0  # rows a method appended (extra_inputs), after the unlabeled ones
    # an online ensemble's (weight, logits) per teacher (noisystudent.distill.ensemble); None for one model
    members: Optional[list] = None

    def probs(self, temperature: float = 1.0) -> torch.Tensor:
        """softmax(logits / T), or for an ensemble the weighted mixture of its members' softmax(z_k / T):
        what a response method distils from (float32, every row)."""
        if self.members is None:
            return F.softmax(self.logits.float() / temperature, dim=-1)
        from noisystudent.distill.ensemble import mixture

        return mixture([z for _, z in self.members], [w for w, _ in self.members], temperature)

    @property
    def labeled(self) -> torch.Tensor:
        return self.logits[: self.n_labeled]

    @property
    def unlabeled(self) -> torch.Tensor:
        return self.logits[self.n_labeled : len(self.logits) - self.n_extra]

    @property
    def batch_logits(self) -> torch.Tensor:
        """The logits of the batch's own rows (labeled and unlabeled), without a method's extra rows."""
        return self.logits[: len(self.logits) - self.n_extra]

    @property
    def extra(self) -> torch.Tensor:
        return self.logits[len(self.logits) - self.n_extra :]


@dataclass
class Batch:
    """The step's data: labeled images and labels, unlabeled images and their offline targets (if any)."""

    x_labeled: torch.Tensor
    y: torch.Tensor
    x_unlabeled: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None  # (n_unlabeled, C) stored pseudo-label probabilities
    # the teacher's view of the same images when it differs from the student's (teaching `fixed` or
    # `independent`, or another resolution); None: the teacher sees exactly the student's images
    x_teacher: Optional[torch.Tensor] = None
    # rows appended by the method's extra_inputs (student and teacher both run on them)
    x_extra: Optional[torch.Tensor] = None

    @property
    def n_labeled(self) -> int:
        return len(self.x_labeled)

    @property
    def inputs(self) -> torch.Tensor:
        """The student's input: labeled rows, then unlabeled ones, then a method's extra rows."""
        parts = [self.x_labeled] + [x for x in (self.x_unlabeled, self.x_extra) if x is not None]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @property
    def n_extra(self) -> int:
        return 0 if self.x_extra is None else len(self.x_extra)

    def ce(self, logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy of the labeled rows' ``logits`` against ``y``: class indices, or (mixup of the
        function-matching setting) a (n, C) probability row per image; 0 without labeled rows."""
        if self.n_labeled == 0:
            return logits.sum() * 0
        return F.cross_entropy(logits, self.y, label_smoothing=label_smoothing)


class DistillMethod(nn.Module):
    """Base of every method. Subclasses set ``name``, ``teacher``, ``Params`` and implement :meth:`loss`."""

    name: ClassVar[str]
    teacher: ClassVar[TeacherKind] = "none"
    Params: ClassVar[type]
    # a paper reference and one line on what the method transfers, shown by `noisystudent methods`
    summary: ClassVar[str] = ""
    # parameters that name stages (an index or a list of them) and the model they index: "student",
    # "teacher" or "both". The base checks them against the models when the method is built, and
    # student_stages / teacher_stages are them unless a method overrides those properties.
    stage_params: ClassVar[dict[str, str]] = {}

    def __init__(self, params, *, student_info: list[dict], teacher_info: Optional[list[dict]], num_classes: int,
                 label_smoothing: float = 0.0, field: str = "method", student_spec=None):
        super().__init__()
        self.params = params
        # the student's ModelSpec (noisystudent.checkpoint), for methods that build models of their own
        # (a DML peer, ONE's branches); None where a method is built without one (unit tests)
        self.student_spec = student_spec
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.field = field
        self.student_info = student_info
        self.teacher_info = teacher_info
        self.epoch, self.total_epochs = 0, 1  # see set_epoch
        if self.teacher_kind == "online" and teacher_info is None:
            raise ConfigError(field, f"method {self.name!r} needs a teacher model (distill.teacher or --teacher)")
        for param, who in self.stage_params.items():  # the stages a config names exist in the models
            value = getattr(params, param)
            stages = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            for model in ("student", "teacher") if who == "both" else (who,):
                self.check_stages(stages, student_info if model == "student" else teacher_info, model, param)

    # what the engine asks ----------------------------------------------------------------------------
    @classmethod
    def teacher_for(cls, config: dict) -> TeacherKind:
        """The teacher a (resolved) config of this method needs; a method may choose by a parameter
        (hinton's ``source``). The engine asks before building anything, to load an online teacher."""
        return cls.teacher

    @property
    def teacher_kind(self) -> TeacherKind:
        return type(self).teacher_for(dict(vars(self.params)))

    def _declared_stages(self, model: str) -> tuple[int, ...]:
        out: tuple[int, ...] = ()
        for param, who in self.stage_params.items():
            if who in (model, "both"):
                value = getattr(self.params, param)
                out += tuple(value) if isinstance(value, (list, tuple)) else (value,)
        return out

    @property
    def student_stages(self) -> tuple[int, ...]:
        return self._declared_stages("student")

    @property
    def teacher_stages(self) -> tuple[int, ...]:
        return self._declared_stages("teacher")

    @classmethod
    def check_params(cls, params, field: str) -> None:
        """Cross-parameter checks at config time; raise :class:`ConfigError` naming the field."""

    def set_epoch(self, epoch: int, total: int) -> None:
        """Called by the engine before every training epoch (0-based ``epoch`` of ``total``), on every
        worker and again after a resume, so a method's schedule (FitNet's hint stage, FSP's first stage)
        needs no state of its own in the checkpoint."""
        self.epoch, self.total_epochs = epoch, total

    def loss(self, student: Outputs, teacher: Optional[Outputs], batch: Batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def extra_inputs(self, batch: Batch, teacher) -> Optional[torch.Tensor]:
        """Images to append to the step's input (student and online teacher run on them too); ``teacher``
        is the :class:`~noisystudent.distill.teacher.OnlineTeacher` or None. Called before the forward,
        outside the student's autograd graph."""
        return None

    def members(self) -> list[tuple[str, nn.Module, str]]:
        """``(label, model, model_name)`` of every other full model this method trains (a cohort)."""
        return []

    def export_model(self, student: nn.Module, spec, member_metrics: Optional[list[dict]] = None):
        """``(model, spec)`` to write as the job's ``model.pt``. ``member_metrics``: the student's and
        every member's final metrics (``val_acc`` among them when there is validation data), in the order
        student, then :meth:`members`, so a method can export the best on validation."""
        return student, spec

    def forward(self, student: Outputs, teacher: Optional[Outputs], batch: Batch):
        return self.loss(student, teacher, batch)

    # helpers for subclasses --------------------------------------------------------------------------
    def labeled_ce(self, student: Outputs, batch: Batch) -> torch.Tensor:
        """The task loss: cross-entropy of the student's labeled rows against the labels, with the
        job's label smoothing (:meth:`Batch.ce`: index or mixup-row labels; 0 without labeled rows)."""
        return batch.ce(student.labeled, self.label_smoothing)

    def check_stages(self, stages: tuple[int, ...], info: Optional[list[dict]], who: str, param: str) -> None:
        """Raise :class:`ConfigError` on ``<field>.<param>`` when a stage index is not one of the ``who``
        model's (``info``: its ``feature_info``; negative indices count from the end)."""
        n = len(info or [])
        bad = [s for s in stages if not -n <= s < n]
        if bad:
            raise ConfigError(f"{self.field}.{param}", f"the {who} model has {n} stages (0..{n - 1}); got {bad[0]}")


class StagePairsMethod(DistillMethod):
    """A method that matches listed student stages to teacher stages one to one (AT, SP): ``Params``
    has ``student_stages`` and ``teacher_stages`` lists of equal, non-zero length."""

    stage_params = {"student_stages": "student", "teacher_stages": "teacher"}

    @classmethod
    def check_params(cls, params, field: str) -> None:
        if not params.student_stages:
            raise ConfigError(f"{field}.student_stages", "needs at least one stage")
        if len(params.student_stages) != len(params.teacher_stages):
            raise ConfigError(f"{field}.teacher_stages", f"must pair one to one with student_stages "
                              f"({len(params.student_stages)} stages), got {len(params.teacher_stages)}")
