"""The anomaly report of a score folder: one self-contained page (``OUT_DIR/report/index.html``) and its PNGs.

- a summary table: images scored and rejected, flagged, the threshold, and where the images come with
  ground truth (``good/`` and other top-level folders) image AUROC, overall and per folder, and the flag
  rates; with masks and stored maps, pixel AUROC;
- score histograms (normal and anomalous apart when known) with the threshold;
- ROC curves (images; pixels when masks are given);
- a grid of images with their anomaly maps overlaid (and mask outlines): with ground truth, normal and
  anomalous images spread over each group's score range; without, the highest and lowest scores.

Masks (``--masks DIR``): for image ``defect/x.png`` the first of ``DIR/defect/x.png``, ``DIR/defect/x_mask.png``
(MVTec AD's naming) that exists; nonzero pixels are the defect. Images of ``good/`` without a mask count as
all normal; anomalous images without one are left out of the pixel AUROC.
Same page machinery as the run report (:mod:`pipelines.report.html`): no scripts, opens offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from noisystudent.errors import UserError
from noisystudent.io import read_json, write_bytes, write_text

from .score import GOOD, REJECTED_FILE, SUMMARY_FILE, ground_truth, images_source, read_scores

PLOTS = ("scores.png", "roc.png", "maps.png")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits}f}"
    return str(v)


def load_masks(masks: str | os.PathLike | Mapping[str, np.ndarray], image_ids: Sequence[str], size: int
               ) -> dict[str, np.ndarray]:
    """``image_id -> (size, size)`` bool mask for the ids that have one (a folder, or a ready mapping)."""
    from PIL import Image

    out: dict[str, np.ndarray] = {}
    if isinstance(masks, Mapping):
        for i in image_ids:
            if i in masks:
                m = np.asarray(masks[i])
                out[i] = _resize_mask(m, size)
        return out
    root = Path(masks)
    if not root.is_dir():
        raise UserError(f"masks folder not found: {root}")
    for i in image_ids:
        stem, _ = os.path.splitext(i)
        for cand in (root / i, root / f"{stem}_mask.png", root / f"{stem}.png"):
            if cand.is_file():
                try:
                    with Image.open(cand) as im:
                        out[i] = _resize_mask(np.asarray(im.convert("L")), size)
                except OSError as exc:
                    raise UserError(f"mask {cand} is unreadable ({exc})") from None
                break
    return out


def _resize_mask(m: np.ndarray, size: int) -> np.ndarray:
    import cv2

    m = (np.asarray(m) > 0).astype(np.uint8)
    if m.shape[:2] != (size, size):
        m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    return m.astype(bool)


# --------------------------------------------------------------------------------------------------
# figures


def _log_axis(scores: np.ndarray) -> bool:
    pos = scores[scores > 0]
    return len(pos) == len(scores) and len(pos) > 1 and pos.max() / pos.min() > 100


def score_histogram(scores: np.ndarray, threshold: float, labels: Optional[np.ndarray] = None):
    from matplotlib import rc_context

    from pipelines.report.plots import COLORS, STYLE, _figure

    scores = np.asarray(scores, dtype=np.float64)
    log = _log_axis(np.r_[scores, threshold])
    bins = np.geomspace(scores.min(), scores.max(), 41) if log else 40
    with rc_context(STYLE):
        fig = _figure(8, 3.2)
        ax = fig.add_subplot()
        groups = [("all images", scores)] if labels is None else [("normal (good/)", scores[~labels]),
                                                                    ("anomalous", scores[labels])]
        for k, (name, s) in enumerate(groups):
            if len(s):
                ax.hist(s, bins=bins, alpha=0.6, color=COLORS[k], label=f"{name}: {len(s)}")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3g}")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel("image score (max of the anomaly map)")
        ax.set_ylabel("images")
        ax.set_title("Image scores")
        ax.legend(loc="upper right")
    return fig


def roc_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray, Optional[float]]], pixel=None):
    """Image ROC curves (one per group), and the pixel ROC beside them when given."""
    from matplotlib import rc_context

    from pipelines.report.plots import COLORS, STYLE, _figure

    panels = [("Image ROC", curves)] + ([("Pixel ROC", [pixel])] if pixel is not None else [])
    with rc_context(STYLE):
        fig = _figure(4.2 * len(panels) + 0.6, 3.8)
        for p, (title, lines) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), p + 1)
            for k, (name, fpr, tpr, area) in enumerate(lines):
                ax.plot(fpr, tpr, color=COLORS[k % len(COLORS)], linewidth=1.8 if k == 0 else 1.0,
                        label=f"{name} (AUROC {area:.3f})" if area is not None else name)
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.01)
            ax.set_xlabel("false-positive rate")
            ax.set_ylabel("true-positive rate")
            ax.set_title(title)
            ax.legend(loc="lower right", fontsize=7)
    return fig


def overlay(ax, image: np.ndarray, amap: Optional[np.ndarray], scale: float, mask: Optional[np.ndarray] = None) -> None:
    """An image with its anomaly map on top: colour (jet) and opacity both rise with sqrt(map / ``scale``),
    so normal areas show the image itself and only what approaches ``scale`` (the threshold) is painted;
    the mask, when given, is outlined in white."""
    from matplotlib import colormaps

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    if amap is not None:
        v = np.sqrt(np.clip(np.asarray(amap, dtype=np.float64) / max(scale, 1e-30), 0.0, 1.0))
        rgba = colormaps["jet"](v)
        rgba[..., 3] = 0.75 * v
        ax.imshow(rgba, interpolation="bilinear")
    if mask is not None and np.asarray(mask).any():
        ax.contour(np.asarray(mask).astype(float), levels=[0.5], colors="white", linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


def maps_grid(images: Sequence[np.ndarray], maps: Sequence[Optional[np.ndarray]], titles: Sequence[str],
              flagged: Sequence[bool], scale: float, masks: Optional[Sequence[Optional[np.ndarray]]] = None,
              per_row: int = 8):
    """Each image with its map overlaid (:func:`overlay`) and its mask outlined; red titles are flagged."""
    from matplotlib import rc_context

    from pipelines.report.plots import STYLE, _figure

    n = len(images)
    cols = min(per_row, max(n, 1))
    rows = -(-n // cols)
    with rc_context({**STYLE, "axes.grid": False}):
        fig = _figure(1.45 * cols + 0.2, 1.65 * rows + 0.2)
        for k in range(n):
            ax = fig.add_subplot(rows, cols, k + 1)
            overlay(ax, images[k], maps[k], scale, masks[k] if masks is not None else None)
            ax.set_title(titles[k], fontsize=6, color="#c00" if flagged[k] else "#222")
    return fig


def _pick(scores: np.ndarray, labels: Optional[np.ndarray], n: int) -> list[int]:
    """Rows for the grid: per ground-truth group, evenly over its score order; else the extremes."""
    order = np.argsort(-scores, kind="stable")
    if labels is None:
        top = [int(i) for i in order[: max(1, n // 2)]]
        low = [int(i) for i in order[::-1] if int(i) not in set(top)][: n - len(top)]
        return top + low[::-1]
    out = []
    for group in (True, False):
        rows = [i for i in order if labels[i] == group]
        k = min(len(rows), n // 2)
        out += [rows[int(j)] for j in np.linspace(0, len(rows) - 1, k).round()] if k else []
    return out


# --------------------------------------------------------------------------------------------------
# the page


Curve = tuple[str, np.ndarray, np.ndarray, Optional[float]]  # name, false-positive rates, true-positive rates, AUROC


@dataclass
class _Scored:
    """What the page shows of a finished score folder."""

    summary: dict
    df: Any  # pandas DataFrame: image_id, score, flagged (and map when stored)
    ids: list[str]
    scores: np.ndarray
    threshold: float
    shape: Optional[list[int]]  # of a stored map; None when scored with --no-maps
    labels: Optional[np.ndarray]  # anomalous or not, from the folders; None without ground truth
    groups: Optional[Sequence[str]]  # each image's top-level folder (with ground truth)


def _read_summary(score_dir: Path) -> dict:
    if not (score_dir / SUMMARY_FILE).is_file():
        raise UserError(f"{score_dir} holds no finished scores (no {SUMMARY_FILE}); run `noisystudent anomaly score` first")
    return read_json(score_dir / SUMMARY_FILE)


def _read_scored(score_dir: Path, summary: dict) -> _Scored:
    df = read_scores(score_dir, maps=bool(summary.get("maps")))
    ids = df["image_id"].tolist()
    truth = ground_truth(ids)
    return _Scored(summary=summary, df=df, ids=ids, scores=df["score"].to_numpy(dtype=np.float64),
                   threshold=float(summary["threshold"]), shape=summary.get("map_shape"),
                   labels=truth[0] if truth is not None else None, groups=truth[1] if truth is not None else None)


def _image_rows(d: _Scored) -> tuple[list[tuple[str, Any]], list[Curve]]:
    """The summary table's rows, and the image ROC curves (overall, then per folder) with ground truth."""
    from noisystudent.anomaly import auroc, roc_curve

    summary = d.summary
    rows = [("images", summary["images"]), ("scored", summary["scored"]), ("rejected (unreadable)", summary["rejected"]),
            ("flagged (score > threshold)", summary["flagged"]), ("threshold", d.threshold),
            ("threshold FPR target (validation normals)", summary.get("threshold_fpr_target")),
            ("detector", summary.get("detector_id"))]
    curves: list[Curve] = []
    if d.labels is None:
        return rows, curves
    labels, scores = d.labels, d.scores
    fpr, tpr, _ = roc_curve(labels, scores)
    curves.append(("all anomalous vs good", fpr, tpr, auroc(labels, scores)))
    rows += [("image AUROC", summary.get("image_auroc")), ("flag rate, anomalous (TPR)", summary.get("flag_rate_tpr")),
             ("flag rate, good (FPR)", summary.get("flag_rate_fpr"))]
    for g, area in (summary.get("image_auroc_per_group") or {}).items():
        rows.append((f"image AUROC, {g}/ vs good/", area))
        keep = np.asarray([x in (g, GOOD) for x in d.groups])
        if len(curves) < 8 and len(summary["image_auroc_per_group"]) > 1:
            f, t, _ = roc_curve(labels[keep], scores[keep])
            curves.append((f"{g}/", f, t, area))
    return rows, curves


