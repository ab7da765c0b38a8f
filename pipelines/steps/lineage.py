"""Which model teaches which generation: the checkpoint that labels generation ``g`` (with the command
that makes it when it is missing), how a checkpoint of the run is named, and why it was chosen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from noisystudent.errors import UserError

from .names import generation_of

if TYPE_CHECKING:
    from pipelines.state import RunDir


def first_missing(run: "RunDir", g: int):
    """The first :class:`~.base.Step` of generation ``g`` that is not done (the teacher at 0), None when all are."""
    from .catalog import steps_for

    return next((s for s in steps_for(g) if not run.is_done(s.key(g))), None)


def _model_step(g: int):
    from .catalog import STUDENT, TEACHER_STEP

    return TEACHER_STEP if g == 0 else STUDENT


def teacher_checkpoint(run: "RunDir", g: int) -> Path:
    """The checkpoint that labels generation ``g``: the promoted model of generation ``g - 1``.

    Raises :class:`UserError` when it does not exist yet, naming the missing model and the command that
    makes it (the next unfinished step, and ``noisystudent run`` for every missing step at once)."""
    ckpt = run.teacher_of(g)
    if ckpt.is_file():
        return ckpt
    prev = g - 1
    who = _model_step(prev)
    if run.is_done(who.key(prev)):
        raise UserError(f"generation {prev}'s {who.name} is recorded as done but its checkpoint {ckpt} is missing; "
                        f"train it again with `{who.command_for(run, prev)} --force`")
    # the earliest generation whose model is missing: every later one needs it
    first = next(h for h in range(prev + 1) if not run.is_done(_model_step(h).key(h)))
    nxt = (first_missing(run, first) or _model_step(first)).command_for(run, first)
    if first == prev:
        how = f"its next step is `{nxt}`"
    else:
        how = f"the run has models up to generation {first - 1}; the next step is `{nxt}`"
    all_at_once = f"noisystudent run {run.config_path} --run-dir {run.root} --generations {prev}"
    raise UserError(f"generation {prev} has no {who.name} yet ({ckpt} is missing) to label generation {g}; {how}, "
                    f"or make every missing step up to generation {prev} with `{all_at_once}`")


def model_name(run: "RunDir", ckpt: Path) -> tuple[Optional[int], str]:
    """``(generation, "generation G teacher|student")`` of a checkpoint in the run, else ``(None, path)``."""
    try:
        rel = Path(ckpt).resolve().relative_to(run.root.resolve())
    except ValueError:
        return None, str(ckpt)
    g = generation_of(rel.parts[0])
    if g is not None and len(rel.parts) > 2:
        return g, f"generation {g} {rel.parts[1]}"
    return None, str(rel)


def taught_by(run: "RunDir", g: int) -> dict:
    """Which model taught generation ``g`` and why: ``taught_by`` (``gen-K/teacher|student``),
    ``taught_by_generation`` K and ``taught_by_reason`` (the promotion decision of ``g - 1``)."""
    ckpt = run.teacher_of(g)
    k, _ = model_name(run, ckpt)
    rel = str(ckpt.parent.relative_to(run.root)) if k is not None else str(ckpt)
    if g == 1:
        why = "the generation 0 teacher, trained on the labeled images"
    else:
        rec = run.state().get("promotions", {}).get(str(g - 1))
        why = rec["reason"] if rec else f"the student of generation {g - 1} (promoted before decisions were recorded)"
    return {"taught_by": rel, "taught_by_generation": k, "taught_by_reason": why}


def promotion_fields(rec: Optional[dict]) -> dict:
    """The promotion decision ``rec`` as the fields a generation's metrics carry (empty without one)."""
    if not rec:
        return {}
    return {"promoted": rec["promoted"], "promotion_policy": rec["policy"], "promotion_signal": rec["signal"],
            "promotion_reason": rec["reason"]}


def warn(message: str, category) -> None:
    import warnings

    warnings.warn(message, category, stacklevel=3)


