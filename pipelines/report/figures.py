"""The run report's figures: one function each, from the run's data to a :class:`~.html.Plot` (drawn by
:mod:`.plots`) and the notes that say why it is left out or partial. Each takes a :class:`~.rundata.RunData`
and returns ``(plot or None, notes)``."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from noisystudent.data.hidden import has_hidden_labels

from . import plots
from .html import Plot
from .rundata import RunData, gen_value
from .tables import fmt

SAMPLE_IMAGES = 10
NOISED_VERSIONS = 2


def accuracy(run: RunData) -> tuple[Optional[Plot], list[str]]:
    acc: dict[int, float] = {}
    if run.teacher is not None and run.teacher.metrics and run.teacher.metrics.get("test_acc") is not None:
        acc[0] = float(run.teacher.metrics["test_acc"])
    pl: dict[int, float] = {}
    for g in run.generations:
        v = gen_value(g, "test_acc")
        if v is not None:
            acc[g.generation] = float(v)
        p = gen_value(g, "pseudo_label_acc")
        if p is not None:
            pl[g.generation] = float(p)
    base = {role: float(r.metrics["test_acc"]) for role, r in run.baselines.items()
            if r.metrics and r.metrics.get("test_acc") is not None}
    if not acc:
        return None, ["Test accuracy per generation: left out, no model has finished training yet."]
    png = plots.figure_png(plots.accuracy_plot(acc, pl, base))
    missing = [r for r in ("supervised", "oracle") if r not in base]
    notes = [f"No {' or '.join(missing)} baseline in this run (run with baselines to draw them)."] if missing else []
    return Plot("accuracy.png", "Test accuracy per generation", png,
                "Generation 0 is the teacher; dashed: accuracy of the pseudo-labels each generation trained on."), notes


def confidence(run: RunData) -> tuple[Optional[Plot], list[str]]:
    conf = {g.generation: g.labels["confidence"].to_numpy() for g in run.generations if g.labels is not None}
    if not conf:
        return None, ["Confidence histograms: left out, no generation has finished labeling."]
    thr = run.cfg.pseudo_labels.threshold
    png = plots.figure_png(plots.confidence_plot(conf, thr))
    return Plot("confidence.png", "Pseudo-label confidence per generation", png,
                f"Teacher max probability of every unlabeled image; dashed: the selection threshold ({thr:g})."), []


def class_balance(run: RunData) -> tuple[Optional[Plot], list[str]]:
    per_gen: dict[int, dict[str, Any]] = {}
    n = len(run.classes)
    for g in run.generations:
        series: dict[str, Any] = {}
        if g.label_summary and g.label_summary.get("class_histogram") is not None:
            series["all pseudo-labels"] = g.label_summary["class_histogram"]
        elif g.labels is not None:
            series["all pseudo-labels"] = np.bincount(g.labels["label"].to_numpy(np.int64), minlength=n)
        ss = g.selection_summary or {}
        if ss.get("per_class_before") is not None:
            series["above threshold"] = ss["per_class_before"]
        if ss.get("per_class_after") is not None:
            series["after balancing (with duplicates)"] = ss["per_class_after"]
        if series:
            per_gen[g.generation] = series
    if not per_gen:
        return None, ["Class histograms: left out, no generation has pseudo-labels yet."]
    classes = run.classes or [str(i) for i in range(max(len(v) for s in per_gen.values() for v in s.values()))]
    png = plots.figure_png(plots.class_balance_plot(per_gen, classes))
    notes = [f"Generation {g}: selection has not run yet, so only the teacher's class histogram is shown."
             for g, s in per_gen.items() if "after balancing (with duplicates)" not in s]
    return Plot("class_balance.png", "Pseudo-labels per class before and after balancing", png,
                "Balancing keeps the K most confident images of a large class and duplicates a small class up to K."), notes


def calibration(run: RunData) -> tuple[Optional[Plot], list[str]]:
    if run.data is None:
        return None, ["Calibration: left out, the run's data set is not available here."]
    if not has_hidden_labels(run.data.unlabeled):
        return None, ["Calibration: left out, the unlabeled images have no hidden true labels (only Fashion-MNIST-style "
                      "splits have them)."]
    per_gen = {}
    for g in run.generations:
        if g.labels is None or "true_label" not in g.labels:
            continue
        known = g.labels["true_label"].to_numpy() >= 0
        if known.any():
            lab = g.labels[known]
            per_gen[g.generation] = (lab["confidence"].to_numpy(), (lab["label"] == lab["true_label"]).to_numpy())
    if not per_gen:
        return None, ["Calibration: left out, no generation has finished labeling images with known true labels."]
    png = plots.figure_png(plots.calibration_plot(per_gen))
    return Plot("calibration.png", "Pseudo-label accuracy against teacher confidence (reliability diagram)", png,
                "Bars: share of correct pseudo-labels per confidence bin (image counts inside); on the diagonal the "
                "teacher is calibrated. ECE: expected calibration error."), []


def curves(run: RunData) -> tuple[Optional[Plot], list[str]]:
    hist = [(m.title, m.history) for m in run.models() if m.history is not None]
    if not hist:
        return None, ["Training curves: left out, no model has a history.csv yet."]
    png = plots.figure_png(plots.curves_plot(hist))
    return Plot("curves.png", "Loss and accuracy per epoch", png,
                "From each model's history.csv; test accuracy where it was evaluated."), []


def confusion(run: RunData) -> tuple[Optional[Plot], list[str]]:
    model = run.last_student()
    notes = []
    if model is None:
        model = run.teacher if (run.teacher is not None and run.teacher.metrics) else None
        if model is not None:
            notes.append("No student has finished yet: the confusion matrix is the teacher's.")
    cm = model.metrics.get("test_confusion_matrix") if model is not None else None
    if not cm:
        return None, ["Confusion matrix: left out, no model has test results yet."]
    title = f"{model.title}: test accuracy {fmt(model.metrics.get('test_acc'))}"
    png = plots.figure_png(plots.confusion_plot(cm, run.classes, title))
    return Plot("confusion.png", f"Confusion matrix of the {model.title}", png,
                "Rows: true class, columns: predicted class; colour: share of the row."), notes


def samples(run: RunData) -> tuple[Optional[Plot], list[str]]:
    from noisystudent.transforms import create_transform, denormalize

    if run.data is None or run.data.labeled is None or len(run.data.labeled) == 0:
        return None, ["Sample images: left out, the run's data set is not available here."]
    src = run.data.labeled
    labels = np.asarray(src.labels) if src.labels is not None else np.zeros(len(src), np.int64)
    picks: list[int] = []
    for c in np.unique(labels):
        picks.append(int(np.flatnonzero(labels == c)[0]))
        if len(picks) == SAMPLE_IMAGES:
            break
    for i in range(len(src)):  # fewer classes than SAMPLE_IMAGES: fill with further images
        if len(picks) >= min(SAMPLE_IMAGES, len(src)):
            break
        if i not in picks:
            picks.append(i)
    cfg, d = run.cfg, run.cfg.data
    last = max([g.generation for g in run.generations if g.started] + [1])
    model = cfg.student_model(last)
    noise = model.noise
    clean_tf = create_transform(d.image_size, d.in_chans, d.mean, d.std, None)
    noisy_tf = create_transform(d.image_size, d.in_chans, d.mean, d.std, noise, seed=cfg.seed)
    images, titles = [], []
    for i in picks:
        try:
            images.append(src.load(i))
        except Exception as exc:  # noqa: BLE001 - an unreadable file is shown as a note, not a crash
            return None, [f"Sample images: left out, labeled image {src.image_id(i)} is unreadable ({exc})."]
        name = run.classes[labels[i]] if 0 <= labels[i] < len(run.classes) else str(labels[i])
        titles.append(name if len(name) <= 14 else name[:13] + "…")
    clean = [denormalize(clean_tf(img), d.mean, d.std) for img in images]
    noised = [[denormalize(noisy_tf(img), d.mean, d.std) for img in images] for _ in range(NOISED_VERSIONS)]
    label = (f"generation {last} student: RandAugment n={noise.randaugment_n} m={noise.randaugment_m:g}, "
             f"flip={'on' if noise.hflip else 'off'}, crop padding {noise.crop_padding}, erasing p={noise.random_erasing:g}")
    png = plots.figure_png(plots.samples_plot(clean, noised, titles, label))
    return Plot("samples.png", "Labeled images and their RandAugment-noised versions", png,
                f"Top row: what the teacher sees (clean); below: {NOISED_VERSIONS} draws of the {label}."), []
