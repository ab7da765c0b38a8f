"""The ``noisystudent`` command line.

Every command that a user can get wrong exits with code 2 and one line naming the field, flag or file
(``UserError``). Pipelines are imported lazily so ``--help`` stays fast and the core does not depend on Ray.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from pipelines.runlock import writes_run

from .errors import UserError

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def _user_errors(fn):
    """Turn UserError (also one wrapped by Ray, and a full disk) into ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except Exception as exc:  # a full disk or a user error inside Ray's wrappers: still one line, exit 2
            from .diskspace import find_user_error

            found = find_user_error(exc)
            if found is None:
                raise
            click.echo(f"error: {found}", err=True)
            sys.exit(2)

    return wrapper


def _parse_sets(values: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise click.BadParameter(f"value of {key} is not valid YAML: {raw!r}", param_hint="--set") from None
    return out


def _load(config: str, sets: tuple[str, ...] = (), **flags: Any):
    from pipelines.config import load_config

    overrides = _parse_sets(sets)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(config, overrides)


set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Override a config field, e.g. --set teacher_train.epochs=2 (repeatable). Flags win over the file.")
address_option = click.option("--ray-address", default=None, help="Connect to this Ray cluster instead of starting a local one.")
workers_option = click.option("--workers", type=click.IntRange(0), default=None,
                              help="Ray Train workers for training (0: train in this process).")
gpus_option = click.option("--gpus-per-worker", type=click.FloatRange(0), default=None, help="GPUs per Ray Train worker.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="noisystudent")
def main() -> None:
    """Noisy Student self-training and knowledge distillation of image classifiers, on Ray."""
    from .errors import show_warnings_as_lines

    show_warnings_as_lines()  # a too-small budget, no pseudo-label kept, a kept teacher: one `warning:` line each


# --------------------------------------------------------------------------------------------------
# one generation's steps


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="The run folder.")
@click.option("--role", type=click.Choice(["teacher", "supervised", "oracle"]), default="teacher", show_default=True,
              help="teacher: generation 0 of the run; supervised / oracle: a baseline in baselines/<role>.")
@click.option("--labels-per-class", type=click.IntRange(1), default=None, help="Labeled images per class (oracle: all).")
@click.option("--force", is_flag=True, help="Train again even if finished.")
@set_option
@address_option
@workers_option
@gpus_option
@quiet_option
@_user_errors
@writes_run("run_dir")
def teacher(config, run_dir, role, labels_per_class, force, sets, ray_address, workers, gpus_per_worker, quiet):
    """Train the generation-0 teacher (or a supervised baseline) from CONFIG."""
    from pipelines import steps
    from pipelines.state import RunDir

    cfg = _load(config, sets, **{"ray.address": ray_address, "ray.workers": workers, "ray.gpus_per_worker": gpus_per_worker})
    run = RunDir(run_dir)
    cfg = run.freeze_config(cfg)
    if role == "teacher":
        if labels_per_class is not None:
            raise click.BadParameter("only for --role supervised/oracle; set data.labels_per_class in the config for the teacher",
                                     param_hint="--labels-per-class")
        m = steps.train_teacher(run, cfg, force=force, progress=not quiet)
        where = run.teacher_dir()
    else:
        lpc = labels_per_class or (6000 if role == "oracle" and cfg.data.kind == "fashion_mnist" else None)
        m = steps.train_baseline(run, cfg, role, lpc, progress=not quiet, force=force,
                                 epochs=cfg.oracle_epochs if role == "oracle" else None)
        where = run.baseline_dir(role)
    click.echo(f"{role}: test accuracy {m.get('test_acc', float('nan')):.4f} -> {where / 'model.pt'}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--generation", "-g", type=click.IntRange(1), required=True, help="Generation to label for (>= 1).")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(), help="Teacher checkpoint(s); several = an ensemble. Default: the promoted model of generation G-1.")
