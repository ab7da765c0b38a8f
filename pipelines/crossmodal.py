"""Cross-modal runs (docs/crossmodal.md): which modality each job reads, and its sources in that modality.

With paired data (``data.kind: paired``) every source is a :class:`~noisystudent.data.paired.PairedSource`;
a job of a model reading modality ``m`` gets each source's view in ``m`` and the modality's noise. The
pseudo-labels the teacher made on its modality are joined to the student's by ``image_id``: the selected
subset of the unlabeled source is the same items, read in the student's modality, so the store is unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from noisystudent.data.paired import view_of


def student_modality(cfg: Any, rung: Any) -> Optional[str]:
    """A ladder rung's modality: its own, else ``student.modality``; None without paired data."""
    return rung.modality or cfg.student.modality


def with_modality_noise(cfg: Any, model_cfg: Any, modality: Optional[str]) -> Any:
    """``model_cfg`` with its noise replaced by ``modality``'s when that modality sets one."""
    noise = cfg.data.modalities[modality].noise if modality is not None else None
    return dataclasses.replace(model_cfg, noise=noise) if noise is not None else model_cfg


def modality_job_parts(cfg: Any, model_cfg: Any, modality: Optional[str], labeled, test, val, pseudo, unlabeled):
    """``(model_cfg, labeled, test, val, pseudo, unlabeled)`` of a job reading ``modality`` (unchanged for None):
    each source viewed in it, the model's noise replaced by the modality's when it sets one."""
    if modality is None:
        return model_cfg, labeled, test, val, pseudo, unlabeled
    model_cfg = with_modality_noise(cfg, model_cfg, modality)
    if pseudo is not None:
        pseudo = dataclasses.replace(pseudo, source=view_of(pseudo.source, modality))
    return (model_cfg, view_of(labeled, modality), view_of(test, modality), view_of(val, modality), pseudo,
            view_of(unlabeled, modality))
