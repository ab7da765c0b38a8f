"""The throughput suite of ``python -m bench``: its sections, its sizes and its Fashion-MNIST split.

:mod:`bench.throughput`, :mod:`bench.online` and :mod:`bench.labeling` measure with these sizes on this data;
``bench/__main__.py`` runs them and prints one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CONFIG_FILE = Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist.yaml"
SECTIONS = ("teacher", "online", "labeling", "workers")


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; ``quick`` is a smoke test, ``full`` the real measurement."""

    name: str
    labels_per_class: int  # labeled images for training = 10 x this
    train_steps: int  # optimizer steps per training measurement (batch 64)
    worker_steps: int  # steps per Ray Train worker (each worker runs this many)
    label_images: Optional[int]  # unlabeled images to label (None = all 59,000)
    repeats: int  # alternating ours/bare pairs per row; the median is reported
    worker_repeats: int  # the same for Ray Train rows (each costs a Ray Train start)


QUICK = Sizes("quick", labels_per_class=50, train_steps=6, worker_steps=6, label_images=5_000, repeats=2,
              worker_repeats=1)
FULL = Sizes("full", labels_per_class=200, train_steps=30, worker_steps=20, label_images=None, repeats=3,
             worker_repeats=2)


def fashion_mnist(labels_per_class: int):
    """The config of ``configs/fashion_mnist.yaml`` and its Fashion-MNIST split (seed 0), with
    ``labels_per_class`` x 10 labeled images and *all* the rest (60,000 minus those) unlabeled."""
    import yaml

    from noisystudent.data import create_data
    from pipelines.config import config_from_dict

    data = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    data["data"]["labels_per_class"] = labels_per_class
    data["data"]["unlabeled_limit"] = None  # the file keeps 10,000 for `make run`; labeling uses them all
    cfg = config_from_dict(data)
    return cfg, create_data(cfg.data)
