"""ROC curves and the area under them, for image scores and for pixel maps against masks (numpy only).

AUROC is the probability that a random anomalous item scores above a random normal one, ties counting
one half (the trapezoid under the ROC curve through every distinct score gives exactly that). Pixel
AUROC pools every pixel of every image that has a mask (normal images: all zeros), as MVTec AD results
(the STPM paper, anomalib) are reported.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` with one point per distinct score (highest first) and (0, 0) in front.

    ``labels`` are 1 for anomalous, 0 for normal; a point is "score >= threshold is flagged"."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, np.int64)
    tps = np.cumsum(y)[last] if s.size else np.zeros(0)
    fps = (last + 1) - tps
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, s[last]]


def auroc(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """Area under the ROC curve; None when one of the two classes is absent (the area is undefined)."""
    y = np.asarray(labels).astype(bool).ravel()
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, scores)
    return float(np.trapezoid(tpr, fpr))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray, max_pixels: int = 20_000_000) -> Optional[float]:
    """AUROC of every pixel of ``maps`` (``(N, H, W)``) against ``masks`` (same shape, nonzero = defect).

    Above ``max_pixels`` pixels an evenly spaced subset is used (deterministic), to bound memory."""
    m = np.asarray(maps, dtype=np.float32).ravel()
    y = np.asarray(masks).ravel() > 0
    if m.shape != y.shape:
        raise ValueError(f"maps {np.shape(maps)} and masks {np.shape(masks)} differ in shape")
    if m.size > max_pixels:
        step = -(-m.size // max_pixels)
        m, y = m[::step], y[::step]
    return auroc(y, m)


def tpr_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Optional[float]]:
    """Share of anomalous (``tpr``) and of normal (``fpr``) items flagged by ``score > threshold``."""
    y = np.asarray(labels).astype(bool).ravel()
    flagged = np.asarray(scores, dtype=np.float64).ravel() > threshold
    return {"tpr": float(flagged[y].mean()) if y.any() else None,
            "fpr": float(flagged[~y].mean()) if (~y).any() else None}
