"""Whole runs: ``run`` (the loop end to end), ``distill`` (one student from a teacher), and the two
readers of a run folder, ``status`` and ``report``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import experiment_options, json_option, tracking_choice, user_errors
from .experiment import load_experiment


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False))
@click.option("--generations", "-n", type=click.IntRange(0), default=None, help="Student generations (default: the config's).")
@click.option("--baselines", is_flag=True, help="Also train the supervised baseline and the all-labels oracle.")
@click.option("--tracking", type=tracking_choice, default="tensorboard", show_default=True,
              help="Log metrics per generation to TensorBoard (run_dir/tensorboard) or a local MLflow store (run_dir/mlruns).")
@experiment_options
@user_errors
def run(config, run_dir, generations, baselines, tracking, sets, ray_address, workers, gpus_per_worker, quiet):
    """Run (or resume) Noisy Student end to end: teacher, then N generations of label/select/student."""
    from pipelines.loop import run_all

    cfg = load_experiment(config, sets, {"student.generations": generations}, ray_address=ray_address, workers=workers,
                          gpus_per_worker=gpus_per_worker)
    rows = run_all(cfg, run_dir, progress=not quiet, baselines=baselines, tracking=None if tracking == "none" else tracking)
    for r in rows:
        click.echo(f"gen {r['generation']}: {r['model']} test accuracy {r['test_acc']:.4f}")


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="The run folder (resumable).")
@click.option("--teacher", default=None, type=click.Path(), help="Teacher checkpoint (overrides distill.teacher).")
@click.option("--method", default=None, help="Distillation method name (overrides distill.method; see `noisystudent methods`).")
@click.option("--force", is_flag=True, help="Train again even if finished.")
@experiment_options
@user_errors
def distill(config, run_dir, teacher, method, force, sets, ray_address, workers, gpus_per_worker, quiet):
    """Train one student (student.ladder[0], student.train) from a teacher on the labeled images."""
    from pipelines import steps
    from pipelines.state import RunDir

    fields = {"distill.teacher": teacher, "distill.method": {"name": method} if method is not None else None}
    cfg = load_experiment(config, sets, fields, ray_address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    folder = RunDir(run_dir)
    cfg = folder.freeze_config(cfg)
    m = steps.distill(folder, cfg, force=force, progress=not quiet)
    fid = m.get("test_fidelity")
    click.echo(f"{m['model']} ({cfg.distill.method['name']}): test accuracy {m['test_acc']:.4f}"
               + (f", fidelity to the teacher {fid:.4f}" if fid is not None else "")
               + f" -> {folder.distill_dir() / 'model.pt'}")


def _status_table(rows: list[dict]) -> list[str]:
    """The lines of ``status``'s table: accuracies at 4 decimals, whole seconds, '-' for a missing value."""

    def f(v, fmt=".4f"):
        return "-" if v is None else (format(v, fmt) if isinstance(v, float) else str(v))

    head = ["gen", "model", "steps", "val_acc", "test_acc", "pl_acc", "pl_acc_sel", "taught_by", "promoted", "seconds"]
    table = [[f(r["generation"]), r["model"], r["steps_done"], f(r.get("val_acc")), f(r["test_acc"]), f(r["pseudo_label_acc"]),
              f(r["pseudo_label_acc_selected"]), f(r.get("taught_by")), f(r.get("promoted")), f(r["seconds"], ",.0f")]
             for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head] + table]


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@json_option
@user_errors
def status(run_dir, as_json):
    """A table of RUN_DIR: generation, model, steps done, test and pseudo-label accuracy, time."""
    from pipelines.loop import status_rows
    from pipelines.state import RunDir

    rows = status_rows(RunDir(run_dir))
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for line in _status_table(rows):
        click.echo(line)
    # what each promotion decision rested on (validation images, or none); test accuracy never decides
    decisions = [(r["generation"], r["decision"]) for r in rows if r.get("decision")]
    if decisions:
        click.echo("")
    for g, why in decisions:
        click.echo(f"gen {g} promotion: {why}")
    stopped = RunDir(run_dir).state().get("stopped")
    if stopped:
        click.echo(f"stopped before gen {stopped['generation']}: {stopped['reason']}")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--tracking", type=tracking_choice, default="tensorboard", show_default=True,
              help="Also log the run's metrics to TensorBoard event files (run_dir/tensorboard) or a local MLflow store (run_dir/mlruns).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write the report here instead of RUN_DIR/report.")
@click.option("--no-data", is_flag=True, help="Leave out sample images and calibration (for runs whose images are not on this machine).")
@user_errors
def report(run_dir, tracking, out, no_data):
    """Write RUN_DIR/report/index.html (self-contained, opens offline) and PNG plots."""
    from pipelines.report import build_report
    from pipelines.state import RunDir

    RunDir(run_dir).load_config()  # a clear error for a folder that is not a run
    path = build_report(run_dir, out_dir=out, with_data=not no_data)
    if tracking != "none":
        from pipelines.tracking import log_run

        log_run(run_dir, backend=tracking)
    click.echo(f"report: {path}")


COMMANDS = (run, distill, status, report)
