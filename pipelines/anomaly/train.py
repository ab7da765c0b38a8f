"""``noisystudent anomaly train``: an STPM detector trained into a run folder; a killed call resumes.

::

    RUN_DIR/
      config.yaml      the resolved config, frozen at the first call: a later call with a changed field is
                       refused naming it, except the runtime fields (ray, device, score, threshold)
      teacher.pt       the frozen teacher as a checkpoint of this project (a byte copy of teacher.checkpoint,
                       or teacher.weights mapped onto the model face), so the folder is self-contained
      student/         the distillation engine's job folder (method stpm, online teacher): last.pt after
                       every epoch (a killed call continues from it), then model.pt, history.csv, metrics.json
      val_scores.csv   the validation normals' scores (image_id, score)
      detector.json    written last: stages, how maps combine, the threshold at threshold.fpr on the
                       validation normals, and the checksums of teacher.pt and student/model.pt

Each artifact is written atomically and the steps skip what exists, so running the command again after
a kill redoes only what was missing. A changed ``threshold.fpr`` rewrites ``detector.json`` from the stored
validation scores without training again. ``force`` starts the folder over.

The student trains through the engine (:func:`pipelines.train_ray.train`: in this process with
``ray.workers: 0``, the default here, or on Ray Train workers) as an ordinary job: the normal images are its
"labeled" set with one dummy label each (the method ignores labels), no test set, the teacher online.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from noisystudent.checkpoint import Checkpoint, ModelSpec, load_checkpoint, save_checkpoint
from noisystudent.errors import UserError
from noisystudent.io import atomic_path, read_json, sha256_file, write_bytes, write_json
from pipelines.anomaly.config import RUNTIME_FIELDS, AnomalyConfig, anomaly_config_from_dict, to_dict
from pipelines.frozen import FrozenConfig, value_at

DETECTOR_FILE = "detector.json"
FORMAT_VERSION = 1


@dataclass
class DetectorRun:
    """The paths of a detector's run folder."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def teacher_path(self) -> Path:
        return self.root / "teacher.pt"

    @property
    def student_dir(self) -> Path:
        return self.root / "student"

    @property
    def student_path(self) -> Path:
        return self.student_dir / "model.pt"

    @property
    def val_scores_path(self) -> Path:
        return self.root / "val_scores.csv"

    @property
    def detector_path(self) -> Path:
        return self.root / DETECTOR_FILE


def _log(progress: bool, msg: str) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(msg)


# --------------------------------------------------------------------------------------------------
# the frozen config


def _frozen(run: DetectorRun) -> FrozenConfig:
    return FrozenConfig(run.config_path, anomaly_config_from_dict, RUNTIME_FIELDS)


def load_run_config(run: DetectorRun) -> AnomalyConfig:
    if not run.config_path.is_file():
        raise UserError(f"{run.root} is not a detector run folder (no config.yaml); train one with "
                        f"`noisystudent anomaly train CONFIG --run-dir {run.root}`")
    return _frozen(run).load()


def freeze_config(run: DetectorRun, cfg: AnomalyConfig) -> AnomalyConfig:
    """Write ``config.yaml`` at the first call; later, refuse a change outside :data:`RUNTIME_FIELDS`,
    naming the first changed field (the runtime fields are updated)."""
    frozen = _frozen(run)
    if frozen.exists():
        old, changed = frozen.changes(cfg)
        if changed:
            field = changed[0]
            was, now = value_at(to_dict(old), field), value_at(to_dict(cfg), field)
            raise UserError(f"config field '{field}' differs from the one frozen in {run.config_path} (was {was!r}, "
                            f"now {now!r}); use another --run-dir, or --force to train again")
    frozen.write(cfg)
    return cfg


# --------------------------------------------------------------------------------------------------
# the steps


def prepare_teacher(run: DetectorRun, cfg: AnomalyConfig) -> Checkpoint:
    """``teacher.pt``: a copy of the teacher checkpoint, or the torchvision weights as a checkpoint."""
    t = cfg.teacher
    if t.checkpoint:
        src = Path(t.checkpoint)
        src = src / "model.pt" if src.is_dir() else src
        load_checkpoint(src)  # refuse an unreadable or unsafe file before copying it
        if run.teacher_path.is_file():
            if sha256_file(run.teacher_path) != sha256_file(src):
                raise UserError(f"teacher.checkpoint {src} changed since {run.teacher_path} was copied from it; "
                                "use --force to train again with the new teacher")
        else:
            write_bytes(run.teacher_path, src.read_bytes())
    elif not run.teacher_path.is_file():
        from noisystudent.anomaly.weights import torchvision_teacher

        net, spec = torchvision_teacher(t.weights, t.model, image_size=t.image_size, in_chans=t.in_chans, mean=t.mean,
                                        std=t.std)
        save_checkpoint(run.teacher_path, net, spec, metrics={"source": str(t.weights)}, generation=0, role="teacher")
    teacher = load_checkpoint(run.teacher_path)
    n = len(teacher.build_model().feature_info)
    bad = [s for s in cfg.stpm.stages if not -n <= s < n]
    if bad:
        raise UserError(f"config field 'stpm.stages': the teacher {teacher.spec.name} has {n} stages (0..{n - 1}); got {bad[0]}")
    return teacher


