"""The run report's tables (summary per generation, promotion decisions, timings) and how every number
in the report is written (:func:`fmt`, :func:`fmt_figure`)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..steps import TEACHER, baseline_step, gen_folder, generation_of, split_step, step_name, step_order
from .html import Table
from .rundata import RunData, gen_value

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
