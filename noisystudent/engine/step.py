"""One training step: the student and the method as one module, and one optimizer step over a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ..distill.base import Batch, DistillMethod, Outputs
from ..distill.teacher import OnlineTeacher
from ..distill.teaching import Teaching
from .loaders import to_device
from .optim import Precision


class StudentStep(torch.nn.Module):
    """The student and the method's extra modules as one module, so one DDP wrapper synchronises the
    gradients of both and one ``forward`` runs the student and the method's loss.

    ``forward(batch, teacher_outputs)`` returns ``(loss, parts, labeled_logits)``; with ``labels_only``
    (the optional labeled fine-tune at the end of a student job) the loss is cross-entropy alone."""

    def __init__(self, student: torch.nn.Module, method: DistillMethod):
        super().__init__()
        self.student = student
        self.method = method

    def forward(self, batch: Batch, teacher: Optional[Outputs], labels_only: bool = False):
        x = batch.inputs  # labeled rows, unlabeled rows, then the method's extra rows
        if labels_only:
            return self._labels_only(x, batch)
        stages = self.method.student_stages
        if stages:
            logits, feats = self.student.forward_intermediates(x, indices=list(stages))
        else:
            logits, feats = self.student(x), []
        out = Outputs(logits=logits, features=list(feats), n_labeled=batch.n_labeled, n_extra=batch.n_extra)
        loss, parts = self.method(out, teacher, batch)
        return loss, parts, out.labeled

    def _labels_only(self, x: torch.Tensor, batch: Batch):
        logits = self.student(x)
        ce = batch.ce(logits, self.method.label_smoothing)
        # the method's modules (a regressor, ONE's branches, DML's peers) sit this phase out; a zero
        # term keeps them in the graph so DDP, which expects a gradient for every parameter, does not stall
        extra = [p.sum() for p in self.method.parameters() if p.requires_grad]
        loss = ce + 0.0 * torch.stack(extra).sum() if extra else ce
        return loss, {"loss_labeled": ce.detach()}, logits


@dataclass
class StepResult:
    """What one step reports to the epoch's running sums."""

    loss: torch.Tensor
    parts: dict
    logits: torch.Tensor  # of the labeled rows
    y_hard: torch.Tensor  # their labels, for the accuracy
    n_labeled: int
    n_images: int  # labeled and pseudo-labeled rows


class UnlabeledBatches:
    """Pseudo-labeled batches on ``device`` without end: a new pass starts when one runs out."""

    def __init__(self, loader, device: torch.device, noise: Optional[Callable] = None):
        self.loader, self.device, self.it, self.noise = loader, device, iter(loader), noise

    def next(self):
        try:
            return to_device(next(self.it), self.device, self.noise)
        except StopIteration:
            self.it = iter(self.loader)
            return to_device(next(self.it), self.device, self.noise)


def next_batch(labeled: Iterator, unlabeled: Optional[UnlabeledBatches], device: torch.device,
               noise: Optional[Callable] = None) -> Optional[Batch]:
    """The step's batch: labeled rows, plus pseudo-labeled rows and their targets when the job has them
    (``noise``: the device noise backend's hook, see :mod:`noisystudent.batch_noise`)."""
    lb = to_device(next(labeled), device, noise)
    if lb is None:
        return None
    batch = Batch(x_labeled=lb[0], y=lb[1])
    if unlabeled is not None:
        ub = unlabeled.next()
        if ub is not None:
            batch.x_unlabeled, batch.targets = ub
    return batch


def train_step(model: torch.nn.Module, core: StudentStep, batch: Batch, teacher: Optional[OnlineTeacher],
               teaching: Teaching, state, precision: Precision, finetune: bool, epoch: int) -> StepResult:
    """Forward (teacher, student, the method's loss) under autocast, backward and one optimizer step;
    the schedule steps outside the fine-tune, the EMA after every step. ``state`` is the
    :class:`~noisystudent.engine.state.TrainState` whose optimizer, schedule and EMA are stepped."""
    device = precision.device
    # split paired views, mix (function_matching), resize per model; y_hard: labels for the accuracy
    batch, y_hard = teaching.prepare(batch, mixup=not finetune)
    if not finetune:
        extra = core.method.extra_inputs(batch, teacher)  # e.g. BSS's adversarial samples
        batch.x_extra = extra.detach() if extra is not None else None
    with precision.autocast():
        t_out = None
        if teacher is not None:
            t_out = teacher(teaching.teacher_input(batch), n_labeled=batch.n_labeled)
            t_out.n_extra = batch.n_extra
        loss, parts, logits_l = model(batch, t_out, finetune)
    if device.type == "cpu" and not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {float(loss)} in epoch {epoch + 1}; lower train.lr")
    state.optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(loss).backward()
    precision.scaler.step(state.optimizer)
    precision.scaler.update()
    if not finetune:
        state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(core)
    n = batch.n_labeled + (0 if batch.x_unlabeled is None else len(batch.x_unlabeled))
    return StepResult(loss, parts, logits_l, y_hard, batch.n_labeled, n)
