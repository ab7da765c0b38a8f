"""Build ``report/index.html`` (and its PNGs) from a run folder.

What the report shows is decided here; how a figure looks is in :mod:`.plots`, how the page is laid
out in :mod:`.html`, and what is read from disk in :mod:`.rundata`. A figure whose inputs are
missing (a generation still running, a data set without hidden labels, data not on this machine) is
left out with a note saying why, so ``noisystudent report`` works on any run at any moment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from noisystudent.data.hidden import has_hidden_labels
from noisystudent.io import write_bytes, write_text

from ..steps import TEACHER, baseline_step, gen_folder, generation_of, split_step, step_name, step_order
from . import plots
from .html import Note, Plot, Pre, Section, Table, render_page
from .rundata import RunData, collect, gen_value

# Every PNG the report may write; a rebuild removes those it no longer produces.
PLOT_FILES = ("accuracy.png", "confidence.png", "class_balance.png", "calibration.png", "curves.png",
              "confusion.png", "samples.png")
SAMPLE_IMAGES = 10
NOISED_VERSIONS = 2

SUMMARY_COLUMNS = (
    ("generation", "generation"),
    ("model", "model"),
    ("teacher_model", "teacher"),
    ("taught_by", "taught by"),
    ("val_acc", "val acc"),
    ("teacher_val_acc", "teacher val acc"),
    ("test_acc", "test acc"),
    ("teacher_test_acc", "teacher test acc"),
    ("promoted", "teaches next"),
    ("pseudo_label_acc", "pseudo-label acc"),
    ("pseudo_label_acc_selected", "selected pseudo-label acc"),
    ("pseudo_labels", "pseudo-labels"),
    ("rejected", "rejected"),
    ("selected", "selected"),
    ("selected_weighted", "selected with duplicates"),
    ("labeling_images_per_s", "labeling img/s"),
    ("student_images_per_s", "student img/s"),
    ("seconds", "seconds"),
)
TIMING_COLUMNS = (
    ("step", "step"),
    ("model", "model"),
    ("seconds", "seconds"),
    ("images", "images"),
    ("images_per_s", "images/s"),
    ("detail", "detail"),
    ("finished", "finished"),
)


# Figures a person reads as whole numbers, as ``noisystudent status`` prints them: seconds and images
# per second (with thousands separators). Accuracies and other shares keep 4 places.
WHOLE_FIGURES = frozenset({"seconds", "labeling_images_per_s", "student_images_per_s", "images_per_s"})


def fmt(value: Any, decimals: int = 4, thousands: bool = False) -> str:
    """How every number appears in the report: floats with ``decimals`` places (``thousands``: with
    ``,`` separators), ints as ints, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "-" if not np.isfinite(value) else format(float(value), f"{',' if thousands else ''}.{decimals}f")
    return str(value)


def fmt_figure(key: str, value: Any) -> str:
    """A table cell for the figure ``key``: whole seconds and images/s, everything else as :func:`fmt`."""
    if key in WHOLE_FIGURES:
        return fmt(value, 0, thousands=True)
    return fmt(value)


# --------------------------------------------------------------------------------------------------
# tables


def summary_table(run: RunData) -> Table:
    """One row per generation with the figures of ``gen-G/metrics.json`` (generation 0: the teacher),
    then the baselines."""
    steps = run.state.get("steps", {})
    rows: list[tuple[str, dict[str, str]]] = []
    tm = run.teacher.metrics if run.teacher is not None else None
    if tm is not None:
        rows.append((gen_folder(0), {"generation": "0", "model": fmt(tm.get("model", run.cfg.teacher.name)),
                               "test_acc": fmt(tm.get("test_acc")), "val_acc": fmt(tm.get("val_acc")),
                               "seconds": fmt_figure("seconds", steps.get(step_name(0, TEACHER), {}).get("seconds"))}))
    prev_metrics = tm
    for g in run.generations:
        if not g.started:
            continue
        cells = {k: fmt_figure(k, gen_value(g, k)) for k, _ in SUMMARY_COLUMNS if k not in ("generation", "seconds")}
        cells["generation"] = str(g.generation)
        if cells["model"] == "-":
            cells["model"] = run.cfg.student_model(g.generation).name
        if g.metrics is None and prev_metrics is not None:
            cells["teacher_model"] = fmt(prev_metrics.get("model"))
            cells["teacher_test_acc"] = fmt(prev_metrics.get("test_acc"))
        secs = [v["seconds"] for s, v in steps.items() if generation_of(s) == g.generation and "seconds" in v]
        cells["seconds"] = fmt_figure("seconds", float(sum(secs))) if secs else "-"
        rows.append((gen_folder(g.generation), cells))
        prev_metrics = g.student.metrics if g.student is not None else None
    for role, rec in run.baselines.items():
        m = rec.metrics or {}
        rows.append((f"baseline-{role}", {"generation": f"{role} baseline", "model": fmt(m.get("model")),
                                          "test_acc": fmt(m.get("test_acc")),
                                          "seconds": fmt_figure("seconds", steps.get(baseline_step(role), {}).get("seconds"))}))
    numeric = frozenset(k for k, _ in SUMMARY_COLUMNS if k not in ("generation", "model", "teacher_model", "taught_by",
                                                                   "promoted"))
    return Table(SUMMARY_COLUMNS, rows, numeric=numeric,
                 caption="Values as in gen-G/metrics.json (generation 0: the teacher's metrics.json); "
                         "accuracies are shares in [0, 1]; '-' = not available yet. 'taught by': the model that "
                         "labeled the generation; 'teaches next': whether its student or its teacher teaches the next.")


