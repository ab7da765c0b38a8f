"""Distillation methods: one small registered file each, called by the training engine.

A method says what it needs (no teacher, offline pseudo-labels from Parquet, or an online teacher that
runs on the very batch the student sees; which stages of the student and teacher it taps; any extra
trainable modules) and computes its loss from the student's and teacher's outputs. The engine
(:mod:`noisystudent.engine`) owns everything else: loaders, optimizer (extra modules included),
checkpoints and resume, DDP, autocast, logging. It knows no loss by name.

Add a method: write ``methods/<name>.py`` with a :class:`DistillMethod` subclass decorated with
:func:`register_method`; the package finds it in its folder (no import line to add).
"""

from noisystudent.distill._registry import (
    create_method,
    get_method,
    list_methods,
    method_defaults,
    register_method,
    resolve_method_config,
)
from noisystudent.distill.base import Batch, DistillMethod, Outputs, TeacherKind
from noisystudent.distill import methods  # noqa: F401,E402  (registration)

__all__ = [
    "Batch",
    "DistillMethod",
    "Outputs",
    "TeacherKind",
    "create_method",
    "get_method",
    "list_methods",
    "method_defaults",
    "register_method",
    "resolve_method_config",
]
