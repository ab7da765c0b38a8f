"""Data conditions of studies: label noise and class imbalance on the labeled training images.

Both act on ``DataBundle.labeled`` only, after the validation split was held out: test images are never
touched and validation stays clean and balanced (it is what decisions such as promotion rest on; a
study measures how training copes with bad training labels, not how well it grades itself on them).
Imbalance is applied first (which images are kept), then noise (which of the kept labels are wrong).
Each has its own seed, so changing the noise rate never changes which images an imbalance keeps.

:func:`apply_conditions` returns the audit record: per kept image its id, clean and training label, so a
run folder can show exactly which labels a result was trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import DataConfig
    from .base import ImageSource

# Fashion-MNIST classes: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt,
# 7 Sneaker, 8 Bag, 9 Ankle boot. Each class goes to the one a careless annotator confuses it with:
# T-shirt<->Shirt, Pullover<->Coat, Trouser<->Dress, the shoes in a cycle Sandal->Sneaker->Ankle boot->
# Sandal, Bag->Pullover. Every class has a target, so exactly rate x n labels flip.
FASHION_MNIST_ASYMMETRIC = {0: 6, 6: 0, 2: 4, 4: 2, 1: 3, 3: 1, 5: 7, 7: 9, 9: 5, 8: 2}


def asymmetric_map(classes: list[str]) -> np.ndarray:
    """The target class of each class: the Fashion-MNIST map above for its 10 classes, else c -> c+1 mod C
    (pair flipping, Han et al. 2018)."""
    from .fashion_mnist import CLASSES

    if list(classes) == list(CLASSES):
        return np.asarray([FASHION_MNIST_ASYMMETRIC[c] for c in range(len(classes))], dtype=np.int64)
    return (np.arange(len(classes)) + 1) % len(classes)


def flip_labels(labels: np.ndarray, rate: float, kind: str, num_classes: int, seed: int,
                mapping: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy labels, positions flipped)``: exactly ``round(rate * n)`` positions drawn uniformly without
    replacement, each given a different class (symmetric: uniform over the other classes; asymmetric:
    ``mapping[label]``). Deterministic in ``seed``."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    k = int(np.floor(rate * n + 0.5))
    rng = np.random.default_rng([seed, 17])
    pos = np.sort(rng.choice(n, size=k, replace=False)) if k else np.zeros(0, dtype=np.int64)
    noisy = labels.copy()
    if kind == "symmetric":
        if num_classes < 2:
            raise ConfigError("data.label_noise", "needs at least 2 classes")
        shift = rng.integers(1, num_classes, size=k)  # 1..C-1: never the own class
        noisy[pos] = (labels[pos] + shift) % num_classes
    elif kind == "asymmetric":
        if mapping is None:
            mapping = (np.arange(num_classes) + 1) % num_classes
        noisy[pos] = mapping[labels[pos]]
    else:
        raise ConfigError("data.label_noise.kind", f"must be symmetric or asymmetric, got {kind!r}")
    assert (noisy[pos] != labels[pos]).all()
    return noisy, pos


def long_tail_counts(available: np.ndarray, ratio: float) -> np.ndarray:
    """Per-class counts ``n_c = round(n_max * ratio ** (-c / (C - 1)))``, at least 1, with ``n_max`` the
    smallest available count (so every class can give its share)."""
    available = np.asarray(available, dtype=np.int64)
    C = len(available)
    n_max = int(available.min())
    if C < 2:
        return available.copy()
    c = np.arange(C)
    return np.maximum(1, np.floor(n_max * ratio ** (-c / (C - 1)) + 0.5)).astype(np.int64)


def long_tail_keep(labels: np.ndarray, num_classes: int, ratio: float, seed: int) -> np.ndarray:
    """Sorted positions of ``labels`` that a long-tailed subset with this ``ratio`` keeps (seeded)."""
    labels = np.asarray(labels, dtype=np.int64)
    available = np.bincount(labels, minlength=num_classes)
    if (available == 0).any():
        raise ConfigError("data.imbalance", "every class needs labeled training images")
    counts = long_tail_counts(available, ratio)
    rng = np.random.default_rng([seed, 23])
    keep = [rng.choice(np.flatnonzero(labels == c), size=int(counts[c]), replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(keep))


def apply_conditions(cfg: "DataConfig", labeled: "ImageSource", classes: list[str]) -> tuple["ImageSource", Optional[dict]]:
    """``(labeled source as trained on, audit record or None)``; the source is unchanged without conditions.

    The record: ``summary`` (the settings, counts per class, images flipped) and ``rows`` (``image_id``,
    ``label_clean``, ``label``, ``flipped`` per kept image)."""
    noise, imb = cfg.label_noise, cfg.imbalance
    if noise is None and imb is None:
        return labeled, None
    C = len(classes)
    summary: dict = {"train_images_before": len(labeled)}
    if imb is not None:
        keep = long_tail_keep(labeled.labels, C, imb.ratio, imb.seed)
        labeled = labeled.subset(keep)
        summary["imbalance"] = {"ratio": imb.ratio, "seed": imb.seed,
                                "per_class": np.bincount(labeled.labels, minlength=C).tolist()}
    clean = np.asarray(labeled.labels, dtype=np.int64).copy()
    flipped = np.zeros(len(clean), dtype=bool)
    if noise is not None and noise.rate > 0:
        mapping = asymmetric_map(classes) if noise.kind == "asymmetric" else None
        noisy, pos = flip_labels(clean, noise.rate, noise.kind, C, noise.seed, mapping)
        labeled = labeled.subset(np.arange(len(labeled)))  # a copy: never change the caller's labels
        labeled.labels = noisy
        flipped[pos] = True
    if noise is not None:
        summary["label_noise"] = {"rate": noise.rate, "kind": noise.kind, "seed": noise.seed,
                                  "flipped": int(flipped.sum()), "actual_rate": float(flipped.mean()) if len(clean) else 0.0}
    summary["train_images"] = len(labeled)
    rows = {"image_id": labeled.image_ids(), "label_clean": clean.tolist(),
            "label": np.asarray(labeled.labels, dtype=np.int64).tolist(), "flipped": flipped.tolist()}
    return labeled, {"summary": summary, "rows": rows}
