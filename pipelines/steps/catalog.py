"""The steps of a run in the order they run, and the functions that run each one.

:data:`GENERATION` is the one tuple a generation iterates (the loop), counts (``status``) and names its
commands by (the "run X first" messages). The functions below are the steps' public faces: each builds a
:class:`~.base.StepContext` and hands the step to :func:`~.base.execute`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .base import Step, StepContext, execute
from .labeling import LABEL, SELECT
from .outcome import EVALUATE, PROMOTE
from .training import DISTILL_STEP, STUDENT, TEACHER_STEP, baseline

if TYPE_CHECKING:
    from pipelines.config import ExperimentConfig
    from pipelines.state import RunDir

GENERATION: tuple[Step, ...] = (LABEL, SELECT, STUDENT, EVALUATE, PROMOTE)


def steps_for(g: int) -> tuple[Step, ...]:
    """The steps of generation ``g``: the teacher at 0, :data:`GENERATION` after."""
    return (TEACHER_STEP,) if g == 0 else GENERATION


def train_teacher(run: "RunDir", cfg: "ExperimentConfig", force: bool = False, progress: bool = True) -> dict:
    """Train the generation-0 teacher on the labeled images only; its metrics."""
    return execute(TEACHER_STEP, StepContext(run, cfg, 0, force, progress))


def train_baseline(run: "RunDir", cfg: "ExperimentConfig", role: str, labels_per_class: Optional[int],
                   progress: bool = True, force: bool = False, epochs: Optional[int] = None,
                   loader_workers: Optional[int] = None) -> dict:
    """Train the ``role`` baseline (see :func:`.training._baseline`); its metrics."""
    options = {"role": role, "labels_per_class": labels_per_class, "epochs": epochs, "loader_workers": loader_workers}
    return execute(baseline(role), StepContext(run, cfg, 0, force, progress, options))


def label(run: "RunDir", cfg: "ExperimentConfig", g: int, teachers: Optional[list[str]] = None, force: bool = False,
          progress: bool = True, weights: Optional[list[float]] = None) -> dict:
    """The teacher (or an ensemble of ``teachers``, ``weights`` one per teacher) labels every unlabeled image
    with Ray Data; the summary."""
    return execute(LABEL, StepContext(run, cfg, g, force, progress, {"teachers": teachers, "weights": weights}))


def select(run: "RunDir", cfg: "ExperimentConfig", g: int, force: bool = False) -> dict:
    """Filter and balance generation ``g``'s labels into ``selected/``; the summary."""
    return execute(SELECT, StepContext(run, cfg, g, force))


def train_student(run: "RunDir", cfg: "ExperimentConfig", g: int, force: bool = False, progress: bool = True) -> dict:
    """Train generation ``g``'s noised student on labeled + selected pseudo-labeled images; its metrics."""
    return execute(STUDENT, StepContext(run, cfg, g, force, progress))


def distill(run: "RunDir", cfg: "ExperimentConfig", force: bool = False, progress: bool = True) -> dict:
    """Train one student from ``distill.teacher`` with ``distill.method``; its metrics."""
    return execute(DISTILL_STEP, StepContext(run, cfg, 0, force, progress))


def evaluate_generation(run: "RunDir", cfg: "ExperimentConfig", g: int, force: bool = False) -> dict:
    """Gather generation ``g``'s figures into ``gen-g/metrics.json``; those figures."""
    return execute(EVALUATE, StepContext(run, cfg, g, force))


def promote(run: "RunDir", g: int, cfg: Optional["ExperimentConfig"] = None) -> dict:
    """Decide (once) which model teaches generation ``g + 1``; the decision record."""
    return execute(PROMOTE, StepContext(run, cfg, g))
