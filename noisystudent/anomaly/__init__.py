"""Unsupervised anomaly detection by student-teacher feature pyramid matching (STPM; Wang et al., BMVC 2021).

A frozen teacher (a classifier of this project, or torchvision weights from a local file) and a randomly
initialised student of the same architecture see only normal images; the student learns the teacher's
L2-normalised stage features through the distillation engine (method ``stpm``,
:mod:`noisystudent.distill.methods.stpm`). Where the two disagree on a new image is the anomaly: a map per
pixel and a score per image (:class:`Detector`).

The library core, without Ray: maps, scores and the threshold (:mod:`.detector`),
ROC/AUROC (:mod:`.metrics`), synthetic defects with masks (:mod:`.defects`), torchvision weights
(:mod:`.weights`). The detector's config (:mod:`pipelines.anomaly.config`: it has a ``ray`` section),
training a detector into a run folder, scoring folders on Ray Data into Parquet shards and the report are
in :mod:`pipelines.anomaly`; the commands are ``noisystudent anomaly train|score|report``.
"""

from .defects import DEFECT_KINDS, add_defect, make_defects
from .detector import Detector, choose_threshold, combine_maps, decode_map, encode_map, score_source
from .metrics import auroc, pixel_auroc, roc_curve, tpr_at

__all__ = [
    "DEFECT_KINDS",
    "Detector",
    "add_defect",
    "auroc",
    "choose_threshold",
    "combine_maps",
    "decode_map",
    "encode_map",
    "make_defects",
    "pixel_auroc",
    "roc_curve",
    "score_source",
    "tpr_at",
]
