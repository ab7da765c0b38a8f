"""The report's figures: plain values in, a matplotlib ``Figure`` out, ``figure_png`` to bytes.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, never
through ``pyplot``: no GUI backend is ever chosen, the caller's backend (a notebook's, say) is left
alone, and no global figure registry holds on to memory (``figure_png`` clears the figure after
rendering). PNGs are written without the software/version metadata so the same run gives the same bytes.
"""

from __future__ import annotations

import io
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes (deterministic: no timestamp or version chunks), then clear it."""
    buf = io.BytesIO()
    with rc_context(STYLE):
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()
    return buf.getvalue()


def _grid(n: int, per_row: int = 4) -> tuple[int, int]:
    cols = max(1, min(n, per_row))
    return -(-n // cols), cols


# --------------------------------------------------------------------------------------------------


def accuracy_plot(
    test_acc: Mapping[int, float],
    pseudo_label_acc: Optional[Mapping[int, float]] = None,
    baselines: Optional[Mapping[str, float]] = None,
) -> Figure:
    """Test accuracy of each generation's model (0 = teacher), the accuracy of the pseudo-labels that
    generation trained on, and supervised/oracle baselines as horizontal lines."""
    with rc_context(STYLE):
        fig = _figure(9, 3.6)
        ax = fig.add_subplot()
        gens = sorted(test_acc)
        ax.plot(gens, [test_acc[g] for g in gens], "o-", color=COLORS[0], label="test accuracy")
        for g in gens:
            ax.annotate(f"{test_acc[g]:.4f}", (g, test_acc[g]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
        if pseudo_label_acc:
            pg = sorted(pseudo_label_acc)
            ax.plot(pg, [pseudo_label_acc[g] for g in pg], "s--", color=COLORS[1], label="pseudo-label accuracy (all)")
        for k, (name, value) in enumerate(sorted((baselines or {}).items())):
            ax.axhline(value, color=COLORS[2 + k], linestyle=":", linewidth=1.5, label=f"{name} baseline ({value:.4f})")
        ax.set_xlabel("generation (0 = teacher)")
        ax.set_ylabel("accuracy")
        ax.set_xticks(sorted(set(gens) | set(pseudo_label_acc or {})))
        # zoomed to the values (a 0-1 axis flattens a 4-point gain into a flat line), 2-point margin
        shown = [test_acc[g] for g in gens] + list((pseudo_label_acc or {}).values()) + list((baselines or {}).values())
        lo, hi = min(shown), max(shown)
        ax.set_ylim(max(0.0, lo - 0.02), min(1.0, hi + 0.02) + 0.01)
        ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.2f}")
        ax.set_title("Test accuracy per generation")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def confidence_plot(confidences: Mapping[int, np.ndarray], threshold: float, bins: int = 20) -> Figure:
    """One histogram of teacher confidence per generation, with the selection threshold marked."""
    gens = sorted(confidences)
    rows, cols = _grid(len(gens))
    with rc_context(STYLE):
        fig = _figure(3.2 * cols + 0.4, 2.6 * rows)
        for k, g in enumerate(gens):
            ax = fig.add_subplot(rows, cols, k + 1)
            conf = np.asarray(confidences[g], dtype=np.float64)
            ax.hist(conf, bins=bins, range=(0.0, 1.0), color=COLORS[k % len(COLORS)], alpha=0.85)
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}")
            kept = float((conf >= threshold).mean()) if len(conf) else 0.0
            ax.set_title(f"generation {g}: {len(conf)} images, {kept:.1%} kept")
            ax.set_xlabel("confidence (max probability)")
            ax.set_ylabel("images")
            ax.set_xlim(0, 1)
            ax.legend(loc="upper left")
    return fig


def class_balance_plot(per_gen: Mapping[int, Mapping[str, Sequence[float]]], classes: Sequence[str]) -> Figure:
    """Per-class counts of each generation: every pseudo-label, after the threshold, and after
    balancing (counting duplicates), as grouped bars. ``per_gen[g]`` maps a series name to counts."""
    gens = sorted(per_gen)
    with rc_context(STYLE):
        fig = _figure(max(7.0, 0.7 * len(classes) + 2), 2.9 * len(gens))
        for k, g in enumerate(gens):
            ax = fig.add_subplot(len(gens), 1, k + 1)
            series = [(name, np.asarray(v, dtype=np.float64)) for name, v in per_gen[g].items() if v is not None]
            x = np.arange(len(classes))
            width = 0.8 / max(1, len(series))
            for j, (name, counts) in enumerate(series):
                ax.bar(x + (j - (len(series) - 1) / 2) * width, counts[: len(classes)], width, label=name,
                       color=COLORS[j % len(COLORS)])
            ax.set_xticks(x, [str(c) for c in classes], rotation=30, ha="right")
            ax.set_ylabel("images")
            ax.set_title(f"generation {g}: pseudo-labels per class")
            ax.legend(loc="upper right")
    return fig


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, np.ndarray | float]:
    """Per-bin mean confidence, accuracy and count over equal-width confidence bins, and the expected
    calibration error (ECE: count-weighted mean |accuracy - confidence|)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=False), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=ok, minlength=bins) / count
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
    ece = float(np.nansum(count * np.abs(acc - mean_conf)) / max(count.sum(), 1.0))
    return {"edges": edges, "count": count, "accuracy": acc, "confidence": mean_conf, "ece": ece}


