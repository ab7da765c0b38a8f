"""The step budget: how many optimizer steps a job runs, and the warning when they are too few."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import BudgetWarning
from .job import TrainJob


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a job runs (per DDP worker; the workers step together) and why."""

    epoch_steps: tuple[int, ...]  # steps of each training epoch; the optional labeled fine-tune is extra
    pass_steps: int  # steps of one pass over the data (pseudo-labeled images for a student, else labeled)
    source: str  # the setting that fixed the budget: "total_steps", "steps_per_epoch" or "epochs"
    data: str  # what one pass is, for messages

    @property
    def total(self) -> int:
        return sum(self.epoch_steps)


def plan_steps(job: TrainJob, world_size: int = 1) -> StepPlan:
    """The job's optimizer steps per epoch, from ``train_cfg``: ``total_steps`` split into ``epochs`` rounds
    (the first ``total_steps % epochs`` one step longer), else ``steps_per_epoch`` each epoch, else one pass
    over the data each epoch (a student's pass: its pseudo-labeled images with their balancing duplicates
    at the unlabeled batch size; a teacher's: its labeled images), shared among ``world_size`` workers;
    the last two lengthened to ``min_steps`` in all (rounded up to whole epochs) when they come to fewer.

    Only one pass is tied to the data size: 50 epochs over 100 labeled images at batch 64 are 50 steps."""
    cfg = job.train_cfg
    if job.uses_pseudo:
        n, bs = int(np.maximum(job.pseudo.weights.astype(np.int64), 0).sum()), job.unlabeled_batch
        data = f"{n} pseudo-labeled images (with duplicates) at batch {bs}"
    else:
        n, bs = len(job.labeled), cfg.batch_size
        data = f"{n} labeled images at batch {bs}"
    pass_steps = max(1, max(1, n // bs) // max(world_size, 1))
    if world_size > 1:
        data += f" on {world_size} workers"
    if cfg.total_steps is not None:
        q, r = divmod(cfg.total_steps, cfg.epochs)
        return StepPlan(tuple(q + (1 if e < r else 0) for e in range(cfg.epochs)), pass_steps, "total_steps", data)
    per_epoch, source = (cfg.steps_per_epoch, "steps_per_epoch") if cfg.steps_per_epoch else (pass_steps, "epochs")
    if per_epoch * cfg.epochs < cfg.min_steps:
        per_epoch, source = -(-cfg.min_steps // cfg.epochs), "min_steps"
    return StepPlan((per_epoch,) * cfg.epochs, pass_steps, source, data)


def budget_warning(job: TrainJob, plan: StepPlan) -> Optional[str]:
    """The warning for a job planned below ``train_cfg.warn_below_steps`` optimizer steps, None when it is not."""
    cfg, f = job.train_cfg, job.train_section
    if cfg.warn_below_steps <= 0 or plan.total >= cfg.warn_below_steps:
        return None
    how = {"total_steps": f"{f}.total_steps={cfg.total_steps}",
           "steps_per_epoch": f"{f}.epochs={cfg.epochs} x {f}.steps_per_epoch={cfg.steps_per_epoch}",
           "min_steps": f"{f}.min_steps={cfg.min_steps}",
           "epochs": f"{f}.epochs={cfg.epochs} x {plan.pass_steps} step(s), one pass over {plan.data}"}[plan.source]
    suggest = max(1000, cfg.warn_below_steps)
    return (f"the {job.role} of generation {job.generation} will run {plan.total} optimizer steps ({how}), fewer than "
            f"{f}.warn_below_steps={cfg.warn_below_steps}; a model trained from scratch learns little in so few. "
            f"Raise {f}.min_steps (a floor: e.g. {suggest}) or set {f}.total_steps for a budget in steps whatever the "
            f"data size; {f}.warn_below_steps: 0 silences this")


def warn_budget(job: TrainJob, world_size: int = 1) -> StepPlan:
    """Plan the job's steps and warn (:class:`BudgetWarning`) before it starts when they are too few."""
    plan = plan_steps(job, world_size)
    msg = budget_warning(job, plan)
    if msg is not None:
        import warnings

        warnings.warn(msg, BudgetWarning, stacklevel=2)
    return plan