def normal_sources(cfg: AnomalyConfig, in_chans: int) -> tuple[Any, Any]:
    """``(train, val)`` normal images: the val folder, or ``val_fraction`` of the training images held out
    (seeded by ``data.split_seed``); ``train_limit`` caps the training images after the split."""
    d = cfg.data
    if d.kind == "fashion_mnist":
        from noisystudent.data.fashion_mnist import CLASSES, FashionMNISTSource, load_fashion_mnist

        _, labels = load_fashion_mnist(d.root, "train")
        idx = np.flatnonzero(labels == CLASSES.index(d.normal_class))
        train = FashionMNISTSource(d.root, "train", indices=idx, labeled=False, in_chans=in_chans)
    else:
        from noisystudent.data import UnlabeledFolderSource

        train = UnlabeledFolderSource(d.train, in_chans=in_chans)
    if d.val:
        from noisystudent.data import UnlabeledFolderSource

        val = UnlabeledFolderSource(d.val, in_chans=in_chans)
    else:
        perm = np.random.default_rng(d.split_seed).permutation(len(train))
        n_val = max(1, int(round(d.val_fraction * len(train))))
        if len(train) - n_val < 1:
            raise UserError(f"config field 'data.val_fraction': {len(train)} normal image(s) leave none to train on "
                            f"after holding out {n_val} for validation")
        val, train = train.subset(np.sort(perm[:n_val])), train.subset(np.sort(perm[n_val:]))
    if d.train_limit is not None and len(train) > d.train_limit:
        train = train.subset(np.arange(d.train_limit))
    return train, val


def _device(cfg: AnomalyConfig) -> str:
    from noisystudent.engine import resolve_device

    return str(resolve_device(cfg.device))


def train_student(run: DetectorRun, cfg: AnomalyConfig, teacher: Checkpoint, train: Any, progress: bool = True,
                  fail_at_epoch: Optional[int] = None) -> dict:
    """The student (the teacher's architecture, random init) trained with method stpm; resumes from last.pt."""
    from noisystudent.config import ModelConfig
    from noisystudent.engine import TrainJob
    from pipelines.train_ray import train as train_job

    spec = ModelSpec(**{**teacher.spec.__dict__, "drop_rate": 0.0, "drop_path_rate": 0.0})
    labeled = train.subset(np.arange(len(train)))
    labeled.labels = np.zeros(len(labeled), dtype=np.int64)  # one dummy class: stpm reads no label
    model_cfg = ModelConfig(name=spec.name)
    model_cfg.noise = cfg.augment  # None (the paper): the eval transform, no augmentation
    job = TrainJob(spec=spec, model_cfg=model_cfg, train_cfg=cfg.train, labeled=labeled, out_dir=run.student_dir,
                   seed=cfg.seed, device=cfg.device, generation=0, role="student", config=to_dict(cfg),
                   progress=progress, method={"name": "stpm", "stages": list(cfg.stpm.stages)},
                   teacher_ckpt=str(run.teacher_path), train_field="train")
    return train_job(job, cfg.ray, fail_at_epoch=fail_at_epoch)


def _val_scores(run: DetectorRun, cfg: AnomalyConfig, teacher: Checkpoint, val: Any, progress: bool) -> np.ndarray:
    import pandas as pd

    from noisystudent.anomaly import Detector, score_source

    if not run.val_scores_path.is_file():
        student = load_checkpoint(run.student_path, expected_classes=teacher.spec.classes)
        det = Detector(teacher, student, cfg.stpm.stages, cfg.stpm.combine, device=_device(cfg))
        got = score_source(det, val, batch_size=cfg.score.batch_size, progress=progress)
        if len(got["score"]) == 0:
            raise UserError(f"none of the {len(val)} validation normal images could be read; the threshold needs some")
        with atomic_path(run.val_scores_path) as tmp:
            pd.DataFrame({"image_id": got["image_id"], "score": got["score"]}).to_csv(tmp, index=False)
    return pd.read_csv(run.val_scores_path)["score"].to_numpy(dtype=np.float64)


def detector_id(teacher_sha: str, student_sha: str, stages, combine: str) -> str:
    blob = f"{teacher_sha}:{student_sha}:{list(stages)}:{combine}".encode()
    return "stpm-" + hashlib.sha256(blob).hexdigest()[:12]


