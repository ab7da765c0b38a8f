"""Build ``report/index.html`` (and its PNGs) from a run folder.

What the report shows is decided here, with the tables in :mod:`.tables` and the figures in
:mod:`.figures`; how a figure looks is in :mod:`.plots`, how the page is laid out in :mod:`.html`, and
what is read from disk in :mod:`.rundata`. A figure whose inputs are missing (a generation still
running, a data set without hidden labels, data not on this machine) is left out with a note saying
why, so ``noisystudent report`` works on any run at any moment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from noisystudent.io import write_bytes, write_text

from . import figures
from .figures import NOISED_VERSIONS, SAMPLE_IMAGES
from .html import Note, Plot, Pre, Section, render_page
from .rundata import RunData, collect
from .tables import (PROMOTION_COLUMNS, SUMMARY_COLUMNS, TIMING_COLUMNS, WHOLE_FIGURES, fmt, fmt_figure, promotion_table,
                     summary_table, timings_table)

__all__ = ["NOISED_VERSIONS", "PLOT_FILES", "PROMOTION_COLUMNS", "SAMPLE_IMAGES", "SUMMARY_COLUMNS", "TIMING_COLUMNS",
           "WHOLE_FIGURES", "build_report", "fmt", "fmt_figure", "promotion_table", "summary_table", "timings_table"]

# Every PNG the report may write; a rebuild removes those it no longer produces.
PLOT_FILES = ("accuracy.png", "confidence.png", "class_balance.png", "calibration.png", "curves.png",
              "confusion.png", "samples.png")


def _summary_section(run: RunData) -> Section:
    """The summary table, the promotion decisions and which configured generations have not started."""
    summary = Section("summary", "Summary per generation", [summary_table(run)])
    promotions = promotion_table(run)
    if promotions is not None:
        summary.items.append(promotions)
    not_started = [g.generation for g in run.generations if not g.started]
    if not_started:
        summary.items.append(Note(f"Generation(s) {', '.join(map(str, not_started))} of "
                                  f"{run.cfg.student.generations} configured have not started yet."))
    return summary


def _figure_sections(run: RunData) -> tuple[list[Section], list[Plot]]:
    """The accuracy, pseudo-label, training and noise sections, each figure with its notes (or only the
    notes saying why it is left out); and the plots drawn."""
    accuracy = Section("accuracy", "Accuracy")
    labels = Section("pseudo-labels", "Pseudo-labels")
    training = Section("training", "Training")
    samples = Section("samples", "Noise")
    written: list[Plot] = []
    for section, maker in ((accuracy, figures.accuracy), (labels, figures.confidence), (labels, figures.class_balance),
                           (labels, figures.calibration), (training, figures.curves), (training, figures.confusion),
                           (samples, figures.samples)):
        plot, notes = maker(run)
        section.items.extend(Note(n) for n in notes)
        if plot is not None:
            section.items.append(plot)
            written.append(plot)
    return [accuracy, labels, training, samples], written


def _page_meta(run: RunData) -> list[str]:
    """The lines under the title: the folder, how far the run is, the last step and the config digest."""
    st = run.state
    finished = [v.get("finished") for v in st.get("steps", {}).values() if v.get("finished")]
    done = sum(1 for g in run.generations if g.metrics is not None)
    return [
        f"run folder: {run.root}",
        f"generations evaluated: {done} of {run.cfg.student.generations} configured; "
        f"teacher {run.cfg.teacher.name}, students {' -> '.join(m.name for m in run.cfg.student.ladder)}",
        f"last step finished: {max(finished) if finished else 'none yet'}; config digest {st.get('config_digest', '-')}",
    ]


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
    summary = _summary_section(run)
    figure_sections, written = _figure_sections(run)
    timings = Section("timings", "Timings and throughput", [timings_table(run)])
    config_text = (run.root / "config.yaml").read_text(encoding="utf-8")
    config = Section("config", "Configuration", [Pre(config_text, "config.yaml (resolved, frozen at the first step)")])

    for name in PLOT_FILES:
        if name not in {p.name for p in written}:
            (out / name).unlink(missing_ok=True)
    for p in written:
        write_bytes(out / p.name, p.png)
    page = render_page(f"Noisy Student run: {run.cfg.name}", _page_meta(run),
                       [summary, *figure_sections, timings, config], notes=run.notes)
    index = out / "index.html"
    write_text(index, page)
    return index
