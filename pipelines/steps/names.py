"""Step names: the one place that knows how a step and a generation folder are spelled.

The ledger (``state.json``'s ``steps``) names a generation's steps ``gen-G/<step>`` (``gen-0/teacher``,
``gen-3/label``) and run-level ones by themselves (``baselines/oracle``, ``distill/student``); a
generation's artifacts live in ``gen-G/``. Everything that builds or reads such a name goes through
these functions, so no caller slices strings.
"""

from __future__ import annotations

from typing import Optional

GEN_PREFIX = "gen-"
TEACHER = "teacher"
# a generation's steps, in the order they run (what ``status`` counts and the report sorts by)
GENERATION_STEPS = ("label", "select", "student", "evaluate", "promote")
BASELINE_ROLES = ("supervised", "oracle")
DISTILL = "distill/student"


def gen_folder(g: int) -> str:
    """``gen-G``: the folder of generation ``g``'s artifacts."""
    return f"{GEN_PREFIX}{g}"


def step_name(g: int, step: str) -> str:
    """``gen-G/<step>``: the ledger name of a generation's step."""
    return f"{gen_folder(g)}/{step}"


def baseline_step(role: str) -> str:
    """``baselines/<role>``: the ledger name of a supervised-only reference."""
    return f"baselines/{role}"


def generation_of(name: str) -> Optional[int]:
    """The generation of a ledger name (``gen-3/label`` -> 3) or a folder name (``gen-3`` -> 3); None for
    anything else (``baselines/oracle``, ``gen-x``)."""
    head = name.split("/", 1)[0]
    digits = head[len(GEN_PREFIX):] if head.startswith(GEN_PREFIX) else ""
    return int(digits) if digits.isdigit() else None


def split_step(name: str) -> tuple[Optional[int], str]:
    """``(generation, step)`` of a ledger name: ``gen-3/label`` -> ``(3, "label")``; a run-level name keeps
    its head: ``baselines/oracle`` -> ``(None, "oracle")``."""
    _, _, tail = name.partition("/")
    return generation_of(name), tail


def steps_of(g: int) -> tuple[str, ...]:
    """The steps generation ``g`` runs: the teacher at 0, :data:`GENERATION_STEPS` after."""
    return (TEACHER,) if g == 0 else GENERATION_STEPS


def step_order(name: str) -> tuple:
    """A sort key that puts ledger names in run order: generations by number, each's steps in the order
    they run, then run-level steps by name."""
    g, step = split_step(name)
    if g is None:
        return (1, 0, 0, name)
    order = (TEACHER,) + GENERATION_STEPS
    return (0, g, order.index(step) if step in order else len(order), name)
