"""Deprecated home of the training engine, kept one release so that branches and scripts written
against it still import: the engine now lives in :mod:`noisystudent.engine`, split by concern.
Import from there; this module will be removed in the next release."""

from noisystudent.engine import (  # noqa: F401
    PseudoLabeledSet,
    StepPlan,
    StudentMix,
    StudentStep,
    TrainHooks,
    TrainJob,
    budget_warning,
    init_weights,
    plan_steps,
    resolve_amp,
    resolve_device,
    run_training,
    seed_everything,
    spec_for,
    warn_budget,
)
