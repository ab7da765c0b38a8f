"""Which pseudo-labels the student sees: confidence threshold, then the paper's per-class balance.

Pure functions on DataFrames; reading and writing live in :mod:`pseudo_labels.store` and
:mod:`pseudo_labels.selection_io`.

Balancing (Xie et al. 2020, section 3): with K images per class, a class with more than K keeps its K
most confident images, and a class with fewer is duplicated up to K. Duplicates are not copied rows:
each kept row gets an integer ``weight`` (how many times the student should see it), so the Parquet
stays one row per image and a sampler can draw rows with probability proportional to ``weight``.
Ties in confidence are broken by ``image_id`` so the same input always gives the same selection.

:func:`select_pseudo_labels` works on one DataFrame of all rows (the reference, and what small callers
use); the pipeline streams the same selection shard by shard (:func:`pseudo_labels.streamed_select.select_folder`)
with :class:`ClassCutoffs` (each class's K-th best confidence in O(classes) memory), and a test checks the
two agree on Fashion-MNIST.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import pandas as pd

from noisystudent.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa


def _ranked(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by class, then confidence (highest first), then image_id: the order balancing keeps."""
    return df.sort_values(["label", "confidence", "image_id"], ascending=[True, False, True], kind="mergesort")


def _accuracy(df: pd.DataFrame, weights: Optional[np.ndarray] = None) -> Optional[float]:
    """Share of rows whose label equals ``true_label`` (rows with true_label < 0 are unknown)."""
    if "true_label" not in df.columns or len(df) == 0:
        return None
    truth = df["true_label"].to_numpy()
    known = truth >= 0
    if not known.any():
        return None
    correct = (df["label"].to_numpy() == truth)[known]
    w = np.ones(len(df)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w[known]
    return float((correct * w).sum() / w.sum()) if w.sum() > 0 else None


def _class_counts(labels: np.ndarray, num_classes: int, weights: Optional[np.ndarray] = None) -> list[int]:
    return np.bincount(labels.astype(np.int64), weights=weights, minlength=num_classes)[:num_classes].astype(int).tolist()


def balance_weights(counts: int, k: int) -> np.ndarray:
    """Weights for a class of ``counts`` rows ranked by confidence so they sum to ``k``.

    More than ``k`` rows: the first ``k`` get 1, the rest 0. Fewer (and more than 0): every row gets
    ``k // counts`` whole copies and the ``k % counts`` most confident get one more.
    """
    if counts == 0:
        return np.zeros(0, dtype=np.int64)
    if counts >= k:
        w = np.zeros(counts, dtype=np.int64)
        w[:k] = 1
        return w
    q, r = divmod(k, counts)
    w = np.full(counts, q, dtype=np.int64)
    w[:r] += 1
    return w


def _check_inputs(df: pd.DataFrame, num_classes: int, threshold: float, per_class: Optional[int]) -> None:
    if not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"pseudo_labels.threshold must be in [0, 1], got {threshold}")
    if per_class is not None and int(per_class) < 0:
        raise UserError(f"pseudo_labels.per_class must be >= 0 or null, got {per_class}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    missing = {"image_id", "label", "confidence"} - set(df.columns)
    if missing:
        raise UserError(f"pseudo-label table lacks column(s) {', '.join(sorted(missing))}")
    labels = df["label"].to_numpy()
    if len(df) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"pseudo-label table has labels outside [0, {num_classes}) for num_classes={num_classes}")


def _balanced(ranked: pd.DataFrame, per_class_before: list[int], k: int) -> pd.DataFrame:
    """K rows a class from ``ranked`` (grouped by label in class order): each row's weight from
    :func:`balance_weights`, rows of weight 0 dropped."""
    weights = np.zeros(len(ranked), dtype=np.int64)
    start = 0
    for count in per_class_before:  # ranked is grouped by label in class order
        weights[start : start + count] = balance_weights(count, k)
        start += count
    selected = ranked.assign(weight=weights)
    return selected[selected["weight"].to_numpy() > 0]


