"""Experiment tracking: replay a run folder's artifacts into TensorBoard or MLflow.

Why replay instead of logging live from the training loop: the run folder is the record. Writing the
tracker from finished artifacts means a resumed, re-run or copied run logs exactly what its files
say, training code stays free of tracker calls, and a tracker can be added after the fact
(``log_run`` on an old run). Each call rewrites what it wrote before, so calling it after every step
is idempotent: TensorBoard's ``tensorboard/gen-G/`` folders are deleted and recreated, MLflow runs
tagged with the same run folder and generation are deleted and logged again.

One tracker run per generation (``gen-0`` is the teacher) and per baseline (``baseline-<role>``):
per-epoch history scalars, the final test accuracy, pseudo-label accuracy, selection counts and the
confidence histogram of the pseudo-labels the generation trained on.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from noisystudent.errors import UserError

from .steps import gen_folder

BACKENDS = ("tensorboard", "mlflow")
FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"

# history.csv column -> scalar tag
HISTORY_TAGS = {
    "train_loss": "train/loss",
    "loss_labeled": "train/loss_labeled",
    "loss_unlabeled": "train/loss_unlabeled",
    "train_acc": "train/acc",
    "lr": "train/lr",
    "images_per_s": "train/images_per_s",
    "seconds": "train/epoch_seconds",
    "test_acc": "test/acc_per_epoch",
}
# gen-G/metrics.json key (with the report's fallbacks) -> scalar tag
GENERATION_TAGS = {
    "test_acc": "final/test_acc",
    "teacher_test_acc": "final/teacher_test_acc",
    "pseudo_label_acc": "pseudo_labels/accuracy",
    "pseudo_label_acc_selected": "pseudo_labels/accuracy_selected",
    "pseudo_labels": "pseudo_labels/rows",
    "rejected": "pseudo_labels/rejected",
    "selected": "selection/selected",
    "selected_weighted": "selection/selected_weighted",
    "labeling_images_per_s": "throughput/labeling_images_per_s",
    "student_images_per_s": "throughput/student_images_per_s",
}
# selection summary.json key -> scalar tag
SELECTION_TAGS = {
    "rows_in": "selection/rows_in",
    "rows_after_threshold": "selection/rows_after_threshold",
    "rows_selected": "selection/rows_selected",
    "weighted_rows_selected": "selection/weighted_rows_selected",
    "K": "selection/per_class_k",
}


@dataclass
class TrackedRun:
    """What one tracker run holds: scalars as ``tag -> [(step, value)]``, a confidence histogram, params."""

    name: str  # "gen-0", "gen-1", "baseline-oracle"
    generation: Optional[int]
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    confidences: Optional[np.ndarray] = None
    params: dict[str, str] = field(default_factory=dict)

    def add(self, tag: str, step: int, value: Any) -> None:
        if value is None or isinstance(value, bool):
            return
        try:
            v = float(value)
        except (TypeError, ValueError):
            return
        if np.isfinite(v):
            self.scalars.setdefault(tag, []).append((int(step), v))


def _history_scalars(run: TrackedRun, history: Optional[pd.DataFrame]) -> None:
    if history is None:
        return
    for _, row in history.iterrows():
        epoch = int(row["epoch"])
        for col, tag in HISTORY_TAGS.items():
            if col in row and pd.notna(row[col]):
                run.add(tag, epoch, row[col])


def tracked_runs(run_dir: str | os.PathLike) -> list[TrackedRun]:
    """The tracker runs of a run folder, read from its artifacts (what is missing is left out)."""
    from .report.rundata import collect, gen_value

    data = collect(run_dir, with_data=False)
    cfg = data.cfg
    out: list[TrackedRun] = []
    teacher = data.teacher
    if teacher is not None and (teacher.metrics is not None or teacher.history is not None):
        tr = TrackedRun(gen_folder(0), 0, params={"role": "teacher", "model": cfg.teacher.name, "generation": "0"})
        _history_scalars(tr, teacher.history)
        tr.add("final/test_acc", 0, (teacher.metrics or {}).get("test_acc"))
        out.append(tr)
    for g in data.generations:
        if not g.started:
            continue
        model = cfg.student_model(g.generation)
        tr = TrackedRun(gen_folder(g.generation), g.generation, params={
            "role": "student", "model": model.name, "generation": str(g.generation),
            "drop_rate": str(model.drop_rate), "drop_path_rate": str(model.drop_path_rate),
            "randaugment": f"n={model.noise.randaugment_n} m={model.noise.randaugment_m:g}",
            "threshold": str(cfg.pseudo_labels.threshold),
        })
        if g.student is not None:
            _history_scalars(tr, g.student.history)
        step = g.generation
        for key, tag in GENERATION_TAGS.items():
            tr.add(tag, step, gen_value(g, key))
        for key, tag in SELECTION_TAGS.items():
            tr.add(tag, step, (g.selection_summary or {}).get(key))
        if g.labels is not None:
            tr.confidences = g.labels["confidence"].to_numpy(dtype=np.float64)
        out.append(tr)
    for role, rec in data.baselines.items():
        tr = TrackedRun(f"baseline-{role}", None, params={"role": role, "model": str((rec.metrics or {}).get("model"))})
        _history_scalars(tr, rec.history)
        tr.add("final/test_acc", 0, (rec.metrics or {}).get("test_acc"))
        out.append(tr)
    return out


# --------------------------------------------------------------------------------------------------
# backends


def _log_tensorboard(root: Path, runs: list[TrackedRun]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    tb = root / "tensorboard"
    for tr in runs:
        folder = tb / tr.name
        if folder.exists():
            shutil.rmtree(folder)  # rewrite from artifacts: a rerun must not duplicate events
        folder.mkdir(parents=True)
        writer = SummaryWriter(log_dir=str(folder))
        try:
            for tag, points in tr.scalars.items():
                for step, value in points:
                    writer.add_scalar(tag, value, global_step=step)
            if tr.confidences is not None and len(tr.confidences):
                writer.add_histogram("pseudo_labels/confidence", tr.confidences, global_step=tr.generation or 0,
                                     bins=np.linspace(0.0, 1.0, 21))
            if tr.params:
                writer.add_text("params", "\n".join(f"- **{k}**: {v}" for k, v in sorted(tr.params.items())), global_step=0)
        finally:
            writer.close()
    return tb


def _mlflow_client_class() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("tracking backend 'mlflow' needs the mlflow package: pip install mlflow "
                        "(or use backend 'tensorboard')") from None
    return MlflowClient


def _log_mlflow(root: Path, name: str, runs: list[TrackedRun]) -> Path:
    MlflowClient = _mlflow_client_class()
    store = root / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    uri = store.resolve().as_uri()
    # MLflow >= 3.x refuses the file store (now in maintenance mode) unless this opt-in is set; the
    # file store is what keeps the record inside the run folder with no database to manage.
    previous = os.environ.get(FILE_STORE_OPT_IN)
    os.environ[FILE_STORE_OPT_IN] = "true"
    try:
        _write_mlflow(MlflowClient(tracking_uri=uri), root, name, runs)
    finally:
        if previous is None:
            os.environ.pop(FILE_STORE_OPT_IN, None)
        else:
            os.environ[FILE_STORE_OPT_IN] = previous
    return store


def _write_mlflow(client: Any, root: Path, name: str, runs: list[TrackedRun]) -> None:
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    run_key = str(root.resolve())
    for tr in runs:
        old = client.search_runs([exp_id], filter_string=f"tags.`noisystudent.run_name` = '{tr.name}'")
        for r in old:
            if r.data.tags.get("noisystudent.run_dir") == run_key:
                client.delete_run(r.info.run_id)
        run = client.create_run(exp_id, run_name=tr.name,
                                tags={"noisystudent.run_dir": run_key, "noisystudent.run_name": tr.name})
        rid = run.info.run_id
        for k, v in tr.params.items():
            client.log_param(rid, k, v)
        for tag, points in tr.scalars.items():
            for step, value in points:
                client.log_metric(rid, tag, value, step=step)
        if tr.confidences is not None and len(tr.confidences):
            counts, edges = np.histogram(tr.confidences, bins=20, range=(0.0, 1.0))
            client.log_dict(rid, {"edges": edges.tolist(), "counts": counts.tolist()}, "pseudo_label_confidence_histogram.json")
        client.set_terminated(rid)


def log_run(run_dir: str | os.PathLike, backend: str = "tensorboard") -> Path:
    """Write (or rewrite) the tracker records of a run folder; return where they went.

    ``tensorboard``: event files under ``RUN_DIR/tensorboard/<run>/`` (view with
    ``tensorboard --logdir RUN_DIR/tensorboard``). ``mlflow``: a local file store ``RUN_DIR/mlruns``
    (``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN_DIR/mlruns``; the variable is
    needed from MLflow 3.x on), one experiment named after the config, one MLflow run per generation;
    runs logged by an earlier call for the same folder are deleted (MLflow's soft delete: hidden from
    the UI and searches, removed for good by ``mlflow gc``). Raises :class:`UserError` for an unknown
    backend, a folder that is not a run, or ``mlflow`` when the package is not installed.
    """
    from .state import RunDir

    if backend not in BACKENDS:
        raise UserError(f"unknown tracking backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "mlflow":
        _mlflow_client_class()  # fail before reading anything when mlflow is missing
    root = Path(run_dir)
    cfg = RunDir(root).load_config()
    runs = tracked_runs(root)
    if backend == "tensorboard":
        return _log_tensorboard(root, runs)
    return _log_mlflow(root, cfg.name, runs)
