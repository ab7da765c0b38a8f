"""The ``noisystudent`` command line: the ``main`` group and the commands of each file beside it.

One click group (or set of related commands) a file: ``generation`` (teacher, label, select, student),
``runs`` (run, distill, status, report), ``checkpoint`` (evaluate, predict), ``labels``, ``anomaly``,
``study``, ``info`` (methods, doctor). Every command a user can get wrong exits with code 2 and one line
naming the field, flag or file (``UserError``); configs and flags meet only in :mod:`.experiment`.
Pipelines are imported inside the commands so ``--help`` stays fast; the CLI is the one part of
``noisystudent`` that may import ``pipelines``, ``pseudo_labels`` and Ray.
"""

from __future__ import annotations

import os

import click

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="noisystudent")
def main() -> None:
    """Noisy Student self-training and knowledge distillation of image classifiers, on Ray."""
    from ..errors import show_warnings_as_lines

    show_warnings_as_lines()  # a too-small budget, no pseudo-label kept, a kept teacher: one `warning:` line each


def _register() -> None:
    from . import anomaly, checkpoint, generation, info, labels, runs, study

    for module in (generation, runs, checkpoint, labels, anomaly, study, info):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

__all__ = ["main"]
