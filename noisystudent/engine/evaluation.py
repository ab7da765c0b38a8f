"""Evaluation inside a job: one helper for every place the engine scores a model on held-out images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..data import ImageSource
from ..evaluate import evaluate

EVAL_BATCH = 256  # evaluation batch size: no gradients, so larger than training's


@dataclass
class Evaluator:
    """Scores models of one job on its clean eval transform, device and class names."""

    transform: Callable
    device: torch.device
    classes: list[str]

    def evaluate(self, model: torch.nn.Module, source: ImageSource, classes: Optional[list[str]] = None,
                 progress: bool = False) -> dict[str, Any]:
        """:func:`noisystudent.evaluate.evaluate`'s whole result (``top1`` is the accuracy)."""
        return evaluate(model, source, self.transform, batch_size=EVAL_BATCH, device=self.device,
                        classes=self.classes if classes is None else classes, progress=progress)

    def splits(self, model: torch.nn.Module, job, classes: Optional[list[str]] = None) -> dict[str, dict]:
        """Validation and test evaluations of ``model`` on the job's sets, keyed ``val_acc`` / ``test_acc``
        (each :meth:`evaluate`'s whole result); a set the job lacks is left out."""
        return {key: self.evaluate(model, src, classes) for key, src in (("val_acc", job.val), ("test_acc", job.test))
                if src is not None}
