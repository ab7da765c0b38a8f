"""``hinton``: knowledge distillation by softened outputs (Hinton, Vinyals & Dean, 2015).

loss = ``alpha`` * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

The T^2 factor keeps the soft term's gradients the same size whatever T. The KL term is taken on every
image of the batch (labeled and unlabeled alike: it needs no label), the CE term on labeled images only.
Defaults T = 4, alpha = 0.9 are those of the comparison this project measures against (Sarfraz et al.,
ICPR 2020, following Hinton's CIFAR setting).

``source: online`` (default) runs the frozen teacher on the very batch the student sees, noise included.
``source: offline`` uses the probabilities stored by the labeling job instead; they were computed at the
labeling temperature, so that temperature must equal T (checked when the config is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch.nn.functional as F

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod
from noisystudent.losses import kd_kl


@register_method
class Hinton(DistillMethod):
    name = "hinton"
    summary = "Hinton et al. 2015: T^2 KL between softened outputs + (1 - alpha) CE on labels"

    @dataclass
    class Params:
        temperature: float = field(default=4.0, metadata=validate.range(0, 100, lo_open=True))
        alpha: float = field(default=0.9, metadata=validate.range(0, 1))
        source: Literal["online", "offline"] = "online"

    teacher = "online"  # the default source; "offline" with source: offline

    @classmethod
    def teacher_for(cls, config):
        return config.get("source", "online")

    def loss(self, student, teacher, batch):
        p = self.params
        if p.source == "online":
            probs = teacher.probs(p.temperature)  # an ensemble's weighted mixture at T
            kd = kd_kl(student.logits, probs, p.temperature)
        else:  # stored probabilities (already at T) exist for the unlabeled rows only
            targets = batch.targets if batch.targets is not None else student.logits.new_zeros(0, self.num_classes)
            kd = kd_kl(student.unlabeled, targets, p.temperature)
        ce = self.labeled_ce(student, batch)
        total = p.alpha * kd + (1 - p.alpha) * ce
        return total, {"loss_labeled": ce.detach(), "loss_kd": kd.detach()}
