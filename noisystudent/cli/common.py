"""What every command shares: the ``UserError`` -> exit 2 wrapper and the options several commands take.

An option defined once here reads the same in every command's ``--help``; the flags that change the
experiment (``--set``, the Ray flags) become config overrides only through :mod:`.experiment`.
"""

from __future__ import annotations

import functools
import sys

import click

from ..errors import UserError


def user_errors(fn):
    """Turn UserError into ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Override a config field, e.g. --set teacher_train.epochs=2 (repeatable). Flags win over the file.")
address_option = click.option("--ray-address", default=None, help="Connect to this Ray cluster instead of starting a local one.")
workers_option = click.option("--workers", type=click.IntRange(0), default=None,
                              help="Ray Train workers for training (0: train in this process).")
gpus_option = click.option("--gpus-per-worker", type=click.FloatRange(0), default=None, help="GPUs per Ray Train worker.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
tracking_choice = click.Choice(["none", "tensorboard", "mlflow"])


def experiment_options(fn):
    """``--set``, the Ray flags and ``--quiet``, in that order: what every command that loads an
    experiment (or anomaly) file takes. The flags reach the config through :mod:`.experiment` only."""
    for option in reversed((set_option, address_option, workers_option, gpus_option, quiet_option)):
        fn = option(fn)
    return fn
