"""STPM anomaly detection, orchestrated: a detector trained into a run folder (:mod:`.train`), folders of
images scored on Ray Data into Parquet shards (:mod:`.score`), and the report page (:mod:`.report`).

The model, loss, maps and metrics are in :mod:`noisystudent.anomaly`; the sharded exactly-once job is the
labeling job's (:mod:`pseudo_labels.sharded`). Importing this package does not import torch or Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_anomaly_report", "images_source", "load_detector", "read_scores", "score_images", "train_detector"]


def __getattr__(name: str) -> Any:
    if name in ("train_detector", "load_detector"):
        from . import train

        return getattr(train, name)
    if name in ("score_images", "images_source", "read_scores"):
        from . import score

        return getattr(score, name)
    if name == "build_anomaly_report":
        from .report import build_anomaly_report

        return build_anomaly_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
