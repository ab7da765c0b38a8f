"""One training job from start to finish: set up, resume, the epochs, and the export.

After every epoch the full training state goes to ``last.pt`` (atomic), and a job started on a folder
that has one continues from it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from ..io import atomic_path
from .budget import warn_budget
from .epoch import run_epoch
from .export import finish
from .job import TrainHooks, TrainJob
from .loaders import cycle
from .optim import resolve_device, seed_everything
from .setup import Training, setup


def _resume_bytes(job: TrainJob, hooks: TrainHooks) -> Optional[bytes]:
    """The state to resume from: the runner's (Ray Train's checkpoint), else the folder's ``last.pt``."""
    if hooks.resume_state is not None:
        return hooks.resume_state
    last_path = Path(job.out_dir) / "last.pt"
    return last_path.read_bytes() if last_path.is_file() else None


def _evaluate_epoch(tr: Training, row: dict, epoch: int) -> None:
    """Test and validation accuracy into the epoch's row, every ``eval_every`` epochs and after the last."""
    job = tr.job
    last = epoch == tr.total_epochs - 1
    if not tr.hooks.is_main or not (last or (epoch + 1) % job.train_cfg.eval_every == 0):
        return
    if job.test is not None:
        row["test_acc"] = tr.evaluator.evaluate(tr.final_model, job.test)["top1"]
    if job.val is not None:
        row["val_acc"] = tr.evaluator.evaluate(tr.final_model, job.val)["top1"]


def _log_epoch(tr: Training, row: dict, epoch: int) -> None:
    job = tr.job
    tqdm.write(
        f"{job.role} gen{job.generation} epoch {epoch + 1}/{tr.total_epochs}: loss {row['train_loss']:.4f} "
        f"train_acc {row['train_acc']:.4f}" + (f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else "")
        + (f" test_acc {row['test_acc']:.4f}" if "test_acc" in row else "")
        + f" ({row['images_per_s']:.0f} img/s)"
    )


def _end_epoch(tr: Training, row: dict, epoch: int) -> None:
    """Record the epoch: history, ``last.pt`` (main worker), the per-epoch line, the runner's report."""
    tr.state.history.append(row)
    tr.state.epochs_done = epoch + 1
    blob = tr.state.to_bytes()
    if tr.hooks.is_main:
        with atomic_path(Path(tr.job.out_dir) / "last.pt") as tmp:
            tmp.write_bytes(blob)
        if tr.job.progress:
            _log_epoch(tr, row, epoch)
    if tr.hooks.report is not None:
        tr.hooks.report(row, blob)


def run_training(job: TrainJob, hooks: Optional[TrainHooks] = None) -> dict[str, Any]:
    """Train, evaluate and write ``model.pt``, ``metrics.json``, ``history.csv`` into ``job.out_dir``.

    The loop calls the job's distillation method (``job.method``; by default ``supervised``, or
    ``noisy_student`` when the job has pseudo-labels) and knows no loss by name. Returns the final
    metrics. Resumes from ``out_dir/last.pt`` (or ``hooks.resume_state``) when present.
    """
    hooks = hooks or TrainHooks()
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(job.device)
    seed_everything(job.seed)
    if hooks.warn_budget and hooks.is_main:
        warn_budget(job, hooks.world_size)
    tr = setup(job, hooks, device)
    resume = _resume_bytes(job, hooks)
    if resume is not None:
        tr.state.load_bytes(resume, out / "last.pt", device)
        if hooks.is_main and job.progress:
            tqdm.write(f"resuming {job.role} from epoch {tr.state.epochs_done} ({out})")
    labeled_iter = cycle(tr.data.labeled)
    t_job = time.perf_counter()
    for epoch in range(tr.state.epochs_done, tr.total_epochs):
        row = run_epoch(tr, epoch, labeled_iter)
        _evaluate_epoch(tr, row, epoch)
        _end_epoch(tr, row, epoch)
    return finish(tr, time.perf_counter() - t_job)