PROMOTION_COLUMNS = (
    ("generation", "generation"),
    ("taught_by", "taught by"),
    ("policy", "student.promote"),
    ("signal", "decided on"),
    ("student_val_acc", "student val acc"),
    ("teacher_val_acc", "teacher val acc"),
    ("p_value", "McNemar p"),
    ("promoted", "teaches next"),
    ("reason", "why"),
)


def promotion_table(run: RunData) -> Optional[Table]:
    """One row per promotion decision in ``state.json``: which model taught the generation, what the
    decision compared (validation accuracies and their image count; never test accuracy) and its outcome."""
    decisions = run.state.get("promotions", {})
    if not decisions:
        return None
    gens = {g.generation: g for g in run.generations}
    rows = []
    for key in sorted(decisions, key=int):
        d = decisions[key]
        g = gens.get(int(key))
        signal = f"validation, {d.get('val_images')} images" if d.get("signal") == "validation" else "nothing (no validation)"
        rows.append((f"promotion-{key}", {"generation": key, "taught_by": fmt(gen_value(g, "taught_by") if g else None),
                                          "policy": fmt(d.get("policy")), "signal": signal,
                                          "student_val_acc": fmt(d.get("student_val_acc")),
                                          "teacher_val_acc": fmt(d.get("teacher_val_acc")),
                                          "p_value": fmt(d.get("p_value")),
                                          "promoted": fmt(d.get("promoted")), "reason": fmt(d.get("reason"))}))
    return Table(PROMOTION_COLUMNS, rows, numeric=frozenset({"student_val_acc", "teacher_val_acc", "p_value"}),
                 caption="Promotion decisions (state.json 'promotions'): unless_worse (the default) refuses a student "
                         "significantly worse than its teacher on validation (McNemar p below student.promote_alpha: "
                         "one-sided exact test on the same images) or more than student.promote_margin below it; "
                         "if_better refuses every student below; test accuracy is reported, never decided on.")


def timings_table(run: RunData) -> Table:
    """Every finished step of ``state.json`` with its seconds and, where the step processes images,
    how many and how fast."""
    steps = run.state.get("steps", {})
    gens = {g.generation: g for g in run.generations}
    rows = []
    total = 0.0
    for name in sorted(steps, key=step_order):
        info = steps[name]
        g, kind = split_step(name)
        rec = gens.get(g) if g is not None else None
        # one decimal: a table of steps has sub-second ones (evaluate, promote) that whole seconds would show as 0
        cells = {"step": name, "seconds": fmt(info.get("seconds"), 1, thousands=True), "finished": fmt(info.get("finished")),
                 "model": fmt(info.get("model")) if info.get("model") else ""}
        total += float(info.get("seconds") or 0.0)
        metrics = None
        if kind == "teacher" and run.teacher is not None:
            metrics = run.teacher.metrics
        elif kind == "student" and rec is not None and rec.student is not None:
            metrics = rec.student.metrics
        elif name == baseline_step(kind) and kind in run.baselines:
            metrics = run.baselines[kind].metrics
        if metrics is not None:
            per_epoch = int(metrics.get("labeled_images") or 0) + int(metrics.get("pseudo_labeled_images") or 0)
            cells["images"] = fmt(per_epoch) if per_epoch else "-"
            cells["images_per_s"] = fmt_figure("images_per_s", metrics.get("images_per_s"))
            pseudo = int(metrics.get("pseudo_labeled_images") or 0)
            cells["detail"] = (f"{metrics.get('epochs', '?')} epoch(s), {fmt(metrics.get('train_seconds'), 1, thousands=True)} s training"
                               + (f"; images per epoch: {fmt(metrics.get('labeled_images'))} labeled + {pseudo} pseudo-labeled "
                                  "(with duplicates)" if pseudo else "; images per epoch: labeled"))
        elif kind == "label" and rec is not None:
            ls = rec.label_summary or {}
            cells["images"] = fmt(ls.get("rows", info.get("rows")))
            cells["images_per_s"] = fmt_figure("images_per_s", gen_value(rec, "labeling_images_per_s"))
            cells["detail"] = f"{fmt(ls.get('rejected', info.get('rejected')))} rejected, {fmt(ls.get('shards'))} shard(s)"
        elif kind == "select" and rec is not None and rec.selection_summary:
            ss = rec.selection_summary
            cells["images"] = fmt(ss.get("rows_in"))
            cells["detail"] = (f"{fmt(ss.get('rows_after_threshold'))} above threshold, {fmt(ss.get('rows_selected'))} selected "
                               f"({fmt(ss.get('weighted_rows_selected'))} with duplicates), K = {fmt(ss.get('K'))}")
        rows.append((name, cells))
    rows.append(("total", {"step": "total (sum of steps)", "seconds": fmt(total, 1, thousands=True)}))
    numeric = frozenset({"seconds", "images", "images_per_s"})
    return Table(TIMING_COLUMNS, rows, numeric=numeric,
                 caption="From state.json (seconds per step) and each step's metrics or summary (images, throughput).")


