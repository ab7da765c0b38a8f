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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
from torch import nn

from noisystudent.errors import ConfigError

TeacherKind = Literal["none", "offline", "online"]


@dataclass
class Outputs:
    """One model's outputs on the step's images: labeled rows first, then unlabeled ones."""

    logits: torch.Tensor
    features: list[torch.Tensor]  # the outputs of the stages the method asked for, in its order
    n_labeled: int

    @property
    def labeled(self) -> torch.Tensor:
        return self.logits[: self.n_labeled]

    @property
    def unlabeled(self) -> torch.Tensor:
        return self.logits[self.n_labeled :]


@dataclass
class Batch:
    """The step's data: labeled images and labels, unlabeled images and their offline targets (if any)."""

    x_labeled: torch.Tensor
    y: torch.Tensor
    x_unlabeled: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None  # (n_unlabeled, C) stored pseudo-label probabilities

    @property
    def n_labeled(self) -> int:
        return len(self.x_labeled)


class DistillMethod(nn.Module):
    """Base of every method. Subclasses set ``name``, ``teacher``, ``Params`` and implement :meth:`loss`."""

    name: ClassVar[str]
    teacher: ClassVar[TeacherKind] = "none"
    Params: ClassVar[type]
    # a paper reference and one line on what the method transfers, shown by `noisystudent methods`
    summary: ClassVar[str] = ""

    def __init__(self, params, *, student_info: list[dict], teacher_info: Optional[list[dict]], num_classes: int,
                 label_smoothing: float = 0.0, field: str = "method"):
        super().__init__()
        self.params = params
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.field = field
        self.student_info = student_info
        self.teacher_info = teacher_info
        self.epoch, self.total_epochs = 0, 1  # see set_epoch
        if self.teacher_kind == "online" and teacher_info is None:
            raise ConfigError(field, f"method {self.name!r} needs a teacher model (distill.teacher or --teacher)")

    # what the engine asks ----------------------------------------------------------------------------
    @classmethod
    def teacher_for(cls, config: dict) -> TeacherKind:
        """The teacher a (resolved) config of this method needs; a method may choose by a parameter
        (hinton's ``source``). The engine asks before building anything, to load an online teacher."""
        return cls.teacher

    @property
    def teacher_kind(self) -> TeacherKind:
        return type(self).teacher_for(dict(vars(self.params)))

    @property
    def student_stages(self) -> tuple[int, ...]:
        return ()

    @property
    def teacher_stages(self) -> tuple[int, ...]:
        return ()

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

    def forward(self, student: Outputs, teacher: Optional[Outputs], batch: Batch):
        return self.loss(student, teacher, batch)

    # helpers for subclasses --------------------------------------------------------------------------
    def _check_stages(self, stages: tuple[int, ...], info: Optional[list[dict]], who: str, param: str) -> None:
        n = len(info or [])
        bad = [s for s in stages if not -n <= s < n]
        if bad:
            raise ConfigError(f"{self.field}.{param}", f"the {who} model has {n} stages (0..{n - 1}); got {bad[0]}")