@click.option("--force", is_flag=True, help="Label again even if finished.")
@address_option
@quiet_option
@_user_errors
@writes_run("run_dir")
def label(run_dir, generation, teachers, force, ray_address, quiet):
    """Pseudo-label the unlabeled images of RUN_DIR with Ray workers into gen-G/labels/ (Parquet)."""
    from pipelines import steps
    from pipelines.state import RunDir

    run = RunDir(run_dir)
    cfg = run.load_config()
    if ray_address:
        cfg.ray.address = ray_address
    s = steps.label(run, cfg, generation, teachers=list(teachers) or None, force=force, progress=not quiet)
    click.echo(f"labeled {s.get('rows')} images ({s.get('rejected')} rejected) -> {run.labels_dir(generation)}")


@main.command("select")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--generation", "-g", type=click.IntRange(1), required=True)
@click.option("--force", is_flag=True)
@_user_errors
@writes_run("run_dir")
def select_cmd(run_dir, generation, force):
    """Filter by confidence and balance classes: gen-G/labels -> gen-G/selected."""
    from pipelines import steps
    from pipelines.state import RunDir

    run = RunDir(run_dir)
    s = steps.select(run, run.load_config(), generation, force=force)
    click.echo(json.dumps({k: v for k, v in s.items() if not isinstance(v, (dict, list))}, indent=1))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--generation", "-g", type=click.IntRange(1), required=True)
@click.option("--force", is_flag=True)
@address_option
@workers_option
@gpus_option
@quiet_option
@_user_errors
@writes_run("run_dir")
def student(run_dir, generation, force, ray_address, workers, gpus_per_worker, quiet):
    """Train generation G's noised student on labeled + selected pseudo-labeled images."""
    from pipelines import steps
    from pipelines.state import RunDir

    run = RunDir(run_dir)
    cfg = run.load_config()
    for key, val in (("address", ray_address), ("workers", workers), ("gpus_per_worker", gpus_per_worker)):
        if val is not None:
            setattr(cfg.ray, key, val)
    m = steps.train_student(run, cfg, generation, force=force, progress=not quiet)
    steps.evaluate_generation(run, cfg, generation, force=True)
    rec = steps.promote(run, generation, cfg)
    click.echo(f"student gen {generation}: test accuracy {m.get('test_acc', float('nan')):.4f}")
    if rec:
        click.echo(f"promotion ({rec['policy']}): {rec['reason']}")


# --------------------------------------------------------------------------------------------------
# the whole loop


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False))
@click.option("--generations", "-n", type=click.IntRange(0), default=None, help="Student generations (default: the config's).")
@click.option("--baselines", is_flag=True, help="Also train the supervised baseline and the all-labels oracle.")
@click.option("--tracking", type=click.Choice(["none", "tensorboard", "mlflow"]), default="tensorboard", show_default=True,
              help="Log metrics per generation to TensorBoard (run_dir/tensorboard) or a local MLflow store (run_dir/mlruns).")
