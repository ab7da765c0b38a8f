"""The protocol every arm of ``make bench-peers`` shares, derived from our experiment config.

Why derive rather than restate: the loop's defaults (``configs/fashion_mnist.yaml``) are being tuned, and
a comparison is only fair while both sides use the same split, model, steps and batch. So the split is
made by our data code (:func:`noisystudent.data.create_data`: the same labeled / validation / unlabeled
/ test images our loop trains and reports on, ``data.split_seed`` fixing them whatever the training
seed), the network is the last ladder rung, the batch is ``student.train.batch_size`` labeled images
plus ``student.ratio`` times as many unlabeled ones, and the optimizer steps are those our student
generations add up to.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

#: the bench-quick overrides: seconds-long jobs on a few thousand images (a smoke test of the harness,
#: not a measurement); they go to our loop as --set flags and shape the USB arms through the protocol
QUICK_OVERRIDES: dict[str, Any] = {
    "data.unlabeled_limit": 3000,
    "data.test_limit": 2000,
    "teacher_train.epochs": 2,
    "teacher_train.eval_every": 1,
    "teacher_train.warn_below_steps": 0,
    "student.generations": 1,
    "student.train.epochs": 1,
    "student.train.steps_per_epoch": 12,
    "student.train.min_steps": 0,
    "student.train.total_steps": None,
    "student.train.eval_every": 1,
    "student.train.warn_below_steps": 0,
}

#: USB's own FixMatch / Pseudo-Label recipe (its classic-CV configs): lr 0.03, weight decay 5e-4
USB_LR, USB_WEIGHT_DECAY = 0.03, 5e-4


def load(config_path: str | Path, overrides: Optional[dict[str, Any]] = None):
    """Our validated config with ``overrides`` applied, exactly as ``noisystudent run --set`` applies them."""
    from pipelines.config import load_config

    return load_config(config_path, overrides or {})


def student_steps(cfg) -> Optional[int]:
    """The optimizer steps of all student generations together, when the config fixes them (``total_steps``,
    or ``epochs x steps_per_epoch`` with the ``min_steps`` floor); None when an epoch is one pass over the
    selected pseudo-labels, whose number only the finished run knows (the harness then reads the steps
    from its metrics). Mirrors :func:`noisystudent.train.plan_steps`; the labeled fine-tune is not counted."""
    t = cfg.student.train
    if t.total_steps is not None:
        per_gen = t.total_steps
    elif t.steps_per_epoch:
        per_epoch = t.steps_per_epoch
        if per_epoch * t.epochs < t.min_steps:
            per_epoch = -(-t.min_steps // t.epochs)
        per_gen = per_epoch * t.epochs
    else:
        return None
    return per_gen * cfg.student.generations


def build(cfg, config_path: str, overrides: dict[str, Any], out_dir: Path) -> tuple[dict, Path]:
    """Write ``out_dir/split.npz`` (uint8 images and labels of each set, and their indices into the
    Fashion-MNIST splits) and return ``(protocol, split_path)``; the protocol is plain JSON data."""
    from noisystudent.data import create_data

    if cfg.data.kind != "fashion_mnist":
        raise SystemExit(f"error: data.kind: bench-peers runs on fashion_mnist configs, got {cfg.data.kind!r}")
    bundle = create_data(cfg.data)
    sets = {"labeled": bundle.labeled, "val": bundle.val, "unlabeled": bundle.unlabeled, "test": bundle.test}
    missing = [k for k, s in sets.items() if s is None]
    if missing:
        raise SystemExit(f"error: data: the config gives no {missing[0]} images (bench-peers needs all four sets)")
    arrays = {}
    for name, src in sets.items():
        arrays[f"x_{name}"] = np.ascontiguousarray(src.load_all()[..., 0])  # (N, H, W) uint8
        arrays[f"idx_{name}"] = np.asarray(src.indices, dtype=np.int64)
        labels = src.labels if name != "unlabeled" else src.hidden_labels
        arrays[f"{'y' if name != 'unlabeled' else 'hidden_y'}_{name}"] = np.asarray(labels, dtype=np.int64)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_path = out_dir / "split.npz"
    tmp = out_dir / "split.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(split_path)
    last = cfg.student_model(cfg.student.generations)
    ratio = cfg.student.ratio
    protocol = {
        "config": str(config_path), "overrides": overrides, "num_classes": len(bundle.classes),
        "split_seed": cfg.data.split_seed, "labels_per_class": cfg.data.labels_per_class,
        "sizes": {k: len(s) for k, s in sets.items()},
        "image_size": cfg.data.image_size, "in_chans": cfg.data.in_chans, "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "model": {"name": last.name, "drop_rate": last.drop_rate, "drop_path_rate": last.drop_path_rate},
        "batch_size": cfg.student.train.batch_size, "ratio": ratio, "uratio": max(1, int(math.floor(ratio + 0.5))),
        "steps": student_steps(cfg), "generations": cfg.student.generations,
        "usb_lr": USB_LR, "usb_weight_decay": USB_WEIGHT_DECAY,
    }
    return protocol, split_path
