"""The pseudo-label steps: ``label`` (the teacher, or an ensemble, labels every unlabeled image with Ray
Data) and ``select`` (confidence filter and per-class balance), and reading the selection back as the
student's training set."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from noisystudent.checkpoint import load_checkpoint
from noisystudent.data.hidden import has_hidden_labels, true_labels
from noisystudent.data.protocols import PartitionedSource, RandomAccessSource
from noisystudent.errors import ConfigError, PseudoLabelWarning, UserError
from noisystudent.engine import PseudoLabeledSet

from ..verify import folder_artifacts
from .base import Outcome, Step, StepContext, log
from .data import load_data
from .lineage import model_name, teacher_checkpoint, warn

if TYPE_CHECKING:
    from pipelines.config import ExperimentConfig
    from pipelines.state import RunDir

SUMMARY = "summary.json"


def _warn_near_chance(run: "RunDir", g: int, ckpt: Path, val_acc: Optional[float], val_images: Optional[int],
                      num_classes: int) -> None:
    from pipelines.promotion import NEAR_CHANCE, near_chance

    if near_chance(val_acc, num_classes):
        warn(f"generation {g} is labeled by the {model_name(run, ckpt)[1]}, which is near chance on validation: "
             f"val_acc {val_acc:.4f} on {val_images} images with {num_classes} classes (chance {1 / num_classes:.4f}, "
             f"warning below {NEAR_CHANCE:g}x chance); most of its pseudo-labels will be wrong. A training budget "
             "too small (teacher_train.total_steps) or a learning rate too high are the usual causes", PseudoLabelWarning)


def _label(ctx: StepContext) -> Outcome:
    """Label generation ``g``'s unlabeled images with the ``teachers`` option's checkpoints, else the
    promoted model of ``g - 1``; resumes a killed job from its finished shards."""
    from pseudo_labels import label_images
    from pipelines.ray_runtime import init_ray

    run, cfg, g = ctx.run, ctx.cfg, ctx.g
    out = run.labels_dir(g)
    ckpts, weights = _label_teachers(run, cfg, g, ctx.options.get("teachers"), ctx.options.get("weights"))
    data = load_data(cfg)
    streaming = isinstance(data.unlabeled, PartitionedSource)
    if data.unlabeled is None or (not streaming and len(data.unlabeled) == 0):
        raise UserError("config field 'data.unlabeled': no unlabeled images to pseudo-label")
    specs = []
    for c in ckpts:
        ck = load_checkpoint(c, expected_classes=data.classes)  # fail early, in the driver, with a clear message
        _warn_near_chance(run, g, c, ck.metrics.get("val_acc"), ck.metrics.get("val_images"), len(data.classes))
        specs.append(ck.spec)
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    pl = cfg.pseudo_labels
    what = f"{data.unlabeled.num_partitions} partitions" if streaming else f"{len(data.unlabeled)} images"
    log(f"[gen {g}] labeling {what} with {', '.join(c.parent.name for c in ckpts)}")
    from noisystudent.data.paired import view_of

    teacher_view = view_of(data.unlabeled, specs[0].modality)  # the teacher reads its own modality
    summary = label_images(teacher_view, [str(c) for c in ckpts], out, temperature=pl.temperature, topk=pl.topk,
                           batch_size=pl.batch_size, num_actors=pl.num_actors, num_gpus_per_actor=pl.num_gpus_per_actor,
                           num_cpus_per_actor=pl.num_cpus_per_actor, force=ctx.force, progress=ctx.progress,
                           weights=weights)
    return Outcome(summary, folder_artifacts(out), {"rows": summary.get("rows"), "rejected": summary.get("rejected"),
                                              "teachers": [str(c) for c in ckpts]})


def _label_teachers(run: "RunDir", cfg: "ExperimentConfig", g: int, teachers: Optional[list[str]],
                    weights: Optional[list[float]]) -> tuple[list[Path], Optional[list[float]]]:
    """The checkpoints that label generation ``g`` and their weights (None: equal), checked: the ``teachers``
    option (``--teacher``), else ``pseudo_labels.teachers`` when set, else the promoted model of g - 1."""
    from noisystudent.distill.ensemble import normalize_weights

    if teachers:
        ckpts = [Path(t) for t in teachers]
        if weights is not None:
            normalize_weights(weights, len(ckpts), "--weights")
        return ckpts, weights
    if weights is not None:
        raise ConfigError("--weights", "weighs the --teacher checkpoints; give them too")
    refs = cfg.pseudo_labels.teachers
    if not refs:
        return [teacher_checkpoint(run, g)], None
    ckpts = [teacher_checkpoint(run, g) if r.path == "teacher" else Path(r.path) for r in refs]
    return ckpts, normalize_weights([r.weight for r in refs], len(refs), "pseudo_labels.teachers")


LABEL = Step("label", _label, lambda run, g: run.labels_dir(g), SUMMARY, missing="finished labels",
             command="noisystudent label {root} --generation {g}")


def _warn_selection(g: int, summary: dict, df, classes: list[str], threshold: float) -> None:
    """Warn when selection kept no pseudo-label at all, or none of some class. The numbers come from the
    summary (``max_confidence``, ``rows_in``), or from ``df`` (the labels) when given instead."""
    top = summary.get("max_confidence")
    rows_in = summary.get("rows_in")
    if df is not None:
        top = float(df["confidence"].max()) if len(df) else None
        rows_in = len(df)
    top = float("nan") if top is None else float(top)
    if summary["rows_selected"] == 0:
        warn(f"generation {g}: no pseudo-label was kept (pseudo_labels.threshold={threshold:g}, the most confident "
             f"of {rows_in} is {top:.4f}); the student learns from the labeled images alone. Lower "
             "pseudo_labels.threshold, or train a better teacher", PseudoLabelWarning)
        return
    empty = summary.get("empty_classes") or []
    if empty:
        names = ", ".join(repr(classes[c]) if c < len(classes) else str(c) for c in empty[:10])
        warn(f"generation {g}: no pseudo-label of class(es) {names} was kept (pseudo_labels.threshold={threshold:g}); "
             f"the student sees those classes only in the labeled images ({len(empty)} of {len(classes)} classes "
             "empty). Lower pseudo_labels.threshold, or train a better teacher", PseudoLabelWarning)


def _truth_lookup(source, class_names):
    """``ids -> hidden labels`` (indices into ``class_names``, -1 unknown) for the selection's accuracy
    figures, or None when the source hides no labels (a streaming source never does)."""
    if not isinstance(source, RandomAccessSource) or not has_hidden_labels(source):
        return None
    return lambda ids: true_labels(source, ids, class_names)


def _select(ctx: StepContext) -> Outcome:
    """Confidence filter and per-class balancing of generation ``g``'s labels into ``selected/``, streamed
    shard by shard (:func:`pseudo_labels.streamed_select.select_folder`): never one frame of every label."""
    from pseudo_labels import read_metadata
    from pseudo_labels.streamed_select import select_folder

    run, cfg, g = ctx.run, ctx.cfg, ctx.g
    out = run.selected_dir(g)
    data = load_data(cfg)
    labels_dir = run.labels_dir(g)
    meta = read_metadata(labels_dir)
    pl = cfg.pseudo_labels
    summary = select_folder(labels_dir, out, threshold=pl.threshold, per_class=pl.per_class,
                            truth=_truth_lookup(data.unlabeled, meta.class_names))
    log(f"[gen {g}] selected {summary['rows_selected']} of {summary['rows_in']} pseudo-labels "
        f"({summary['weighted_rows_selected']} after balancing duplicates)")
    _warn_selection(g, summary, None, meta.class_names, pl.threshold)
    return Outcome(summary, folder_artifacts(out))


SELECT = Step("select", _select, lambda run, g: run.selected_dir(g), SUMMARY, needs=(LABEL,),
              missing="selected pseudo-labels", command="noisystudent select {root} --generation {g}")


def pseudo_set(run: "RunDir", cfg: "ExperimentConfig", g: int) -> PseudoLabeledSet:
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