def write_detector(run: DetectorRun, cfg: AnomalyConfig, teacher: Checkpoint, val_scores: np.ndarray,
                   metrics: dict) -> dict:
    """``detector.json`` (last): what scoring needs, the threshold and what it rests on."""
    from noisystudent.anomaly import choose_threshold

    threshold = choose_threshold(val_scores, cfg.threshold.fpr)
    t_sha, s_sha = sha256_file(run.teacher_path), sha256_file(run.student_path)
    student = load_checkpoint(run.student_path)
    q = np.quantile(val_scores, [0.5, 0.95, 0.99])
    record = {
        "format_version": FORMAT_VERSION,
        "method": "stpm",
        "name": cfg.name,
        "detector_id": detector_id(t_sha, s_sha, cfg.stpm.stages, cfg.stpm.combine),
        "model": teacher.spec.name,
        "image_size": teacher.spec.image_size,
        "in_chans": teacher.spec.in_chans,
        "stages": list(cfg.stpm.stages),
        "combine": cfg.stpm.combine,
        "threshold": threshold,
        "threshold_fpr_target": cfg.threshold.fpr,
        "val_images": int(len(val_scores)),
        "val_fpr": float((val_scores > threshold).mean()),
        "val_score": {"mean": float(val_scores.mean()), "std": float(val_scores.std()), "min": float(val_scores.min()),
                      "p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]), "max": float(val_scores.max())},
        "teacher": {"path": run.teacher_path.name, "checkpoint_id": teacher.checkpoint_id, "sha256": t_sha},
        "student": {"path": "student/model.pt", "checkpoint_id": student.checkpoint_id, "sha256": s_sha},
        "train": {k: metrics.get(k) for k in ("epochs", "steps", "train_seconds", "images_per_s", "labeled_images")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if len(val_scores) * cfg.threshold.fpr < 1:
        record["note"] = (f"{len(val_scores)} validation images cannot resolve a false-positive rate of "
                          f"{cfg.threshold.fpr:g}: the threshold is their highest score")
    write_json(run.detector_path, record)
    return record


def train_detector(cfg: AnomalyConfig, run_dir: str | Path, *, force: bool = False, progress: bool = True,
                   fail_at_epoch: Optional[int] = None) -> dict:
    """Train (or finish training) the detector of ``cfg`` in ``run_dir``; return ``detector.json``'s record.

    ``fail_at_epoch``: fault injection for tests (the student's training raises once in that epoch)."""
    from pipelines.state import check_writable

    run = DetectorRun(run_dir)
    check_writable(run.root)
    if force:
        for p in (run.detector_path, run.val_scores_path, run.teacher_path, run.config_path):
            p.unlink(missing_ok=True)
        shutil.rmtree(run.student_dir, ignore_errors=True)
    cfg = freeze_config(run, cfg)
    if run.detector_path.is_file():
        record = read_json(run.detector_path)
        if record.get("threshold_fpr_target") == cfg.threshold.fpr:
            return record
    teacher = prepare_teacher(run, cfg)
    train, val = normal_sources(cfg, teacher.spec.in_chans)
    if not run.student_path.is_file():
        _log(progress, f"anomaly: training the {teacher.spec.name} student on {len(train)} normal images "
                       f"(stages {cfg.stpm.stages}, {cfg.train.epochs} epochs) -> {run.student_dir}")
        train_student(run, cfg, teacher, train, progress, fail_at_epoch)
    metrics = read_json(run.student_dir / "metrics.json") if (run.student_dir / "metrics.json").is_file() else {}
    scores = _val_scores(run, cfg, teacher, val, progress)
    record = write_detector(run, cfg, teacher, scores, metrics)
    _log(progress, f"anomaly: threshold {record['threshold']:.4g} (at most {cfg.threshold.fpr:g} of the "
                   f"{record['val_images']} validation normals above it) -> {run.detector_path}")
    return record


def load_detector(run_dir: str | Path) -> tuple[dict, Checkpoint, Checkpoint]:
    """``(record, teacher, student)`` of a trained detector, its files checked against ``detector.json``."""
    run = DetectorRun(run_dir)
    if not run.detector_path.is_file():
        raise UserError(f"{run.root} holds no trained detector (no {DETECTOR_FILE}); train it with "
                        f"`noisystudent anomaly train CONFIG --run-dir {run.root}`")
    record = read_json(run.detector_path)
    if record.get("format_version") != FORMAT_VERSION or record.get("method") != "stpm":
        raise UserError(f"{run.detector_path} is not an STPM detector record (format {FORMAT_VERSION})")
    for who, path in (("teacher", run.teacher_path), ("student", run.student_path)):
        if not path.is_file():
            raise UserError(f"{path} is missing; train the detector again (`noisystudent anomaly train --force`)")
        if sha256_file(path) != record[who]["sha256"]:
            raise UserError(f"{path} is not the {who} that {run.detector_path} was made with (checksum differs); "
                            "train again with --force")
    teacher = load_checkpoint(run.teacher_path)
    student = load_checkpoint(run.student_path, expected_classes=teacher.spec.classes)
    return record, teacher, student