def _pixel_rows(d: _Scored, mask_of: dict[str, np.ndarray]) -> tuple[list[tuple[str, Any]], Optional[Curve]]:
    """Pixel AUROC over the images with a mask (and good/ ones as all normal), and its ROC curve."""
    from noisystudent.anomaly import decode_map, pixel_auroc, roc_curve

    if not mask_of:
        return [], None
    ids, labels = d.ids, d.labels
    use = [k for k, i in enumerate(ids) if i in mask_of or (labels is not None and not labels[k])]
    if not use:
        return [], None
    maps = np.stack([decode_map(d.df["map"].iloc[k], d.shape) for k in use])
    ms = np.stack([mask_of.get(ids[k], np.zeros(tuple(d.shape), bool)) for k in use])
    area = pixel_auroc(maps, ms)
    rows = [("pixel AUROC", area), ("images with masks (incl. good/ as all-normal)", len(use))]
    if area is None:
        return rows, None
    f, t, _ = roc_curve(ms.ravel()[:: max(1, ms.size // 2_000_000)], maps.ravel()[:: max(1, ms.size // 2_000_000)])
    return rows, ("pixels", f, t, area)


def _maps_plot(d: _Scored, picked: list[int], source: Any, mask_of: dict[str, np.ndarray]):
    """The grid of picked images with their maps overlaid (a :class:`~pipelines.report.html.Plot`), or None
    when none of them can be read again."""
    from noisystudent.anomaly import decode_map

    from pipelines.report.html import Plot
    from pipelines.report.plots import figure_png

    ids, df, shape = d.ids, d.df, d.shape
    pos = source.positions([ids[k] for k in picked])
    imgs, maps_, titles, flags, outlines = [], [], [], [], []
    for k, p in zip(picked, pos):
        if p < 0:
            continue
        try:
            img = source.load(int(p))
        except Exception:  # noqa: BLE001 - a file gone since scoring leaves a gap, not a crash
            continue
        m = decode_map(df["map"].iloc[k], shape) if shape else None
        if m is not None and img.shape[:2] != m.shape:
            import cv2

            img = cv2.resize(img, (m.shape[1], m.shape[0]), interpolation=cv2.INTER_AREA)
        imgs.append(img)
        maps_.append(m)
        short = ids[k] if len(ids[k]) <= 22 else "..." + ids[k][-19:]
        titles.append(f"{short}\n{d.scores[k]:.3g}" + (" FLAG" if df["flagged"].iloc[k] else ""))
        flags.append(bool(df["flagged"].iloc[k]))
        outlines.append(mask_of.get(ids[k]))
    if not imgs:
        return None
    caption = ("Anomaly maps over the images (colour and opacity rise with sqrt(map / threshold); red titles "
               "are flagged)"
               + ("; white outlines are the masks." if mask_of else ".")
               + (" Without stored maps (--no-maps) the images alone." if not shape else ""))
    return Plot("maps.png", "Images and anomaly maps",
                figure_png(maps_grid(imgs, maps_, titles, flags, d.threshold, outlines)), caption)


def _sections(table, plots: list, curves: list[Curve], score_dir: Path, summary: dict) -> list:
    """The page's sections: summary, scores, ROC (with ground truth), maps, and the unreadable images."""
    from pipelines.report.html import Note, Pre, Section

    sections = [Section("summary", "Summary", [table]), Section("scores", "Scores", [p for p in plots if p.name == "scores.png"])]
    if curves:
        sections.append(Section("roc", "ROC", [p for p in plots if p.name == "roc.png"]))
    sections.append(Section("maps", "Images and maps", [p for p in plots if p.name == "maps.png"] or
                            [Note("No images to show.")]))
    rejected_path = score_dir / REJECTED_FILE
    if rejected_path.is_file() and summary.get("rejected", 0) + summary.get("skipped_at_scan", 0) > 0:
        sections.append(Section("rejected", "Unreadable images", [Pre(rejected_path.read_text(encoding="utf-8"),
                                                                       f"{REJECTED_FILE} (not scored)")]))
    return sections


def build_anomaly_report(score_dir: str | os.PathLike, out_dir: Optional[str | os.PathLike] = None, *,
                         masks: Optional[str | os.PathLike | Mapping[str, np.ndarray]] = None, source: Any = None,
                         grid: int = 16) -> Path:
    """Write the report of a finished score folder; return the path of ``index.html``.

    ``source`` gives the images for the grid (default: the inputs recorded in ``summary.json``, read again);
    ``masks`` a folder of masks or ``{image_id: mask}`` for pixel AUROC and outlines."""
    from pipelines.report.html import Plot, Table, render_page
    from pipelines.report.plots import figure_png

    score_dir = Path(score_dir)
    summary = _read_summary(score_dir)
    out = Path(out_dir) if out_dir is not None else score_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    d = _read_scored(score_dir, summary)
    notes: list[str] = []
    mask_of: dict[str, np.ndarray] = {}
    if masks is not None and d.shape:
        mask_of = load_masks(masks, d.ids, int(d.shape[0]))
    elif masks is not None:
        notes.append("Masks were given but the scores hold no maps (scored with --no-maps): no pixel AUROC.")
    rows, curves = _image_rows(d)
    if d.labels is None:
        notes.append("No ground truth: the images are not in good/ and defect/ (or other) folders, so no ROC curve.")
    pixel_rows, pixel = _pixel_rows(d, mask_of)
    table = Table([("what", "what"), ("value", "value")], [(k, {"what": k, "value": _fmt(v)}) for k, v in rows + pixel_rows],
                  numeric=frozenset({"value"}))
    plots: list[Plot] = [Plot("scores.png", "Score histogram", figure_png(score_histogram(d.scores, d.threshold, d.labels)),
                              "An image is flagged when its score is above the dashed threshold.")]
    if curves:
        plots.append(Plot("roc.png", "ROC curves", figure_png(roc_figure(curves, pixel)),
                          "Image-level (and, with masks, pixel-level) ROC; AUROC in the legend."))
    picked = _pick(d.scores, d.labels, grid)
    grid_note = None
    if source is None:
        try:
            source = images_source(summary.get("inputs") or [], int(summary.get("in_chans") or 3))
        except UserError as exc:
            grid_note = f"Image grid left out: the scored images cannot be read again here ({exc})."
    if source is not None and picked:
        maps_plot = _maps_plot(d, picked, source, mask_of)
        if maps_plot is not None:
            plots.append(maps_plot)
    if grid_note:
        notes.append(grid_note)
    sections = _sections(table, plots, curves, score_dir, summary)
    for name in PLOTS:
        if name not in {p.name for p in plots}:
            (out / name).unlink(missing_ok=True)
    for p in plots:
        write_bytes(out / p.name, p.png)
    meta = [f"score folder: {score_dir.resolve()}", f"detector: {summary.get('run_dir')}"]
    path = out / "index.html"
    write_text(path, render_page("Anomaly scores", meta, sections, notes))
    return path
