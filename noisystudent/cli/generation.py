"""One generation's steps, each its own command: ``teacher`` (generation 0 or a baseline), ``label``,
``select`` and ``student`` (which also evaluates and promotes). ``noisystudent run`` does them all."""

from __future__ import annotations

import json

import click

from .common import address_option, experiment_options, gpus_option, quiet_option, user_errors, workers_option
from .experiment import load_experiment, run_experiment


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="The run folder.")
@click.option("--role", type=click.Choice(["teacher", "supervised", "oracle"]), default="teacher", show_default=True,
              help="teacher: generation 0 of the run; supervised / oracle: a baseline in baselines/<role>.")
@click.option("--labels-per-class", type=click.IntRange(1), default=None, help="Labeled images per class (oracle: all).")
@click.option("--force", is_flag=True, help="Train again even if finished.")
@experiment_options
@user_errors
def teacher(config, run_dir, role, labels_per_class, force, sets, ray_address, workers, gpus_per_worker, quiet):
    """Train the generation-0 teacher (or a supervised baseline) from CONFIG."""
    from pipelines import steps
    from pipelines.state import RunDir

    cfg = load_experiment(config, sets, ray_address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    run = RunDir(run_dir)
    cfg = run.freeze_config(cfg)
    if role == "teacher":
        if labels_per_class is not None:
            raise click.BadParameter("only for --role supervised/oracle; set data.labels_per_class in the config for the teacher",
                                     param_hint="--labels-per-class")
        m = steps.train_teacher(run, cfg, force=force, progress=not quiet)
        where = run.teacher_dir()
    else:
        from ..config import ALL_LABELS_PER_CLASS

        lpc = labels_per_class or (ALL_LABELS_PER_CLASS.get(cfg.data.kind) if role == "oracle" else None)
        m = steps.train_baseline(run, cfg, role, lpc, progress=not quiet, force=force,
                                 epochs=cfg.oracle_epochs if role == "oracle" else None)
        where = run.baseline_dir(role)
    click.echo(f"{role}: test accuracy {m.get('test_acc', float('nan')):.4f} -> {where / 'model.pt'}")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--generation", "-g", type=click.IntRange(1), required=True, help="Generation to label for (>= 1).")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(), help="Teacher checkpoint(s); several = an ensemble. Default: the promoted model of generation G-1.")
@click.option("--weights", default=None, help="Ensemble weights, one per --teacher, comma-separated (0.7,0.3); normalised to sum 1. Default: equal.")
@click.option("--force", is_flag=True, help="Label again even if finished.")
@address_option
@quiet_option
@user_errors
def label(run_dir, generation, teachers, weights, force, ray_address, quiet):
    """Pseudo-label the unlabeled images of RUN_DIR with Ray workers into gen-G/labels/ (Parquet)."""
    from pipelines import steps
    from pipelines.state import RunDir

    run = RunDir(run_dir)
    cfg = run_experiment(run, ray_address=ray_address)
    if weights is not None:
        try:
            weights = [float(w) for w in weights.split(",")]
        except ValueError:
            raise click.BadParameter(f"must be numbers separated by commas, got {weights!r}", param_hint="--weights") from None
    s = steps.label(run, cfg, generation, teachers=list(teachers) or None, force=force, progress=not quiet,
                    weights=weights)
    click.echo(f"labeled {s.get('rows')} images ({s.get('rejected')} rejected) -> {run.labels_dir(generation)}")


@click.command("select")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--generation", "-g", type=click.IntRange(1), required=True)
@click.option("--force", is_flag=True)
@user_errors
def select_cmd(run_dir, generation, force):
    """Filter by confidence and balance classes: gen-G/labels -> gen-G/selected."""
    from pipelines import steps
    from pipelines.state import RunDir

    run = RunDir(run_dir)
    s = steps.select(run, run.load_config(), generation, force=force)
    click.echo(json.dumps({k: v for k, v in s.items() if not isinstance(v, (dict, list))}, indent=1))


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--generation", "-g", type=click.IntRange(1), required=True)
@click.option("--force", is_flag=True)
@address_option
@workers_option
@gpus_option
@quiet_option
@user_errors
def student(run_dir, generation, force, ray_address, workers, gpus_per_worker, quiet):
    """Train generation G's noised student on labeled + selected pseudo-labeled images."""
    from pipelines import steps
    from pipelines.state import RunDir

    run = RunDir(run_dir)
    cfg = run_experiment(run, ray_address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    m = steps.train_student(run, cfg, generation, force=force, progress=not quiet)
    steps.evaluate_generation(run, cfg, generation, force=True)
    rec = steps.promote(run, generation, cfg)
    click.echo(f"student gen {generation}: test accuracy {m.get('test_acc', float('nan')):.4f}")
    if rec:
        click.echo(f"promotion ({rec['policy']}): {rec['reason']}")


COMMANDS = (teacher, label, select_cmd, student)
