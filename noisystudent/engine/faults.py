"""Fault injection for tests of failure recovery: a :attr:`TrainHooks.before_epoch` hook that raises once.

"Once" must survive the process it kills (a Ray Train worker restarts in a new process, a test calls
the job again), so the hook remembers in a marker file ``.failed-once-<epoch>`` in the job's folder;
tests read the marker to confirm the failure happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FailOnce:
    """Raise :class:`RuntimeError` when ``epoch`` starts, the first time only (per job folder)."""

    epoch: int

    def __call__(self, job, epoch: int) -> None:
        if epoch != self.epoch:
            return
        marker = Path(job.out_dir) / f".failed-once-{epoch}"
        if not marker.exists():
            marker.write_text("injected failure\n")
            raise RuntimeError(f"injected failure in epoch {epoch}")
