"""``noisy_student``: labeled cross-entropy plus a loss against stored pseudo-labels (Xie et al., CVPR 2020).

Offline: the targets are the teacher's probabilities computed once on clean images by the labeling job
and read from Parquet, so the teacher costs nothing during training, which is what lets Noisy Student
use very large unlabeled sets. ``mode``: ``soft`` (cross-entropy against the distribution, the paper's
best), ``hard`` (against the argmax) or ``hinton`` (``alpha`` hard CE + (1 - alpha) T^2 KL against the
stored probabilities). The loop's default method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod
from noisystudent.losses import student_loss


@register_method
class NoisyStudent(DistillMethod):
    name = "noisy_student"
    teacher = "offline"
    summary = "Xie et al. 2020: CE on labels + CE/KL against stored pseudo-labels (offline teacher)"

    @dataclass
    class Params:
        mode: Literal["soft", "hard", "hinton"] = "soft"
        temperature: float = field(default=1.0, metadata=validate.range(0, 100, lo_open=True))
        alpha: float = field(default=0.5, metadata=validate.range(0, 1))
        unlabeled_weight: float = field(default=1.0, metadata=validate.range(0, 1000))

    def loss(self, student, teacher, batch):
        p = self.params
        targets = batch.targets if batch.targets is not None else student.unlabeled.new_zeros(0, self.num_classes)
        return student_loss(student.labeled, batch.y, student.unlabeled, targets, mode=p.mode,
                            temperature=p.temperature, alpha=p.alpha, unlabeled_weight=p.unlabeled_weight,
                            label_smoothing=self.label_smoothing, as_tensors=True)
