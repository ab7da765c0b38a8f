"""The steps of a run, each reading finished artifacts of the step before and writing its own.

teacher (gen 0) -> label (gen g) -> select (gen g) -> student (gen g) -> evaluate (gen g) -> promote (gen g)

A step is a :class:`~.base.Step` value (name, the steps it needs, where it writes, how it runs);
:func:`~.base.execute` alone does the done-check, the "run X first" message, the timing and the ledger
record. A finished step returns its record without work unless forced; an unfinished one resumes from
what it left (labeling shards, the training job's ``last.pt``).

::

    names.py     how steps and generation folders are spelled (the only place)
    base.py      Step, StepContext, Outcome, execute
    catalog.py   GENERATION (the loop's, status's and the CLI's one tuple) and a function per step
    training.py  teacher, student, baselines, distill       labeling.py  label, select, the selection as a set
    outcome.py   evaluate, promote                          lineage.py   which model teaches which generation
    data.py      the run's data bundle, once per process

The names are imported eagerly (:mod:`pipelines.state` uses them); everything else on first use, so the
ledger can import this package without importing the steps that use the ledger.
"""

from __future__ import annotations

import importlib
from typing import Any

from .names import (BASELINE_ROLES, DISTILL, GEN_PREFIX, GENERATION_STEPS, TEACHER, baseline_step, gen_folder,
                    generation_of, split_step, step_name, step_order, steps_of)

_LAZY = {
    "base": ("Outcome", "Step", "StepContext", "execute", "log"),
    "catalog": ("GENERATION", "distill", "evaluate_generation", "label", "promote", "select", "steps_for",
                "train_baseline", "train_student", "train_teacher"),
    "training": ("DISTILL_STEP", "STUDENT", "TEACHER_STEP", "baseline"),
    "labeling": ("LABEL", "SELECT", "pseudo_set", "selected_source"),
    "outcome": ("EVALUATE", "PROMOTE"),
    "lineage": ("first_missing", "model_name", "promotion_fields", "taught_by", "teacher_checkpoint"),
    "data": ("load_data", "record_conditions"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


__all__ = ["BASELINE_ROLES", "DISTILL", "GEN_PREFIX", "GENERATION_STEPS", "TEACHER", "baseline_step", "gen_folder",
           "generation_of", "split_step", "step_name", "step_order", "steps_of", *sorted(_HOME)]
