"""The steps of a run, each reading finished artifacts of the step before and writing its own.

teacher (gen 0) -> label (gen g) -> select (gen g) -> student (gen g) -> evaluate (gen g) -> promote (gen g)

Every step function is idempotent: a finished step (recorded in ``state.json``) returns its record
without work unless ``force``; an unfinished one resumes from what it left (labeling shards, the
training job's ``last.pt``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from noisystudent.checkpoint import load_checkpoint
from noisystudent.data import DataBundle, create_data
from noisystudent.errors import UserError
from noisystudent.io import read_json, write_json
from noisystudent.engine import PseudoLabeledSet, TrainJob, spec_for
from pipelines.config import ExperimentConfig

from .state import RunDir, step_name


def _log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg)


_DATA_CACHE: dict[str, DataBundle] = {}


def load_data(cfg: ExperimentConfig) -> DataBundle:
    """The run's data bundle, built once per process (folder scans and idx decoding are not free)."""
    import json
    from dataclasses import asdict

    key = json.dumps(asdict(cfg.data), sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = create_data(cfg.data)
    return _DATA_CACHE[key]


def record_conditions(run: RunDir, data: DataBundle) -> None:
    """Write what ``data.label_noise`` / ``data.imbalance`` did to the run folder, for audit:
    ``data_conditions.json`` (settings, per-class counts, images flipped) and ``data_conditions.parquet``
    (one row per labeled training image kept: image_id, label_clean, label, flipped). Nothing without
    conditions."""
    if data.conditions is None:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from noisystudent.io import atomic_path

    rows = data.conditions["rows"]
    table = pa.table({"image_id": pa.array(rows["image_id"], pa.string()),
                      "label_clean": pa.array(rows["label_clean"], pa.int32()),
                      "label": pa.array(rows["label"], pa.int32()), "flipped": pa.array(rows["flipped"], pa.bool_())})
    run.root.mkdir(parents=True, exist_ok=True)
    with atomic_path(run.root / "data_conditions.parquet") as tmp:
        pq.write_table(table, tmp)
    write_json(run.root / "data_conditions.json", data.conditions["summary"])


def _train_step(run: RunDir, cfg: ExperimentConfig, step: str, out: Path, *, model_cfg, train_cfg, labeled, test, classes,
                generation: int, role: str, progress: bool, job_cfg: Optional[ExperimentConfig] = None,
                pseudo: Optional[PseudoLabeledSet] = None, method: Optional[dict] = None,
                teacher: Optional[Path] = None, val=None, teaching=None) -> dict:
    """Build one :class:`TrainJob`, train it as ``cfg.ray`` says, and record ``step`` as done.

    ``method`` is the resolved distillation method (None: supervised, or noisy_student with ``pseudo``);
    ``teacher`` the checkpoint an online method runs and fidelity is measured against; ``val`` the
    validation images (val_acc in the job's history and metrics, what promotion compares); ``teaching``
    what an online teacher sees (``TeachingConfig``)."""
    from .train_ray import train

    t0 = time.perf_counter()
    init = model_cfg.init
    if init == "teacher":
        init = str(teacher) if teacher is not None else None
    job = TrainJob(
        spec=spec_for(model_cfg, cfg.data, classes),
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        labeled=labeled,
        test=test,
        out_dir=out,
        pseudo=pseudo,
        student=cfg.student if pseudo is not None else None,
        seed=cfg.seed + generation,
        device=cfg.device,
        generation=generation,
        role=role,
        config=_cfg_dict(job_cfg or cfg),
        progress=progress,
        method=method,
        teacher_ckpt=str(teacher) if teacher is not None else None,
        val=val,
        teaching=teaching,
        init_ckpt=init,
    )
    metrics = train(job, cfg.ray)
    run.mark_done(step, time.perf_counter() - t0, [out / "model.pt", out / "metrics.json", out / "history.csv"],
                  test_acc=metrics.get("test_acc"), model=model_cfg.name)
    return metrics


# --------------------------------------------------------------------------------------------------
# generation 0 and baselines


def train_teacher(run: RunDir, cfg: ExperimentConfig, force: bool = False, progress: bool = True) -> dict:
    """Train the generation-0 teacher on the labeled images only."""
    step = step_name(0, "teacher")
    out = run.teacher_dir()
    if run.is_done(step) and not force:
        return read_json(out / "metrics.json")
    data = load_data(cfg)
    record_conditions(run, data)
    held = f" ({len(data.val)} more held out for validation)" if data.val is not None else " (no validation split)"
    _log(f"[gen 0] teacher {cfg.teacher.name} on {len(data.labeled)} labeled images{held}")
    return _train_step(run, cfg, step, out, model_cfg=cfg.teacher, train_cfg=cfg.teacher_train, labeled=data.labeled,
                       test=data.test, classes=data.classes, generation=0, role="teacher", progress=progress, val=data.val)


def train_baseline(run: RunDir, cfg: ExperimentConfig, role: str, labels_per_class: Optional[int], progress: bool = True,
                   force: bool = False, epochs: Optional[int] = None, loader_workers: Optional[int] = None) -> dict:
    """A supervised-only reference in ``baselines/<role>``: ``supervised`` (the config's labels, the
    largest ladder model) or ``oracle`` (every training image labeled).

    Trained with ``teacher_train`` (its epochs replaced by ``epochs`` when given: 60 times more images
    per epoch make the oracle's epochs a different budget; its ``num_workers`` by ``loader_workers``, a
    setting of this machine that the frozen config does not record)."""
    from dataclasses import replace

    step = f"baselines/{role}"
    out = run.baseline_dir(role)
    if run.is_done(step) and not force:
        return read_json(out / "metrics.json")
    data_cfg = replace(cfg.data, labels_per_class=labels_per_class or cfg.data.labels_per_class)
    data = create_data(data_cfg)
    model_cfg = cfg.student.ladder[-1]
    train_cfg = replace(cfg.teacher_train, epochs=epochs or cfg.teacher_train.epochs)
    if loader_workers is not None:
        train_cfg = replace(train_cfg, num_workers=loader_workers)
    _log(f"[baseline] {role}: {model_cfg.name} on {len(data.labeled)} labeled images, {train_cfg.epochs} epochs")
    return _train_step(run, cfg, step, out, model_cfg=model_cfg, train_cfg=train_cfg,
                       labeled=data.labeled, test=data.test, classes=data.classes, generation=0, role=role,
                       progress=progress, job_cfg=replace(cfg, data=data_cfg))


# --------------------------------------------------------------------------------------------------
# one generation


def _step_command(run: RunDir, g: int, step: str) -> str:
    """The CLI command that runs ``step`` of generation ``g`` (the student command also evaluates and promotes)."""
    if step == "teacher":
        return f"noisystudent teacher {run.config_path} --run-dir {run.root}"
    return f"noisystudent {step if step in ('label', 'select') else 'student'} {run.root} --generation {g}"


def teacher_checkpoint(run: RunDir, g: int) -> Path:
    """The checkpoint that labels generation ``g``: the promoted model of generation ``g - 1``.

    Raises :class:`UserError` when it does not exist yet, naming the missing model and the command that
    makes it (the next unfinished step, and ``noisystudent run`` for every missing step at once)."""
    ckpt = run.teacher_of(g)
    if ckpt.is_file():
        return ckpt
    prev = g - 1
    who = "teacher" if prev == 0 else "student"
    if run.is_done(step_name(prev, who)):
        cmd = _step_command(run, prev, who)
        raise UserError(f"generation {prev}'s {who} is recorded as done but its checkpoint {ckpt} is missing; "
                        f"train it again with `{cmd} --force`")
    # the earliest generation whose model is missing: every later one needs it
    first = next(h for h in range(prev + 1) if not run.is_done(step_name(h, "teacher" if h == 0 else "student")))
    nxt = _step_command(run, first, run.first_missing_step(first) or "student")
    if first == prev:
        how = f"its next step is `{nxt}`"
    else:
        how = f"the run has models up to generation {first - 1}; the next step is `{nxt}`"
    all_at_once = f"noisystudent run {run.config_path} --run-dir {run.root} --generations {prev}"
    raise UserError(f"generation {prev} has no {who} yet ({ckpt} is missing) to label generation {g}; {how}, "
                    f"or make every missing step up to generation {prev} with `{all_at_once}`")


def _model_name(run: RunDir, ckpt: Path) -> tuple[Optional[int], str]:
    """``(generation, "generation G teacher|student")`` of a checkpoint in the run, else ``(None, path)``."""
    try:
        rel = Path(ckpt).resolve().relative_to(run.root.resolve())
    except ValueError:
        return None, str(ckpt)
    head = rel.parts[0]
    if head.startswith("gen-") and head[4:].isdigit() and len(rel.parts) > 2:
        return int(head[4:]), f"generation {int(head[4:])} {rel.parts[1]}"
    return None, str(rel)


def _warn(message: str, category) -> None:
    import warnings

    warnings.warn(message, category, stacklevel=3)


def _warn_near_chance(run: RunDir, g: int, ckpt: Path, val_acc: Optional[float], val_images: Optional[int],
                      num_classes: int) -> None:
    from noisystudent.errors import PseudoLabelWarning

    from .promotion import NEAR_CHANCE, near_chance

    if near_chance(val_acc, num_classes):
        _warn(f"generation {g} is labeled by the {_model_name(run, ckpt)[1]}, which is near chance on validation: "
              f"val_acc {val_acc:.4f} on {val_images} images with {num_classes} classes (chance {1 / num_classes:.4f}, "
              f"warning below {NEAR_CHANCE:g}x chance); most of its pseudo-labels will be wrong. A training budget "
              "too small (teacher_train.total_steps) or a learning rate too high are the usual causes", PseudoLabelWarning)


def _warn_selection(g: int, summary: dict, df, classes: list[str], threshold: float) -> None:
    """Warn when selection kept no pseudo-label at all, or none of some class. The numbers come from the
    summary (``max_confidence``, ``rows_in``), or from ``df`` (the labels) when given instead."""
    from noisystudent.errors import PseudoLabelWarning

    top = summary.get("max_confidence")
    rows_in = summary.get("rows_in")
    if df is not None:
        top = float(df["confidence"].max()) if len(df) else None
        rows_in = len(df)
    top = float("nan") if top is None else float(top)
    if summary["rows_selected"] == 0:
        _warn(f"generation {g}: no pseudo-label was kept (pseudo_labels.threshold={threshold:g}, the most confident "
              f"of {rows_in} is {top:.4f}); the student learns from the labeled images alone. Lower "
              "pseudo_labels.threshold, or train a better teacher", PseudoLabelWarning)
        return
    empty = summary.get("empty_classes") or []
    if empty:
        names = ", ".join(repr(classes[c]) if c < len(classes) else str(c) for c in empty[:10])
        _warn(f"generation {g}: no pseudo-label of class(es) {names} was kept (pseudo_labels.threshold={threshold:g}); "
              f"the student sees those classes only in the labeled images ({len(empty)} of {len(classes)} classes "
              "empty). Lower pseudo_labels.threshold, or train a better teacher", PseudoLabelWarning)


def label(run: RunDir, cfg: ExperimentConfig, g: int, teachers: Optional[list[str]] = None, force: bool = False,
          progress: bool = True) -> dict:
    """The teacher (or an ensemble of teachers) labels every unlabeled image with Ray Data."""
    from pseudo_labels import label_images

    from .ray_runtime import init_ray

    step = step_name(g, "label")
    out = run.labels_dir(g)
    if run.is_done(step) and not force:
        return read_json(out / "summary.json")
    ckpts = [Path(t) for t in teachers] if teachers else [teacher_checkpoint(run, g)]
    data = load_data(cfg)
    streaming = hasattr(data.unlabeled, "read_partition")
    if data.unlabeled is None or (not streaming and len(data.unlabeled) == 0):
        raise UserError("config field 'data.unlabeled': no unlabeled images to pseudo-label")
    for c in ckpts:
        ck = load_checkpoint(c, expected_classes=data.classes)  # fail early, in the driver, with a clear message
        _warn_near_chance(run, g, c, ck.metrics.get("val_acc"), ck.metrics.get("val_images"), len(data.classes))
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    pl = cfg.pseudo_labels
    t0 = time.perf_counter()
    what = f"{data.unlabeled.num_partitions} partitions" if streaming else f"{len(data.unlabeled)} images"
    _log(f"[gen {g}] labeling {what} with {', '.join(c.parent.name for c in ckpts)}")
    summary = label_images(
        data.unlabeled,
        [str(c) for c in ckpts],
        out,
        temperature=pl.temperature,
        topk=pl.topk,
        batch_size=pl.batch_size,
        num_actors=pl.num_actors,
        num_gpus_per_actor=pl.num_gpus_per_actor,
        num_cpus_per_actor=pl.num_cpus_per_actor,
        force=force,
        progress=progress,
    )
    run.mark_done(step, time.perf_counter() - t0, [out / "summary.json"], rows=summary.get("rows"),
                  rejected=summary.get("rejected"), teachers=[str(c) for c in ckpts])
    return summary


def _truth_lookup(source, class_names):
    """``ids -> hidden labels`` (indices into ``class_names``, -1 unknown) for the selection's accuracy
    figures, or None when the source hides no labels (a streaming source never does)."""
    if source is None or getattr(source, "hidden_labels", None) is None or not hasattr(source, "positions"):
        return None
    from pseudo_labels import true_labels

    return lambda ids: true_labels(source, ids, class_names)


def select(run: RunDir, cfg: ExperimentConfig, g: int, force: bool = False) -> dict:
    """Confidence filter and per-class balancing of generation ``g``'s labels into ``selected/``, streamed
    shard by shard (:func:`pseudo_labels.selection_io.select_folder`): never one frame of every label."""
    from pseudo_labels import read_metadata
    from pseudo_labels.selection_io import select_folder

    step = step_name(g, "select")
    out = run.selected_dir(g)
    if run.is_done(step) and not force:
        return read_json(out / "summary.json")
    if not run.is_done(step_name(g, "label")):
        raise UserError(f"generation {g} has no finished labels; run `noisystudent label {run.root} --generation {g}` first")
    data = load_data(cfg)
    t0 = time.perf_counter()
    labels_dir = run.labels_dir(g)
    meta = read_metadata(labels_dir)
    pl = cfg.pseudo_labels
    summary = select_folder(labels_dir, out, threshold=pl.threshold, per_class=pl.per_class,
                            truth=_truth_lookup(data.unlabeled, meta.class_names))
    _log(f"[gen {g}] selected {summary['rows_selected']} of {summary['rows_in']} pseudo-labels "
         f"({summary['weighted_rows_selected']} after balancing duplicates)")
    _warn_selection(g, summary, None, meta.class_names, pl.threshold)
    run.mark_done(step, time.perf_counter() - t0, [out / "summary.json"])
    return summary


def pseudo_set(run: RunDir, cfg: ExperimentConfig, g: int) -> PseudoLabeledSet:
    """Generation ``g``'s selected pseudo-labels as a training set: the top-k classes and probabilities as
    stored (expanded to dense rows a batch at a time by the loader) and the duplicate counts, read from
    Parquet as Arrow columns (no dense ``(N, C)`` matrix, no frame of rows)."""
    from pseudo_labels import read_metadata
    from pseudo_labels.selection_io import read_selection_targets

    data = load_data(cfg)
    folder = run.selected_dir(g)
    meta = read_metadata(folder)
    ids, classes, probs, weights = read_selection_targets(folder, meta)  # shard by shard: no whole-table peak
    src = selected_source(data.unlabeled, ids, g)
    return PseudoLabeledSet(source=src, topk_classes=classes, topk_probs=probs, num_classes=meta.num_classes,
                            hard=not cfg.pseudo_labels.soft, weights=weights)


def selected_source(unlabeled, image_ids, g: int):
    """The images the student reads for the selected ``image_ids``: a subset of an in-memory source, or
    (streaming sources with files) a source over those files alone. WebDataset and Parquet-bytes sources
    have no random access to an image, so a student cannot train on their selection yet (UserError)."""
    from noisystudent.data.streaming import StreamSource, selected_files

    if isinstance(unlabeled, StreamSource):
        return selected_files(unlabeled, image_ids)
    positions = unlabeled.positions(image_ids.to_pylist() if hasattr(image_ids, "to_pylist") else image_ids)
    if (positions < 0).any():
        ids = np.asarray(image_ids.to_pylist() if hasattr(image_ids, "to_pylist") else image_ids, dtype=object)
        missing = ids[positions < 0]
        raise UserError(f"selected pseudo-labels of generation {g} name {len(missing)} images not in the unlabeled source (e.g. {missing[0]})")
    return unlabeled.subset(positions)


def train_student(run: RunDir, cfg: ExperimentConfig, g: int, force: bool = False, progress: bool = True) -> dict:
    """Train generation ``g``'s noised student on labeled + selected pseudo-labeled images."""
    step = step_name(g, "student")
    out = run.student_dir(g)
    if run.is_done(step) and not force:
        return read_json(out / "metrics.json")
    if not run.is_done(step_name(g, "select")):
        raise UserError(f"generation {g} has no selected pseudo-labels; run `noisystudent select {run.root} --generation {g}` first")
    data = load_data(cfg)
    model_cfg = cfg.student_model(g)
    pseudo = pseudo_set(run, cfg, g)
    _log(f"[gen {g}] student {model_cfg.name} (drop {model_cfg.drop_rate}, drop path {model_cfg.drop_path_rate}, "
         f"RandAugment n={model_cfg.noise.randaugment_n} m={model_cfg.noise.randaugment_m}) on {len(data.labeled)} labeled + "
         f"{int(pseudo.weights.sum())} pseudo-labeled images")
    method = cfg.student.method_for(model_cfg)
    if method["name"] != "noisy_student":
        _log(f"[gen {g}] distillation method {method['name']} " + " ".join(f"{k}={v}" for k, v in method.items() if k != "name"))
    return _train_step(run, cfg, step, out, model_cfg=model_cfg, train_cfg=cfg.student.train, labeled=data.labeled,
                       test=data.test, classes=data.classes, generation=g, role="student", progress=progress, pseudo=pseudo,
                       method=method, teacher=teacher_checkpoint(run, g), val=data.val, teaching=cfg.student.teaching)


def distill(run: RunDir, cfg: ExperimentConfig, force: bool = False, progress: bool = True) -> dict:
    """One student (``student.ladder[0]``, ``student.train``) from ``distill.teacher`` on the labeled images,
    with ``distill.method``: model compression, the common case of distillation. Resumable."""
    step = "distill/student"
    out = run.distill_dir()
    if run.is_done(step) and not force:
        return read_json(out / "metrics.json")
    method = cfg.distill.method
    if cfg.distill.teacher is None and method["name"] != "supervised":
        raise UserError("config field 'distill.teacher': no teacher checkpoint; pass --teacher CKPT "
                        "(or --method supervised for the no-teacher baseline)")
    data = load_data(cfg)
    record_conditions(run, data)
    teacher = Path(cfg.distill.teacher) if cfg.distill.teacher else None
    if teacher is not None:
        load_checkpoint(teacher, expected_classes=data.classes)  # fail early, in the driver, naming the file
    model_cfg = cfg.student.ladder[0]
    from noisystudent.distill import get_method

    mode = cfg.distill.teaching.mode
    _log(f"[distill] {model_cfg.name} from {teacher or 'no teacher'} with {method['name']}"
         + (f" ({mode} teaching)" if get_method(method["name"]).teacher_for(method) == "online" else "")
         + f" on {len(data.labeled)} labeled images")
    return _train_step(run, cfg, step, out, model_cfg=model_cfg, train_cfg=cfg.student.train, labeled=data.labeled,
                       test=data.test, classes=data.classes, generation=0, role="distill", progress=progress,
                       method=method, teacher=teacher, val=data.val, teaching=cfg.distill.teaching)


def evaluate_generation(run: RunDir, cfg: ExperimentConfig, g: int, force: bool = False) -> dict:
    """Gather generation ``g``'s figures into ``gen-g/metrics.json``: test accuracy, pseudo-label accuracy, timings."""
    step = step_name(g, "evaluate")
    path = run.gen(g) / "metrics.json"
    if run.is_done(step) and not force:
        return read_json(path)
    t0 = time.perf_counter()
    st = run.state().get("steps", {})
    student = read_json(run.student_dir(g) / "metrics.json")
    labels = read_json(run.labels_dir(g) / "summary.json")
    selected = read_json(run.selected_dir(g) / "summary.json")
    teacher_ckpt = run.teacher_of(g)  # the promoted model of g - 1: not always g - 1's own
    teacher_metrics = read_json(teacher_ckpt.parent / "metrics.json")
    out = {
        "generation": g,
        "model": cfg.student_model(g).name,
        "teacher_model": teacher_metrics.get("model"),
        "test_acc": student.get("test_acc"),
        "teacher_test_acc": teacher_metrics.get("test_acc"),
        "val_acc": student.get("val_acc"),
        "teacher_val_acc": teacher_metrics.get("val_acc"),
        "val_images": student.get("val_images"),
        **taught_by(run, g),
        **promotion_fields(run.state().get("promotions", {}).get(str(g))),
        "pseudo_label_acc": labels.get("pseudo_label_accuracy"),
        "pseudo_label_acc_selected": selected.get("accuracy_selected_weighted"),
        "pseudo_labels": labels.get("rows"),
        "rejected": labels.get("rejected"),
        "selected": selected.get("rows_selected"),
        "selected_weighted": selected.get("weighted_rows_selected"),
        "labeling_images_per_s": labels.get("throughput_images_per_s"),
        "student_images_per_s": student.get("images_per_s"),
        "seconds": {s.split("/")[1]: st[s]["seconds"] for s in st if s.startswith(f"gen-{g}/")},
    }
    write_json(path, out)
    run.mark_done(step, time.perf_counter() - t0, [path])
    return out


def taught_by(run: RunDir, g: int) -> dict:
    """Which model taught generation ``g`` and why: ``taught_by`` (``gen-K/teacher|student``),
    ``taught_by_generation`` K and ``taught_by_reason`` (the promotion decision of ``g - 1``)."""
    ckpt = run.teacher_of(g)
    k, name = _model_name(run, ckpt)
    rel = str(ckpt.parent.relative_to(run.root)) if k is not None else str(ckpt)
    if g == 1:
        why = "the generation 0 teacher, trained on the labeled images"
    else:
        rec = run.state().get("promotions", {}).get(str(g - 1))
        why = rec["reason"] if rec else f"the student of generation {g - 1} (promoted before decisions were recorded)"
    return {"taught_by": rel, "taught_by_generation": k, "taught_by_reason": why}


def promotion_fields(rec: Optional[dict]) -> dict:
    if not rec:
        return {}
    return {"promoted": rec["promoted"], "promotion_policy": rec["policy"], "promotion_signal": rec["signal"],
            "promotion_reason": rec["reason"]}


def _val_correct(data: DataBundle, ckpt: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, right)``: the validation images that decoded and whether ``ckpt``'s top-1 is right on each,
    the model seeing its own eval view. What validation accuracy and the paired comparison are made of."""
    from noisystudent.evaluate import predict_probs
    from noisystudent.transforms import create_transform

    ck = load_checkpoint(ckpt, expected_classes=data.classes)
    spec = ck.spec
    tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    idx, probs = predict_probs(ck.build_model(), data.val, tf, progress=False, desc="validate")
    return idx, probs.argmax(1) == np.asarray(data.val.labels)[idx]


def _val_acc(cfg: ExperimentConfig, ckpt: Path) -> tuple[Optional[float], int]:
    """Validation accuracy of a checkpoint and the number of validation images: from its metrics.json,
    else measured now (a model trained before validation was recorded); ``(None, 0)`` without validation."""
    mfile = ckpt.parent / "metrics.json"
    m = read_json(mfile) if mfile.is_file() else {}
    if m.get("val_acc") is not None:
        return float(m["val_acc"]), int(m.get("val_images") or 0)
    data = load_data(cfg)
    if data.val is None:
        return None, 0
    _, right = _val_correct(data, ckpt)
    return (float(right.mean()) if len(right) else 0.0), len(data.val)


def _val_discordance(cfg: ExperimentConfig, student_ckpt: Path, teacher_ckpt: Path) -> Optional[tuple[int, int]]:
    """(validation images only the teacher gets right, images only the student gets right), each model on its
    own eval view; ``None`` without validation images. What :func:`pipelines.promotion.mcnemar_p` tests."""
    data = load_data(cfg)
    if data.val is None or len(data.val) == 0:
        return None
    ok = []
    for ckpt in (teacher_ckpt, student_ckpt):
        idx, right = _val_correct(data, ckpt)
        full = np.zeros(len(data.val), dtype=bool)  # an image that does not decode counts as wrong for both
        full[idx] = right
        ok.append(full)
    teacher_ok, student_ok = ok
    return int((teacher_ok & ~student_ok).sum()), int((student_ok & ~teacher_ok).sum())


def promote(run: RunDir, g: int, cfg: Optional[ExperimentConfig] = None) -> dict:
    """Decide which model teaches generation ``g + 1`` (``student.promote``, see :mod:`pipelines.promotion`)
    and record it: ``state.json`` (``teachers``, ``promotions``) and ``gen-g/metrics.json``. Returns the record."""
    from noisystudent.errors import PromotionWarning

    from .promotion import decide

    step = step_name(g, "promote")
    if run.is_done(step):
        return run.state().get("promotions", {}).get(str(g), {})
    cfg = cfg or run.load_config()
    ckpt = run.student_dir(g) / "model.pt"
    if not ckpt.is_file():
        raise UserError(f"generation {g} has no student checkpoint to promote ({ckpt})")
    teacher = run.teacher_of(g)
    student_val, n_val = _val_acc(cfg, ckpt)
    policy = cfg.student.promote
    teacher_val, _ = _val_acc(cfg, teacher) if policy != "always" else (None, 0)
    discordant = None
    if (policy != "always" and student_val is not None and teacher_val is not None
            and student_val < teacher_val):  # what a refusal rests on, recorded whatever promote_alpha says
        discordant = _val_discordance(cfg, ckpt, teacher)
    rec = decide(cfg.student.promote, g, student_val, teacher_val, n_val, _model_name(run, teacher)[1],
                 discordant=discordant, alpha=cfg.student.promote_alpha, margin=cfg.student.promote_margin)
    chosen = ckpt if rec["promoted"] == "student" else teacher
    rec["next_teacher"] = str(chosen.parent.relative_to(run.root)) if _model_name(run, chosen)[0] is not None else str(chosen)
    run.promote(g, chosen, rec)
    gm = run.gen(g) / "metrics.json"
    if gm.is_file():
        write_json(gm, {**read_json(gm), **promotion_fields(rec)})
    _log(f"[gen {g}] promotion ({rec['policy']}): {rec['reason']}")
    if rec["promoted"] == "teacher":
        _warn(f"generation {g}: {rec['reason']}", PromotionWarning)
    run.mark_done(step, 0.0, [chosen], promoted=rec["promoted"], teacher_of_next=rec["next_teacher"])
    return rec


def _cfg_dict(cfg: ExperimentConfig) -> dict:
    from noisystudent.config import to_dict

    return to_dict(cfg)
