"""``noisystudent study``: a grid of config overrides run as Ray Tune trials, and its status."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipelines.runlock import writes_run

from .common import address_option, json_option, quiet_option, user_errors


class _StudyGroup(click.Group):
    """``noisystudent study STUDY.yaml ...`` runs a study; ``noisystudent study status DIR`` shows one."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_StudyGroup)
def study() -> None:
    """Studies: a grid of config overrides run as Ray Tune trials (STUDY.yaml --study-dir DIR), or `status DIR`."""


@study.command("run")
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--study-dir", required=True, type=click.Path(file_okay=False), help="The study folder (resumable: run again to continue).")
@click.option("--max-trials", type=click.IntRange(1), default=None, help="Run at most this many unfinished trials now.")
@click.option("--teacher", default=None, type=click.Path(),
              help="Teacher checkpoint every trial distills from (overrides the study's teacher:; no teacher stage).")
@click.option("--only", "only", multiple=True, metavar="FIELD=VALUE",
              help="Run only the trials with this grid value (repeatable; e.g. data.label_noise.rate=0.2 for one "
                   "column of a large study first); the others stay pending for a later run.")
@address_option
@quiet_option
@user_errors
@writes_run("study_dir")
def study_run(study_file, study_dir, max_trials, teacher, only, ray_address, quiet):
    """Run (or resume) the study STUDY_FILE in DIR and print its summary over seeds."""
    from pipelines.study import format_summary, parse_only, run_study, summary

    out = run_study(study_file, study_dir, ray_address=ray_address, max_trials=max_trials, quiet=quiet,
                    teacher=teacher, only=parse_only(only))
    click.echo(format_summary(summary(out["rows"])))
    for tid, err in out["errors"].items():
        click.echo(f"failed: {tid}: {err}", err=True)
    click.echo(f"-> {Path(study_dir) / 'results.parquet'}")


@study.command("status")
@click.argument("study_dir", type=click.Path(file_okay=False))
@json_option
@user_errors
def study_status(study_dir, as_json):
    """Progress of a study folder: trials done, pending, failed (with their error), and the summary."""
    from pipelines.study import format_summary, status, summary

    st = status(study_dir)
    if as_json:
        click.echo(json.dumps(st, indent=1, default=str))
        return
    click.echo(f"{st['trials']} trials: " + ", ".join(f"{n} {k}" for k, n in sorted(st["counts"].items())))
    for tid, err in st["failed"].items():
        click.echo(f"failed: {tid}: {err}")
    click.echo(format_summary(summary(st["rows"])))


COMMANDS = (study,)
