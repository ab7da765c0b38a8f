"""``noisystudent labels``: look into pseudo-label Parquet sets."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from .common import user_errors


@click.group()
def labels() -> None:
    """Look into pseudo-label Parquet sets."""


@labels.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--rows", type=click.IntRange(0), default=5, show_default=True, help="Sample rows to show.")
@user_errors
def labels_inspect(path, rows):
    """Row count, schema, metadata, class and confidence histograms and a few rows of PATH."""
    from pseudo_labels.inspect import inspect_labels

    if not Path(path).exists():
        raise UserError(f"path not found: {path}")
    click.echo(inspect_labels(path, rows=rows))


COMMANDS = (labels,)
