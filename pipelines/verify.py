"""Checking a run's artifacts against what ``state.json`` recorded when their step finished.

Every finished step records the SHA-256 and size of its artifacts (:meth:`RunDir.mark_done`). A file
damaged afterwards (a truncated copy, a flipped byte, a deleted ``_SUCCESS``) would otherwise surface as
a raw pyarrow or torch traceback deep inside the next step. Before a step reads an earlier step's
artifacts, :func:`check_inputs` compares them: existence and size first (free), then the hash (a few
MB per second of artifacts; checkpoints and shards are what a later step trusts blindly). A mismatch
is one :class:`DamagedArtifactError` line naming the file, the step that made it and the command that
rebuilds it. :func:`verify_run` checks every step of a run (``noisystudent doctor RUN_DIR``).

Steps whose recorded files are legitimately rewritten later are not checked: ``evaluate`` (promotion
adds its decision to ``gen-G/metrics.json``) and ``promote`` (its artifact is another step's checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from noisystudent.errors import UserError
from noisystudent.io import TMP_PREFIX, sha256_file

from .state import RunDir
from .steps.names import step_name

UNCHECKED_STEPS = ("evaluate", "promote")


class DamagedArtifactError(UserError):
    """An artifact of a finished step differs from what its step recorded."""


def folder_artifacts(folder: Path) -> list[Path]:
    """Every file of a step's output folder (shards, summary, ``_SUCCESS``), temporaries left out: what
    the step records so a later damage to any of them is found."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(TMP_PREFIX))


def rebuild_command(run: RunDir, step: str) -> str:
    """The command that makes ``step``'s artifacts again."""
    head, _, kind = step.partition("/")
    if step == step_name(0, "teacher"):
        return f"noisystudent teacher {run.config_path} --run-dir {run.root} --force"
    if head.startswith("gen-") and head[4:].isdigit():
        cmd = kind if kind in ("label", "select") else "student"
        return f"noisystudent {cmd} {run.root} --generation {head[4:]} --force"
    if head == "baselines":
        return f"noisystudent teacher {run.config_path} --run-dir {run.root} --role {kind} --force"
    if step == "distill/student":
        return f"noisystudent distill {run.config_path} --run-dir {run.root} --force"
    return f"the command that made {step} with --force"


def damage(run: RunDir, step: str, hashes: bool = True) -> list[str]:
    """What is wrong with finished ``step``'s recorded artifacts (one sentence each); empty when intact
    or when the step is not recorded as done."""
    info = run.step_info(step)
    if not info:
        return []
    sizes = info.get("sizes", {})
    out = []
    for rel, digest in sorted(info.get("artifacts", {}).items()):
        path = run.root / rel
        if not path.is_file():
            out.append(f"{path} is missing")
            continue
        size = path.stat().st_size
        if rel in sizes and size != sizes[rel]:
            out.append(f"{path} is damaged ({size:,} bytes, {sizes[rel]:,} when written)")
        elif hashes and sha256_file(path) != digest:
            out.append(f"{path} is damaged (its SHA-256 differs from the one recorded when it was written)")
    return out


def check_step(run: RunDir, step: str, hashes: bool = True) -> None:
    """Raise :class:`DamagedArtifactError` naming the first damaged file of ``step``, the step and the fix."""
    problems = damage(run, step, hashes)
    if problems:
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise DamagedArtifactError(f"{problems[0]}{more}; it was made by step {step}; rebuild it with "
                                   f"`{rebuild_command(run, step)}`, then run this command again")


def _step_of(run: RunDir, path: Path) -> Optional[str]:
    """The finished step that recorded ``path`` as an artifact (a promoted checkpoint: its training step)."""
    try:
        rel = os.path.relpath(Path(path).resolve(), run.root.resolve())
    except ValueError:
        return None
    for step, info in run.state().get("steps", {}).items():
        if step.rpartition("/")[2] not in UNCHECKED_STEPS and rel in info.get("artifacts", {}):
            return step
    return None


def check_inputs(run: RunDir, g: int, step: str) -> None:
    """Before ``step`` of generation ``g`` runs, check the artifacts it reads: the labeling teacher's
    checkpoint (label, student), the labels (select), the selection (student)."""
    needs: list[str] = []
    if step in ("label", "student"):
        made_by = _step_of(run, run.teacher_of(g))
        if made_by:
            needs.append(made_by)
    if step == "select":
        needs.append(step_name(g, "label"))
    if step == "student":
        needs.append(step_name(g, "select"))
    for s in needs:
        check_step(run, s)


def verify_run(run: RunDir) -> list[tuple[str, str, str]]:
    """``(step, problem, rebuild command)`` for every damaged artifact of every finished step."""
    out = []
    for step in run.state().get("steps", {}):
        if step.rpartition("/")[2] in UNCHECKED_STEPS:
            continue
        out += [(step, p, rebuild_command(run, step)) for p in damage(run, step)]
    return out


def report_run(run_dir: str | os.PathLike, echo) -> int:
    """``noisystudent doctor RUN_DIR``: print one line per damaged artifact (or that all are intact) with
    ``echo``; return the exit code (2 when something is damaged)."""
    run = RunDir(run_dir)
    run.load_config()  # a clear error for a folder that is not a run
    steps = run.state().get("steps", {})
    problems = verify_run(run)
    for step, problem, cmd in problems:
        echo(f"damaged: {problem}; made by step {step}; rebuild with `{cmd}`")
    if not problems:
        n = sum(len(i.get("artifacts", {})) for s, i in steps.items() if s.rpartition("/")[2] not in UNCHECKED_STEPS)
        echo(f"run {run.root}: {len(steps)} finished steps, {n} recorded artifacts, all intact")
    return 2 if problems else 0