def calibration_plot(per_gen: Mapping[int, tuple[np.ndarray, np.ndarray]], bins: int = 10) -> Figure:
    """Reliability diagrams: pseudo-label accuracy against teacher confidence, one per generation.
    ``per_gen[g] = (confidence, correct)`` over the images whose true label is known."""
    gens = sorted(per_gen)
    rows, cols = _grid(len(gens))
    with rc_context(STYLE):
        fig = _figure(3.4 * cols + 0.4, 3.2 * rows)
        for k, g in enumerate(gens):
            conf, correct = per_gen[g]
            r = reliability(conf, correct, bins)
            ax = fig.add_subplot(rows, cols, k + 1)
            centers = (r["edges"][:-1] + r["edges"][1:]) / 2
            width = 1.0 / bins
            acc = np.nan_to_num(r["accuracy"])
            ax.bar(centers, acc, width * 0.95, color=COLORS[0], alpha=0.55, label="accuracy (image count inside)")
            ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
            for c, n in zip(centers, r["count"]):
                if n:
                    ax.text(c, 0.02, f"{int(n)}", ha="center", va="bottom", fontsize=6, rotation=90)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.05)
            ax.set_xlabel("teacher confidence")
            ax.set_ylabel("pseudo-label accuracy")
            ax.set_title(f"generation {g}: ECE {r['ece']:.4f}, accuracy {float(np.mean(correct)):.4f}")
            ax.legend(loc="upper left")
    return fig


def curves_plot(histories: Sequence[tuple[str, pd.DataFrame]]) -> Figure:
    """Per-epoch loss (left) and accuracy (right) of each model, one row per model."""
    n = len(histories)
    with rc_context(STYLE):
        fig = _figure(9, 2.5 * n + 0.3)
        for k, (title, h) in enumerate(histories):
            ax_loss = fig.add_subplot(n, 2, 2 * k + 1)
            ax_acc = fig.add_subplot(n, 2, 2 * k + 2)
            ep = h["epoch"].to_numpy()
            for j, col in enumerate(("train_loss", "loss_labeled", "loss_unlabeled")):
                if col in h and h[col].notna().any() and not (col == "loss_unlabeled" and (h[col].fillna(0) == 0).all()):
                    ax_loss.plot(ep, h[col], "o-", markersize=3, color=COLORS[j], label=col.replace("_", " "))
            for j, col in enumerate(("train_acc", "test_acc")):
                if col in h and h[col].notna().any():
                    m = h[col].notna().to_numpy()
                    ax_acc.plot(ep[m], h[col].to_numpy()[m], "o-", markersize=3, color=COLORS[j], label=col.replace("_", " "))
            if "phase" in h and (h["phase"] == "finetune").any():
                start = h.loc[h["phase"] == "finetune", "epoch"].min()
                for ax in (ax_loss, ax_acc):
                    ax.axvline(start - 0.5, color="gray", linestyle=":", linewidth=1)
            ax_loss.set_title(f"{title}: loss")
            ax_acc.set_title(f"{title}: accuracy")
            ax_acc.set_ylim(0, 1.05)
            for ax in (ax_loss, ax_acc):
                ax.set_xlabel("epoch")
                if len(ep):
                    ax.set_xticks(np.unique(ep) if len(ep) <= 12 else ax.get_xticks())
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(loc="best")
    return fig


def confusion_plot(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted), coloured by row share, counts written in."""
    cm = np.asarray(matrix, dtype=np.int64)
    c = cm.shape[0]
    names = [str(x) for x in classes] if len(classes) == c else [str(i) for i in range(c)]
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.55 * c + 2.5)
    with rc_context({**STYLE, "axes.grid": False}):
        fig = _figure(size + 1, size)
        ax = fig.add_subplot()
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        if c <= 30:
            for i in range(c):
                for j in range(c):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(c), names, rotation=45, ha="right")
        ax.set_yticks(range(c), names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, label="share of the true class", shrink=0.8)
    return fig


def samples_plot(clean: Sequence[np.ndarray], noised: Sequence[Sequence[np.ndarray]], titles: Sequence[str],
                 noise_label: str) -> Figure:
    """Row 0: clean images as the teacher sees them; rows 1..: the same images noised as the student sees them.
    Images are HWC uint8 (1 or 3 channels); ``noised[r][i]`` is version ``r`` of image ``i``."""
    cols = len(clean)
    rows = 1 + len(noised)
    with rc_context({**STYLE, "axes.grid": False}):
        fig = _figure(1.25 * cols + 0.9, 1.35 * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False)
        for r in range(rows):
            for i in range(cols):
                img = clean[i] if r == 0 else noised[r - 1][i]
                ax = axes[r][i]
                if img.shape[-1] == 1:
                    ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                else:
                    ax.imshow(img, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if r == 0:
                    ax.set_title(titles[i], fontsize=7)
            axes[r][0].set_ylabel("clean" if r == 0 else f"noised {r}", fontsize=8)
        fig.suptitle(f"Samples and their student noise ({noise_label})", fontsize=10)
    return fig
