"""Which pseudo-labels the student sees: confidence threshold, then the paper's per-class balance.

Pure functions on DataFrames; reading and writing live in :mod:`pseudo_labels.store` and
:mod:`pseudo_labels.selection_io`.

Balancing (Xie et al. 2020, section 3): with K images per class, a class with more than K keeps its K
most confident images, and a class with fewer is duplicated up to K. Duplicates are not copied rows:
each kept row gets an integer ``weight`` (how many times the student should see it), so the Parquet
stays one row per image and a sampler can draw rows with probability proportional to ``weight``.
Ties in confidence are broken by ``image_id`` so the same input always gives the same selection.

:func:`select_pseudo_labels` works on one DataFrame of all rows (the reference, and what small callers
use); the pipeline streams the same selection shard by shard (:func:`pseudo_labels.selection_io.select_folder`)
with :func:`keep_top_k` and :func:`balanced_weights_for_ranked`, and a test checks the two agree.
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

    kept = df[df["confidence"].to_numpy() >= threshold]
    per_class_before = _class_counts(kept["label"].to_numpy(), num_classes)
    ranked = _ranked(kept)

    if per_class is None:
        k: Optional[int] = None
        selected = ranked.assign(weight=np.ones(len(ranked), dtype=np.int64))
    else:
        k = len(kept) // num_classes if int(per_class) == 0 else int(per_class)
        weights = np.zeros(len(ranked), dtype=np.int64)
        start = 0
        for count in per_class_before:  # ranked is grouped by label in class order
            weights[start : start + count] = balance_weights(count, k)
            start += count
        selected = ranked.assign(weight=weights)
        selected = selected[selected["weight"].to_numpy() > 0]
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
# the same selection, streamed: Arrow tables one shard at a time, a bounded table per class


def ranked_table(table: "pa.Table") -> "pa.Table":
    """``table`` sorted by class, confidence (highest first), image_id: :func:`_ranked` on Arrow."""
    import pyarrow.compute as pc

    order = pc.sort_indices(table, sort_keys=[("label", "ascending"), ("confidence", "descending"),
                                              ("image_id", "ascending")])
    return table.take(order)


def class_ranks(labels: np.ndarray) -> np.ndarray:
    """The rank of each row within its class, for ``labels`` sorted ascending (0 for each class's first row)."""
    labels = np.asarray(labels)
    return np.arange(len(labels)) - np.searchsorted(labels, labels, side="left")


def keep_top_k(table: "pa.Table", k: int) -> "pa.Table":
    """The ``k`` best rows of each class (by :func:`ranked_table`'s order), ranked: the bounded "heap" the
    streaming selection merges each shard into, so its size stays at most ``k`` rows a class."""
    ranked = ranked_table(table)
    return ranked.filter(class_ranks(ranked["label"].to_numpy()) < k)


def balanced_weights_for_ranked(labels: np.ndarray, counts_before: Sequence[int], k: int) -> np.ndarray:
    """:func:`balance_weights` for rows already cut to ``k`` a class and ranked (``labels`` sorted):
    row ``r`` of class ``c`` gets 1 when ``c`` had at least ``k`` rows, else ``k // n + (r < k % n)``."""
    labels = np.asarray(labels, dtype=np.int64)
    ranks = class_ranks(labels)
    n = np.asarray(counts_before, dtype=np.int64)[labels]
    q, r = np.divmod(k, np.maximum(n, 1))
    return np.where(n >= k, 1, q + (ranks < r)).astype(np.int64)
