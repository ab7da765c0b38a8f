"""A pipeline step as one value, and the one function that runs any step.

A :class:`Step` says what it is called, which steps of its generation it needs, where it writes, how a
finished one is read back and how it runs. :func:`execute` alone owns the step's lifecycle: the
done-check (a finished step returns its record without work unless forced), the "run X first" message
for a missing input, the timing, and the ledger record (:meth:`pipelines.state.RunDir.mark_done`) written
after every artifact exists. A step's ``run`` only does its work and says what it made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from noisystudent.errors import UserError
from noisystudent.io import read_json

from .names import step_name

if TYPE_CHECKING:
    from pipelines.config import ExperimentConfig
    from pipelines.state import RunDir


def log(msg: str) -> None:
    """A progress line that does not break tqdm's bars."""
    from tqdm.auto import tqdm

    tqdm.write(msg)


@dataclass
class StepContext:
    """What a step runs on: the run folder, its config, the generation (0 for run-level steps), whether to
    redo a finished step, progress bars, and the options only some steps take (label's ``teachers``, a
    baseline's ``epochs``)."""

    run: "RunDir"
    cfg: "ExperimentConfig"
    g: int = 0
    force: bool = False
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a step's ``run`` made: the result its caller gets, the artifacts whose checksums the ledger
    keeps, and extra ledger fields (a model's test accuracy, a labeling job's row count)."""

    result: dict
    artifacts: list[Path] = field(default_factory=list)
    ledger: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One step of a run.

    ``name``: the ledger name within a generation (``label`` -> ``gen-G/label``), or the whole name of a
    run-level step (``baselines/oracle``; ``per_generation`` False). ``writes(run, g)``: its folder.
    ``record``: the file in that folder a finished step returns (``finished`` instead, when the record
    lives elsewhere). ``needs``: steps of the same generation that must be done first; ``missing`` is how
    the "run X first" message names this step's output, ``command`` the CLI command that makes it
    (``{root}``, ``{config}`` and ``{g}`` filled in)."""

    name: str
    run: Callable[[StepContext], Outcome]
    writes: Callable[["RunDir", int], Path]
    record: Optional[str] = None
    needs: tuple["Step", ...] = ()
    missing: str = ""
    command: str = ""
    per_generation: bool = True
    finished: Optional[Callable[["RunDir", int], dict]] = None

    def key(self, g: int) -> str:
        """The step's name in the ledger for generation ``g``."""
        return step_name(g, self.name) if self.per_generation else self.name

    def command_for(self, run: "RunDir", g: int) -> str:
        """The CLI command that runs this step of generation ``g`` of ``run``."""
        return self.command.format(root=run.root, config=run.config_path, g=g)

    def result_of(self, run: "RunDir", g: int) -> dict:
        """The result of the finished step, read back from what it wrote."""
        if self.finished is not None:
            return self.finished(run, g)
        return read_json(self.writes(run, g) / self.record)


def execute(step: Step, ctx: StepContext) -> dict:
    """Run ``step`` for ``ctx``: a finished step returns its record (unless ``ctx.force``), a step whose
    inputs are missing is refused naming the command that makes them, and a run is timed and recorded in
    the ledger after its artifacts exist."""
    run, g = ctx.run, ctx.g
    key = step.key(g)
    if run.is_done(key) and not ctx.force:
        return step.result_of(run, g)
    for need in step.needs:
        if not run.is_done(need.key(g)):
            raise UserError(f"generation {g} has no {need.missing}; run `{need.command_for(run, g)}` first")
    t0 = time.perf_counter()
    out = step.run(ctx)
    run.mark_done(key, time.perf_counter() - t0, out.artifacts, **out.ledger)
    return out.result
