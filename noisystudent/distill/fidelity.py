"""Fidelity: how often the student's top-1 class equals the teacher's on the same images.

Stanton et al., "Does knowledge distillation really work?" (NeurIPS 2021), show that a student can gain
accuracy while matching its teacher poorly; "A good teacher is patient and consistent" (Beyer et al.,
CVPR 2022) optimises for exactly this agreement. Every distillation job reports it on the test set
beside accuracy, so a method's effect on matching the teacher is visible.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from noisystudent.checkpoint import Checkpoint
from noisystudent.data import ImageSource
from noisystudent.evaluate import predict_probs


def fidelity(student: torch.nn.Module, teacher: Checkpoint, source: ImageSource, transform: Callable,
             device: str | torch.device = "cpu", batch_size: int = 256,
             teacher_transform: Optional[Callable] = None,
             teacher_source: Optional[ImageSource] = None) -> dict[str, float]:
    """``{"test_fidelity": agreement, "teacher_test_acc": the teacher's accuracy on the same images}``.

    ``transform`` is the student's eval transform; ``teacher_transform`` the teacher's (None: the same),
    which differs when the teacher takes another input size than the student: it is compared on the
    view it was taught with, not on the student's (a 32 px teacher shown 28 px images agrees less)."""
    t_model = teacher.build_model(device)
    s_idx, s_probs = predict_probs(student, source, transform, batch_size=batch_size, device=device, progress=False)
    # teacher_source: the same items in the teacher's modality (cross-modal), index-aligned with source
    t_idx, t_probs = predict_probs(t_model, teacher_source if teacher_source is not None else source, teacher_transform or transform, batch_size=batch_size,
                                   device=device, progress=False)
    common, si, ti = np.intersect1d(s_idx, t_idx, return_indices=True)
    if len(common) == 0:
        return {"test_fidelity": float("nan")}
    s_pred, t_pred = s_probs[si].argmax(1), t_probs[ti].argmax(1)
    out = {"test_fidelity": float((s_pred == t_pred).mean())}
    if source.labels is not None:
        out["teacher_test_acc"] = float((t_pred == np.asarray(source.labels)[common]).mean())
    return out
