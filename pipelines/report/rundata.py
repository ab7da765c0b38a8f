"""Read everything a report or a tracker shows from a run folder, tolerating what is not there yet.

A run in progress (or one copied without its data) has only some artifacts: generation 2 may have
labels but no student, the labeling job may still be writing shards, the data set may not be on this
machine. Every reader here returns ``None`` for what is missing and records a one-line note saying
why, so the report shows what exists and explains what it leaves out instead of failing.

Values are taken as written (``gen-G/metrics.json`` first, the step summaries as a fallback), so the
numbers in the report are the numbers in the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from noisystudent.errors import UserError
from pipelines.config import ExperimentConfig

from ..state import RunDir
from ..steps import BASELINE_ROLES, TEACHER, baseline_step, generation_of, step_name

# Columns of the pseudo-label Parquet the report needs; reading only these keeps large label sets cheap.
LABEL_COLUMNS = ("image_id", "label", "confidence")


@dataclass
class ModelRecord:
    """One trained model: its ``metrics.json`` and ``history.csv`` (either may be missing)."""

    key: str  # the step name: "gen-0/teacher", "gen-1/student", "baselines/oracle"
    title: str
    role: str
    generation: Optional[int]
    folder: Path
    metrics: Optional[dict] = None
    history: Optional[pd.DataFrame] = None


@dataclass
class GenerationRecord:
    """Generation ``g >= 1``: its labels, selection, student and gathered metrics."""

    generation: int
    label_summary: Optional[dict] = None
    labels: Optional[pd.DataFrame] = None  # LABEL_COLUMNS (+ true_label when hidden labels are known)
    selection_summary: Optional[dict] = None
    metrics: Optional[dict] = None  # gen-G/metrics.json
    student: Optional[ModelRecord] = None

    @property
    def started(self) -> bool:
        return any(v is not None for v in (self.label_summary, self.labels, self.selection_summary, self.metrics)) or (
            self.student is not None and (self.student.metrics is not None or self.student.history is not None)
        )


@dataclass
class RunData:
    """Everything read from one run folder."""

    root: Path
    cfg: ExperimentConfig
    state: dict
    classes: list[str]
    teacher: Optional[ModelRecord]
    generations: list[GenerationRecord]  # 1 .. max(configured, present), started or not
    baselines: dict[str, ModelRecord]
    data: Any = None  # noisystudent.data.DataBundle when the data set could be loaded
    notes: list[str] = field(default_factory=list)

    def models(self) -> list[ModelRecord]:
        """Teacher, students and baselines that have metrics or a history, in run order."""
        out = [self.teacher] if self.teacher is not None else []
        out += [g.student for g in self.generations if g.student is not None]
        out += list(self.baselines.values())
        return [m for m in out if m.metrics is not None or m.history is not None]

    def last_student(self) -> Optional[ModelRecord]:
        for g in reversed(self.generations):
            if g.student is not None and g.student.metrics is not None:
                return g.student
        return None


def _first(d: Optional[dict], *keys: str) -> Any:
    if not d:
        return None
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


# Where each figure of gen-G/metrics.json comes from, for generations whose evaluate step has not run
# (or wrote null): (source, keys tried in order). Sources: labels / selection summary, student metrics.
_FALLBACKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "test_acc": ("student", ("test_acc",)),
    "model": ("student", ("model",)),
    "pseudo_label_acc": ("labels", ("pseudo_label_accuracy",)),
    "pseudo_label_acc_selected": ("selection", ("accuracy_selected_weighted", "accuracy_selected")),
    "pseudo_labels": ("labels", ("rows",)),
    "rejected": ("labels", ("rejected",)),
    "selected": ("selection", ("rows_selected",)),
    "selected_weighted": ("selection", ("weighted_rows_selected",)),
    "labeling_images_per_s": ("labels", ("throughput_images_per_s",)),
    "student_images_per_s": ("student", ("images_per_s",)),
}


def gen_value(g: GenerationRecord, key: str) -> Any:
    """A generation figure from ``gen-G/metrics.json``; while that is missing (the evaluate step has
    not run) or null, the same figure from the step summaries it is gathered from."""
    value = _first(g.metrics, key)
    if value is not None or key not in _FALLBACKS:
        return value
    source, keys = _FALLBACKS[key]
    d = {"labels": g.label_summary, "selection": g.selection_summary,
         "student": g.student.metrics if g.student is not None else None}[source]
    return _first(d, *keys)


# --------------------------------------------------------------------------------------------------
# tolerant readers


def read_json_or_none(path: Path, notes: list[str]) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            out = json.load(fh)
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} in {path.parent} is unreadable ({exc}); left out")
        return None
    return out if isinstance(out, dict) else None


def read_history_or_none(path: Path, notes: list[str]) -> Optional[pd.DataFrame]:
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        notes.append(f"{path} is unreadable ({exc}); left out")
        return None
    if "epoch" not in df.columns or df.empty:
        notes.append(f"{path} has no epoch rows; left out")
        return None
    return df


def read_labels_or_none(folder: Path, notes: list[str], g: int) -> Optional[pd.DataFrame]:
    """The finished labels of a generation (needed columns only); None while labeling runs."""
    from pseudo_labels import is_complete, list_shards, read_labels

    if not folder.is_dir():
        return None
    if not is_complete(folder):
        n = len(list_shards(folder))
        notes.append(f"generation {g}: labeling has not finished ({n} shard(s) so far); label plots left out")
        return None
    try:
        return read_labels(folder, columns=list(LABEL_COLUMNS))
    except UserError as exc:
        notes.append(f"generation {g}: labels unreadable ({exc}); label plots left out")
        return None


def _model(key: str, title: str, role: str, generation: Optional[int], folder: Path, notes: list[str]) -> ModelRecord:
    return ModelRecord(
        key=key,
        title=title,
        role=role,
        generation=generation,
        folder=folder,
        metrics=read_json_or_none(folder / "metrics.json", notes),
        history=read_history_or_none(folder / "history.csv", notes),
    )


def _class_names(run: RunDir, data: Any, gens: list[GenerationRecord], models: list[ModelRecord]) -> list[str]:
    """Class names in index order: from the data set, else the label summaries or shard metadata,
    else ``class i`` for as many classes as a confusion matrix has."""
    if data is not None and getattr(data, "classes", None):
        return list(data.classes)
    for g in gens:
        names = _first(g.label_summary, "classes")
        if names:
            return [str(n) for n in names]
    for g in gens:
        folder = run.labels_dir(g.generation)
        try:
            from pseudo_labels import list_shards, read_metadata

            if folder.is_dir() and list_shards(folder):
                return list(read_metadata(folder).class_names)
        except UserError:
            pass
    for m in models:
        cm = _first(m.metrics, "test_confusion_matrix")
        if cm:
            return [f"class {i}" for i in range(len(cm))]
    return []


def hidden_labels_for(data: Any, image_ids: pd.Series) -> Optional[np.ndarray]:
    """True labels of pseudo-labeled images in the run's classes (-1 where unknown), or None when the
    source has none (:func:`noisystudent.data.hidden.true_labels`; a streaming source never has them).

    Only for measuring pseudo-label quality in reports; never for training.
    """
    from noisystudent.data.hidden import has_hidden_labels, true_labels
    from noisystudent.data.protocols import RandomAccessSource

    src = getattr(data, "unlabeled", None)
    if not isinstance(src, RandomAccessSource) or not has_hidden_labels(src):
        return None
    return true_labels(src, list(image_ids), data.classes)


def collect(run_dir: str | Path, with_data: bool = True) -> RunData:
    """Read a run folder. Raises :class:`UserError` only when it is not a run folder at all."""
    run = RunDir(Path(run_dir))
    cfg = run.load_config()
    notes: list[str] = []
    state = run.state()
    steps = state.get("steps", {})

    teacher = _model(step_name(0, TEACHER), f"generation 0 teacher ({cfg.teacher.name})", "teacher", 0, run.teacher_dir(), notes)

    present = [g for g in (generation_of(p.name) for p in run.root.iterdir() if p.is_dir()) if g is not None]
    present += [g for g in map(generation_of, steps) if g is not None]
    last = max([cfg.student.generations] + present)
    gens: list[GenerationRecord] = []
    for g in range(1, last + 1):
        rec = GenerationRecord(generation=g)
        rec.label_summary = read_json_or_none(run.labels_dir(g) / "summary.json", notes)
        rec.labels = read_labels_or_none(run.labels_dir(g), notes, g)
        rec.selection_summary = read_json_or_none(run.selected_dir(g) / "summary.json", notes)
        rec.metrics = read_json_or_none(run.gen(g) / "metrics.json", notes)
        model_name = cfg.student_model(g).name
        rec.student = _model(step_name(g, "student"), f"generation {g} student ({model_name})", "student", g, run.student_dir(g), notes)
        gens.append(rec)

    baselines: dict[str, ModelRecord] = {}
    for role in BASELINE_ROLES:
        folder = run.baseline_dir(role)
        if folder.is_dir() or baseline_step(role) in steps:
            base = _model(baseline_step(role), f"{role} baseline", role, None, folder, notes)
            info = steps.get(baseline_step(role), {})
            if base.metrics is None and info.get("test_acc") is not None:  # metrics.json lost: state.json still knows
                base.metrics = {"test_acc": info["test_acc"], "model": info.get("model")}
            baselines[role] = base

    data = None
    if with_data:
        try:
            from ..steps import load_data

            data = load_data(cfg)
        except (UserError, OSError, ValueError) as exc:
            notes.append(f"the run's data set could not be loaded on this machine ({exc}); sample images and calibration left out")

    models = ([teacher] + [g.student for g in gens if g.student is not None] + list(baselines.values()))
    classes = _class_names(run, data, gens, models)

    if data is not None:
        for g in gens:
            if g.labels is not None:
                truth = hidden_labels_for(data, g.labels["image_id"])
                if truth is not None:
                    g.labels = g.labels.assign(true_label=truth)

    return RunData(root=run.root, cfg=cfg, state=state, classes=classes, teacher=teacher, generations=gens,
                   baselines=baselines, data=data, notes=notes)