@set_option
@address_option
@workers_option
@gpus_option
@quiet_option
@_user_errors
@writes_run("run_dir")
def run(config, run_dir, generations, baselines, tracking, sets, ray_address, workers, gpus_per_worker, quiet):
    """Run (or resume) Noisy Student end to end: teacher, then N generations of label/select/student."""
    from pipelines.loop import run_all

    cfg = _load(config, sets, **{"ray.address": ray_address, "ray.workers": workers, "ray.gpus_per_worker": gpus_per_worker,
                                 "student.generations": generations})
    rows = run_all(cfg, run_dir, progress=not quiet, baselines=baselines, tracking=None if tracking == "none" else tracking)
    for r in rows:
        click.echo(f"gen {r['generation']}: {r['model']} test accuracy {r['test_acc']:.4f}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="The run folder (resumable).")
@click.option("--teacher", default=None, type=click.Path(), help="Teacher checkpoint (overrides distill.teacher).")
@click.option("--method", default=None, help="Distillation method name (overrides distill.method; see `noisystudent methods`).")
@click.option("--force", is_flag=True, help="Train again even if finished.")
@set_option
@address_option
@workers_option
@gpus_option
@quiet_option
@_user_errors
@writes_run("run_dir")
def distill(config, run_dir, teacher, method, force, sets, ray_address, workers, gpus_per_worker, quiet):
    """Train one student (student.ladder[0], student.train) from a teacher on the labeled images."""
    from pipelines import steps
    from pipelines.state import RunDir

    flags = {"distill.teacher": teacher, "ray.address": ray_address, "ray.workers": workers,
             "ray.gpus_per_worker": gpus_per_worker}
    if method is not None:
        flags["distill.method"] = {"name": method}
    cfg = _load(config, sets, **flags)
    run = RunDir(run_dir)
    cfg = run.freeze_config(cfg)
    m = steps.distill(run, cfg, force=force, progress=not quiet)
    fid = m.get("test_fidelity")
    click.echo(f"{m['model']} ({cfg.distill.method['name']}): test accuracy {m['test_acc']:.4f}"
               + (f", fidelity to the teacher {fid:.4f}" if fid is not None else "")
               + f" -> {run.distill_dir() / 'model.pt'}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def methods(as_json):
    """The registered distillation methods: teacher, parameters and their defaults."""
    from .distill import get_method, list_methods, method_defaults

    rows = [{"name": n, "teacher": get_method(n).teacher, "params": method_defaults(n), "summary": get_method(n).summary}
            for n in list_methods()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        click.echo(f"{r['name']:<14} teacher: {r['teacher']:<8} {params}")
        click.echo(f"{'':<14} {r['summary']}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def status(run_dir, as_json):
    """A table of RUN_DIR: generation, model, steps done, test and pseudo-label accuracy, time."""
    from pipelines.loop import status_rows
    from pipelines.state import RunDir

    rows = status_rows(RunDir(run_dir))
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return

    def f(v, fmt=".4f"):
        return "-" if v is None else (format(v, fmt) if isinstance(v, float) else str(v))

    head = ["gen", "model", "steps", "val_acc", "test_acc", "pl_acc", "pl_acc_sel", "taught_by", "promoted", "seconds"]
    table = [[f(r["generation"]), r["model"], r["steps_done"], f(r.get("val_acc")), f(r["test_acc"]), f(r["pseudo_label_acc"]),
              f(r["pseudo_label_acc_selected"]), f(r.get("taught_by")), f(r.get("promoted")), f(r["seconds"], ",.0f")]
             for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for line in [head] + table:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    # what each promotion decision rested on (validation images, or none); test accuracy never decides
    decisions = [(r["generation"], r["decision"]) for r in rows if r.get("decision")]
    if decisions:
        click.echo("")
    for g, why in decisions:
        click.echo(f"gen {g} promotion: {why}")
    stopped = RunDir(run_dir).state().get("stopped")
    if stopped:
        click.echo(f"stopped before gen {stopped['generation']}: {stopped['reason']}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--tracking", type=click.Choice(["none", "tensorboard", "mlflow"]), default="tensorboard", show_default=True,
              help="Also log the run's metrics to TensorBoard event files (run_dir/tensorboard) or a local MLflow store (run_dir/mlruns).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write the report here instead of RUN_DIR/report.")
@click.option("--no-data", is_flag=True, help="Leave out sample images and calibration (for runs whose images are not on this machine).")
@_user_errors
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


# --------------------------------------------------------------------------------------------------
# using a checkpoint


def _source_for(path: str, in_chans: int, labeled: bool):
    from .data.folder import ImageFolderSource, UnlabeledFolderSource
    from .data.manifest import ManifestSource

    p = Path(path)
    if p.suffix.lower() in (".csv", ".parquet"):
        return ManifestSource(p, in_chans)
    if not p.exists():
        raise UserError(f"data path not found: {p}")
    return ImageFolderSource(p, in_chans) if labeled else UnlabeledFolderSource(p, in_chans)


FASHION_MNIST_SPLITS = ("train", "test")


def _fashion_mnist_split(data: str) -> tuple[str, str]:
    """``(split, root)`` of ``--data fashion-mnist[:SPLIT][:ROOT]``; the split defaults to test.

    ``fashion-mnist:ROOT`` (a path: it has a ``/`` or starts with ``.``) still names the root alone."""
    from .data.fashion_mnist import DEFAULT_ROOT

    rest = data[len("fashion-mnist:"):] if data.startswith("fashion-mnist:") else ""
    head, _, tail = rest.partition(":")
    if head in FASHION_MNIST_SPLITS:
        return head, tail or DEFAULT_ROOT
    if not head or "/" in head or head.startswith("."):
        return "test", rest or DEFAULT_ROOT
    raise UserError(f"--data: Fashion-MNIST has no split {head!r}; use fashion-mnist:train or fashion-mnist:test "
                    "(add :ROOT for the idx files elsewhere)")


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--data", required=True,
              help="Labeled data: an ImageFolder tree, a CSV/Parquet manifest, or 'fashion-mnist[:SPLIT][:ROOT]' with "
                   "SPLIT test (default; 10,000 images) or train (all 60,000, the images a run trained on included).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the metrics JSON here.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@quiet_option
@_user_errors
def evaluate(checkpoint, data, output, batch_size, quiet):
    """Accuracy, per-class accuracy and confusion matrix of CHECKPOINT on labeled data."""
    from .checkpoint import load_checkpoint
    from .evaluate import evaluate as run_eval
    from .io import write_json
    from .transforms import create_transform

    fmnist = _fashion_mnist_split(data) if data == "fashion-mnist" or data.startswith("fashion-mnist:") else None
    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.spec
    if fmnist is not None:
        from .data.fashion_mnist import FashionMNISTSource

        split, root = fmnist
        source = FashionMNISTSource(root, split, labeled=True, in_chans=spec.in_chans)
    else:
        source = _source_for(data, spec.in_chans, labeled=True)
    from .data import remap_to_classes

    remap_to_classes(source, list(spec.classes), "--data")
    tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    m = run_eval(ckpt.build_model(), source, tf, batch_size=batch_size, classes=spec.classes, progress=not quiet)
    click.echo(f"top-1 {m['top1']:.4f} on {m['n']} images ({m['skipped']} skipped)")
    for name, acc in m["per_class_accuracy"].items():
        click.echo(f"  {name:<24} {'-' if acc is None else f'{acc:.4f}'}")
    if output:
        write_json(output, m)


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Predictions Parquet file.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--topk", type=click.IntRange(1), default=5, show_default=True)
@quiet_option
@_user_errors
def predict(checkpoint, images, output, batch_size, topk, quiet):
    """Predict classes of IMAGES (files or folders) with CHECKPOINT into a Parquet file."""
    import numpy as np
    import pandas as pd

    from .checkpoint import load_checkpoint
    from .data.folder import UnlabeledFolderSource
    from .evaluate import predict_probs
    from .io import atomic_path
    from .transforms import create_transform

    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.spec
    tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    model = ckpt.build_model()
    frames, rejected = [], 0
    for item in images:
        p = Path(item)
        if not p.exists():
            raise UserError(f"image path not found: {p}")
        src = UnlabeledFolderSource(p.parent if p.is_file() else p, spec.in_chans)
        if p.is_file():
            ids = [i for i in range(len(src)) if src.image_id(i) == p.name]
            if not ids:
                raise UserError(f"not an image file: {p}")
            src = src.subset(ids)
        idx, probs = predict_probs(model, src, tf, batch_size=batch_size, progress=not quiet)
        rejected += len(src) - len(idx)
        k = min(topk, spec.num_classes)
        order = np.argsort(-probs, axis=1)[:, :k] if len(idx) else np.zeros((0, k), dtype=int)
        frames.append(pd.DataFrame({
            "path": [str((p.parent if p.is_file() else p) / src.image_id(int(i))) for i in idx],
            "label": probs.argmax(1).astype("int32") if len(idx) else np.zeros(0, "int32"),
            "class_name": [spec.classes[int(c)] for c in (probs.argmax(1) if len(idx) else [])],
            "confidence": probs.max(1).astype("float32") if len(idx) else np.zeros(0, "float32"),
            "topk_classes": [row.astype("int32").tolist() for row in order],
            "topk_probs": [probs[j, order[j]].astype("float32").tolist() for j in range(len(idx))],
        }))
    df = pd.concat(frames, ignore_index=True)
    with atomic_path(output) as tmp:
        df.to_parquet(tmp, index=False)
    click.echo(f"{len(df)} predictions ({rejected} unreadable images skipped) -> {output}")


# --------------------------------------------------------------------------------------------------
# pseudo-label store


@main.group()
def labels() -> None:
    """Look into pseudo-label Parquet sets."""


@labels.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--rows", type=click.IntRange(0), default=5, show_default=True, help="Sample rows to show.")
@_user_errors
def labels_inspect(path, rows):
    """Row count, schema, metadata, class and confidence histograms and a few rows of PATH."""
    from pseudo_labels.inspect import inspect_labels

    if not Path(path).exists():
        raise UserError(f"path not found: {path}")
    click.echo(inspect_labels(path, rows=rows))


# --------------------------------------------------------------------------------------------------
# anomaly detection (STPM)


@main.group()
def anomaly() -> None:
    """STPM anomaly detection: train a detector on normal images, score new images, report."""


@anomaly.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="The detector's run folder (resumable).")
@click.option("--force", is_flag=True, help="Start the run folder over.")
@set_option
@address_option
@workers_option
@gpus_option
@quiet_option
@_user_errors
@writes_run("run_dir")
def anomaly_train(config, run_dir, force, sets, ray_address, workers, gpus_per_worker, quiet):
    """Train an STPM detector from CONFIG (an anomaly config file) into RUN_DIR; run again to resume."""
    from pipelines.anomaly.config import load_anomaly_config

    overrides = _parse_sets(sets)
    overrides.update({k: v for k, v in {"ray.address": ray_address, "ray.workers": workers,
                                        "ray.gpus_per_worker": gpus_per_worker}.items() if v is not None})
    cfg = load_anomaly_config(config, overrides)
    from pipelines.anomaly.train import train_detector

    rec = train_detector(cfg, run_dir, force=force, progress=not quiet)
    click.echo(f"detector {rec['detector_id']}: threshold {rec['threshold']:.4g} at FPR target "
               f"{rec['threshold_fpr_target']:g} on {rec['val_images']} validation normals -> {Path(run_dir) / 'detector.json'}")


@anomaly.command("score")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder of score shards.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Images per inference batch (default: the run's score.batch_size).")
@click.option("--num-actors", type=click.IntRange(1), default=None, help="Ray Data actors (default: score.num_actors).")
@click.option("--gpus-per-actor", type=click.FloatRange(0), default=None, help="GPUs per actor (default: score.num_gpus_per_actor).")
@click.option("--cpus-per-actor", type=click.FloatRange(0), default=None, help="CPUs per actor (default: score.num_cpus_per_actor).")
@click.option("--chunk-size", type=click.IntRange(1), default=None, help="Images per shard (default: score.chunk_size).")
@click.option("--maps/--no-maps", default=None, help="Store each image's anomaly map in the shards (default: score.save_maps).")
@click.option("--masks", type=click.Path(file_okay=False), default=None, help="Defect masks for the report's pixel AUROC.")
@click.option("--no-report", is_flag=True, help="Do not write OUT/report/index.html.")
@click.option("--force", is_flag=True, help="Score again even if finished.")
@address_option
@quiet_option
@_user_errors
def anomaly_score(run_dir, images, out_dir, batch_size, num_actors, gpus_per_actor, cpus_per_actor, chunk_size, maps,
                  masks, no_report, force, ray_address, quiet):
    """Score IMAGES (a folder, or image files and folders) with the detector of RUN_DIR into OUT (Parquet)."""
    from pipelines.anomaly.score import images_source, score_images
    from pipelines.anomaly.train import load_detector

    record, _, _ = load_detector(run_dir)
    source = images_source(images, int(record["in_chans"]))
    s = score_images(run_dir, source, out_dir, batch_size=batch_size, num_actors=num_actors,
                     num_gpus_per_actor=gpus_per_actor, num_cpus_per_actor=cpus_per_actor, chunk_size=chunk_size,
                     save_maps=maps, force=force, progress=not quiet, inputs=[str(Path(p).resolve()) for p in images],
                     ray_address=ray_address)
    click.echo(f"scored {s['scored']} images ({s['rejected'] + s['skipped_at_scan']} unreadable, listed in "
               f"{Path(out_dir) / 'rejected.csv'}); {s['flagged']} flagged above threshold {s['threshold']:.4g} -> {out_dir}")
    if s.get("image_auroc") is not None:
        click.echo(f"image AUROC (good/ vs the other folders): {s['image_auroc']:.4f}")
    if not no_report:
        from pipelines.anomaly.report import build_anomaly_report

        click.echo(f"report: {build_anomaly_report(out_dir, masks=masks)}")


@anomaly.command("report")
@click.argument("score_dir", type=click.Path(file_okay=False))
@click.option("--masks", type=click.Path(file_okay=False), default=None, help="Defect masks for pixel AUROC and outlines.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write the report here instead of SCORE_DIR/report.")
@_user_errors
def anomaly_report(score_dir, masks, out):
    """Histograms, ROC/AUROC (with good/ and defect/ folders) and maps over images of a score folder."""
    from pipelines.anomaly.report import build_anomaly_report

    click.echo(f"report: {build_anomaly_report(score_dir, out, masks=masks)}")


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@_user_errors
def doctor(run_dir) -> None:
    """Versions, whether Ray can start, GPUs seen, dataset paths found; with RUN_DIR, whether every artifact of
    that run is intact (exit 2 naming each damaged file and the command that rebuilds it)."""
    if run_dir:
        from pipelines.verify import report_run

        sys.exit(report_run(run_dir, click.echo))
    import platform

    from .config import DataConfig

    def line(k, v):
        click.echo(f"{k:<22} {v}")

    line("python", platform.python_version())
    for mod in ("noisystudent", "torch", "torchvision", "ray", "albumentations", "pandas", "pyarrow", "click"):
        try:
            m = __import__(mod)
            line(mod, getattr(m, "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - doctor reports every failure
            line(mod, f"NOT IMPORTABLE ({exc})")
    import torch

    line("cuda available", torch.cuda.is_available())
    line("gpus", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none")
    root = Path(DataConfig().root)
    found = (root / "train-images-idx3-ubyte.gz").is_file()
    line("fashion-mnist", f"{root} ({'found' if found else 'missing: apt-get install dataset-fashion-mnist'})")
    try:
        import ray

        from pipelines.ray_runtime import init_ray, reap_orphans

        reaped = reap_orphans()
        if reaped:
            line("ray leftovers", f"stopped {len(reaped)} processes of embedded instances whose driver was killed")

        was_up = ray.is_initialized()
        res = init_ray(os.environ.get("RAY_ADDRESS"))
        line("ray", f"{'running' if was_up else 'started'}: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs")
        if not was_up:
            ray.shutdown()
    except Exception as exc:  # noqa: BLE001
        line("ray", f"FAILED to start: {exc}")


# --------------------------------------------------------------------------------------------------
# studies (Ray Tune)


class _StudyGroup(click.Group):
    """``noisystudent study STUDY.yaml ...`` runs a study; ``noisystudent study status DIR`` shows one."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_StudyGroup)
def study() -> None:
    """Studies: a grid of config overrides run as Ray Tune trials (STUDY.yaml --study-dir DIR), or `status DIR`."""


@study.command("run")
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--study-dir", required=True, type=click.Path(file_okay=False), help="The study folder (resumable: run again to continue).")
@click.option("--max-trials", type=click.IntRange(1), default=None, help="Run at most this many unfinished trials now.")
@click.option("--teacher", default=None, type=click.Path(),
              help="Teacher checkpoint every trial distills from (overrides the study's teacher:; no teacher stage).")
@address_option
@quiet_option
@_user_errors
@writes_run("study_dir")
def study_run(study_file, study_dir, max_trials, teacher, ray_address, quiet):
    """Run (or resume) the study STUDY_FILE in DIR and print its summary over seeds."""
    from pipelines.study import format_summary, run_study, summary

    out = run_study(study_file, study_dir, ray_address=ray_address, max_trials=max_trials, quiet=quiet,
                    teacher=teacher)
    click.echo(format_summary(summary(out["rows"])))
    for tid, err in out["errors"].items():
        click.echo(f"failed: {tid}: {err}", err=True)
    click.echo(f"-> {Path(study_dir) / 'results.parquet'}")


@study.command("status")
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
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


if __name__ == "__main__":
    main()