def select_pseudo_labels(
    df: pd.DataFrame,
    num_classes: int,
    threshold: float = 0.0,
    per_class: Optional[int] = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Filter by confidence and balance classes; return ``(selected, summary)``.

    ``selected`` has the input's columns plus an integer ``weight`` (1 without balancing), one row
    per kept image, ordered by class, confidence (descending), image_id. ``per_class=None`` keeps the
    filtered set as is; ``0`` means K = filtered rows // num_classes; a positive value is K. Classes
    left with no row stay empty and are listed in ``summary["empty_classes"]``.

    The summary holds row counts before and after the threshold, per-class counts before and after
    balancing (after = weighted), K, and pseudo-label accuracy (all, after threshold, selected and
    weighted) when a ``true_label`` column is present.
    """
    _check_inputs(df, num_classes, threshold, per_class)
    kept = df[df["confidence"].to_numpy() >= threshold]
    per_class_before = _class_counts(kept["label"].to_numpy(), num_classes)
    ranked = _ranked(kept)

    if per_class is None:
        k: Optional[int] = None
        selected = ranked.assign(weight=np.ones(len(ranked), dtype=np.int64))
    else:
        k = len(kept) // num_classes if int(per_class) == 0 else int(per_class)
        selected = _balanced(ranked, per_class_before, k)
    selected = selected.reset_index(drop=True)

    w = selected["weight"].to_numpy()
    per_class_after = _class_counts(selected["label"].to_numpy(), num_classes, weights=w)
    summary: dict[str, Any] = {
        "rows_in": int(len(df)),
        "threshold": float(threshold),
        "rows_after_threshold": int(len(kept)),
        "per_class_mode": None if per_class is None else ("auto" if int(per_class) == 0 else "fixed"),
        "K": k,
        "per_class_before": per_class_before,
        "per_class_after": per_class_after,
        "per_class_unique_after": _class_counts(selected["label"].to_numpy(), num_classes),
        "rows_selected": int(len(selected)),
        "weighted_rows_selected": int(w.sum()),
        "empty_classes": [c for c in range(num_classes) if per_class_before[c] == 0],
    }
    if "true_label" in df.columns:
        summary["accuracy_all"] = _accuracy(df)
        summary["accuracy_after_threshold"] = _accuracy(kept)
        summary["accuracy_selected"] = _accuracy(selected)
        summary["accuracy_selected_weighted"] = _accuracy(selected, w)
    return selected, summary


# --------------------------------------------------------------------------------------------------
# the same selection, streamed: shard by shard, with a cut-off confidence per class (radix select)


def ranked_table(table: "pa.Table") -> "pa.Table":
    """``table`` sorted by class, confidence (highest first), image_id: :func:`_ranked` on Arrow."""
    import pyarrow.compute as pc

    order = pc.sort_indices(table, sort_keys=[("label", "ascending"), ("confidence", "descending"),
                                              ("image_id", "ascending")])
    return table.take(order)


# The radix levels of a float32's bits (as uint32: for confidences >= 0 the integer order is the float
# order): 12 + 12 + 8 bits, so a histogram is at most classes x 4096 counts.
_LEVELS = ((20, 12), (8, 12), (0, 8))


def confidence_bits(confidence: np.ndarray) -> np.ndarray:
    """float32 confidences (>= 0) as uint32 whose order is the confidences' order."""
    return np.ascontiguousarray(confidence, dtype=np.float32).view(np.uint32)


class ClassCutoffs:
    """The ``need[c]``-th largest confidence of each class, found in three streamed passes (radix select)
    with memory O(classes x 4096), never a row per image.

    Use: ``for level in range(cut.levels): for each shard: cut.add(level, labels, bits)``; then
    :attr:`value` (uint32 bits of each class's cut-off confidence) and :attr:`at_value` (how many rows
    *at exactly* that confidence the class still takes, after every row above it). A class with
    ``need[c] == 0`` takes nothing (``value`` = 2^32 - 1 sentinel, above every confidence); one with
    ``need[c] >= rows`` is cut at its smallest confidence. Ties at the cut-off are the caller's to break.
    """

    levels = len(_LEVELS)

    def __init__(self, need: np.ndarray, num_classes: int) -> None:
        self.C = int(num_classes)
        self.need = np.asarray(need, dtype=np.int64).copy()
        self.remaining = self.need.copy()
        self.prefix = np.zeros(self.C, dtype=np.uint64)
        self.hist: Optional[np.ndarray] = None
        self.level = -1
        self.done = False

    def add(self, level: int, labels: np.ndarray, bits: np.ndarray) -> None:
        if level != self.level:
            self._close()
            self.level = level
            self.hist = np.zeros(self.C * (1 << _LEVELS[level][1]), dtype=np.int64)
        shift, width = _LEVELS[level]
        labels = np.asarray(labels, dtype=np.int64)
        bits = np.asarray(bits, dtype=np.uint64)
        if level > 0:  # only rows whose higher bits equal the class's prefix so far
            hi = bits >> np.uint64(shift + width)
            keep = hi == self.prefix[labels]
            labels, bits = labels[keep], bits[keep]
        b = ((bits >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        self.hist += np.bincount(labels * (1 << width) + b, minlength=len(self.hist))

    def _close(self) -> None:
        if self.hist is None:
            return
        shift, width = _LEVELS[self.level]
        h = self.hist.reshape(self.C, 1 << width)[:, ::-1]  # highest bin first
        cum = np.cumsum(h, axis=1)
        # the bin holding the remaining-th largest: first where the running count reaches it (the lowest
        # non-empty bin when the class has fewer rows than it needs)
        need = np.maximum(self.remaining, 1)
        reached = cum >= need[:, None]
        nonempty = h > 0
        last_nonempty = np.where(nonempty.any(1), (1 << width) - 1 - np.argmax(nonempty[:, ::-1], axis=1), 0)
        first = np.where(reached.any(1), np.argmax(reached, axis=1), last_nonempty)
        above = np.where(first > 0, cum[np.arange(self.C), np.maximum(first - 1, 0)], 0)
        self.remaining = self.remaining - above
        bin_value = ((1 << width) - 1 - first).astype(np.uint64)
        self.prefix = (self.prefix << np.uint64(width)) | bin_value
        self.hist = None

    def finish(self) -> None:
        self._close()
        self.value = np.where(self.need > 0, self.prefix, np.uint64(2 ** 32 - 1)).astype(np.uint64)
        self.at_value = np.where(self.need > 0, self.remaining, 0)
        self.done = True
