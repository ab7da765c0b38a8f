"""The training engine: one job (a supervised teacher, or a noised student on labeled + pseudo-labeled
images, or a distillation method), split by concern.

The job is the same for both roles so that a generation's student differs from its teacher only in
what the config says (model, noise, data), never in the loop. It knows nothing about generations or
Ray: :class:`TrainHooks` lets a caller (``pipelines.train_ray``) wrap the model and loaders for DDP and
report checkpoints to Ray Train, while the default hooks run in-process.

=============  ==========================================================================
``job``        the inputs: :class:`TrainJob`, :class:`PseudoLabeledSet`, :class:`TrainHooks`
``budget``     the step budget: :class:`StepPlan`, :func:`plan_steps`, the too-few-steps warning
``optim``      device, seeding, optimizer, schedule, mixed precision, EMA
``loaders``    transforms and loaders of the labeled and pseudo-labeled images
``step``       the student + method module and one optimizer step
``epoch``      one epoch of steps and its history row
``state``      :class:`TrainState` (``state_dict``/``load_state_dict``): what ``last.pt`` holds
``setup``      building a job's parts from its inputs
``evaluation`` scoring a model on the job's validation and test sets
``export``     final evaluation and the artifacts (``model.pt`` last)
``faults``     fault injection for recovery tests (a ``before_epoch`` hook)
``run``        :func:`run_training`: the job from start to finish
=============  ==========================================================================
"""

from .budget import StepPlan, budget_warning, plan_steps, warn_budget
from .faults import FailOnce
from .job import PseudoLabeledSet, StudentMix, TrainHooks, TrainJob, spec_for
from .loaders import make_loader
from .optim import resolve_amp, resolve_device, seed_everything
from .run import run_training
from .setup import Training, init_weights, setup
from .state import TrainState
from .step import StudentStep

__all__ = [
    "FailOnce",
    "PseudoLabeledSet",
    "StepPlan",
    "StudentMix",
    "StudentStep",
    "TrainHooks",
    "TrainJob",
    "TrainState",
    "Training",
    "budget_warning",
    "init_weights",
    "make_loader",
    "plan_steps",
    "resolve_amp",
    "resolve_device",
    "run_training",
    "seed_everything",
    "setup",
    "spec_for",
    "warn_budget",
]
