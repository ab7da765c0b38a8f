"""``supervised``: cross-entropy on the labeled images, no teacher.

The teacher of generation 0 and every "student without a teacher" baseline train with it, so a
comparison against a distillation method differs in the loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod


@register_method
class Supervised(DistillMethod):
    name = "supervised"
    teacher = "none"
    summary = "cross-entropy on labeled images only (the baseline; generation 0's teacher)"

    @dataclass
    class Params:
        pass

    def loss(self, student, teacher, batch):
        ce = self.labeled_ce(student, batch)
        return ce, {"loss_labeled": ce.detach()}