# --------------------------------------------------------------------------------------------------
# figures


def _accuracy(run: RunData) -> tuple[Optional[Plot], list[str]]:
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


def _confidence(run: RunData) -> tuple[Optional[Plot], list[str]]:
    conf = {g.generation: g.labels["confidence"].to_numpy() for g in run.generations if g.labels is not None}
    if not conf:
        return None, ["Confidence histograms: left out, no generation has finished labeling."]
    thr = run.cfg.pseudo_labels.threshold
    png = plots.figure_png(plots.confidence_plot(conf, thr))
    return Plot("confidence.png", "Pseudo-label confidence per generation", png,
                f"Teacher max probability of every unlabeled image; dashed: the selection threshold ({thr:g})."), []


def _class_balance(run: RunData) -> tuple[Optional[Plot], list[str]]:
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


def _calibration(run: RunData) -> tuple[Optional[Plot], list[str]]:
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


def _curves(run: RunData) -> tuple[Optional[Plot], list[str]]:
    hist = [(m.title, m.history) for m in run.models() if m.history is not None]
    if not hist:
        return None, ["Training curves: left out, no model has a history.csv yet."]
    png = plots.figure_png(plots.curves_plot(hist))
    return Plot("curves.png", "Loss and accuracy per epoch", png,
                "From each model's history.csv; test accuracy where it was evaluated."), []


def _confusion(run: RunData) -> tuple[Optional[Plot], list[str]]:
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


def _samples(run: RunData) -> tuple[Optional[Plot], list[str]]:
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


# --------------------------------------------------------------------------------------------------


def build_report(run_dir: str | os.PathLike, out_dir: Optional[str | os.PathLike] = None, with_data: bool = True) -> Path:
    """Write ``index.html`` and the PNG plots of a run into ``out_dir`` (default ``RUN_DIR/report``).

    Returns the path of ``index.html``. The page is self-contained (PNGs embedded as data URIs);
    the PNG files beside it are the same images at full size. ``with_data=False`` skips loading the
    data set (no sample images, no calibration), for runs whose images are not on this machine.
    Raises :class:`~noisystudent.errors.UserError` when ``run_dir`` is not a run folder.
    """
    run = collect(run_dir, with_data=with_data)
    out = Path(out_dir) if out_dir is not None else run.root / "report"
    out.mkdir(parents=True, exist_ok=True)

    def figure(section: Section, maker) -> list[Plot]:
        plot, notes = maker(run)
        section.items.extend(Note(n) for n in notes)
        if plot is not None:
            section.items.append(plot)
            return [plot]
        return []

    summary = Section("summary", "Summary per generation", [summary_table(run)])
    promotions = promotion_table(run)
    if promotions is not None:
        summary.items.append(promotions)
    not_started = [g.generation for g in run.generations if not g.started]
    if not_started:
        summary.items.append(Note(f"Generation(s) {', '.join(map(str, not_started))} of "
                                  f"{run.cfg.student.generations} configured have not started yet."))
    accuracy = Section("accuracy", "Accuracy")
    labels = Section("pseudo-labels", "Pseudo-labels")
    training = Section("training", "Training")
    samples = Section("samples", "Noise")
    written: list[Plot] = []
    written += figure(accuracy, _accuracy)
    written += figure(labels, _confidence)
    written += figure(labels, _class_balance)
    written += figure(labels, _calibration)
    written += figure(training, _curves)
    written += figure(training, _confusion)
    written += figure(samples, _samples)
    timings = Section("timings", "Timings and throughput", [timings_table(run)])
    config_text = (run.root / "config.yaml").read_text(encoding="utf-8")
    config = Section("config", "Configuration", [Pre(config_text, "config.yaml (resolved, frozen at the first step)")])

    for name in PLOT_FILES:
        if name not in {p.name for p in written}:
            (out / name).unlink(missing_ok=True)
    for p in written:
        write_bytes(out / p.name, p.png)

    st = run.state
    finished = [v.get("finished") for v in st.get("steps", {}).values() if v.get("finished")]
    done = sum(1 for g in run.generations if g.metrics is not None)
    meta = [
        f"run folder: {run.root}",
        f"generations evaluated: {done} of {run.cfg.student.generations} configured; "
        f"teacher {run.cfg.teacher.name}, students {' -> '.join(m.name for m in run.cfg.student.ladder)}",
        f"last step finished: {max(finished) if finished else 'none yet'}; config digest {st.get('config_digest', '-')}",
    ]
    page = render_page(f"Noisy Student run: {run.cfg.name}", meta,
                       [summary, accuracy, labels, training, samples, timings, config], notes=run.notes)
    index = out / "index.html"
    write_text(index, page)
    return index
