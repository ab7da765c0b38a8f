"""``fitnet``: hints from an intermediate teacher stage (Romero et al., "FitNets", ICLR 2015).

A learned regressor (1x1 conv + BN, as in the common CIFAR re-implementations; the paper used a conv
regressor) maps the student's "guided" stage onto the teacher's "hint" stage, and the squared distance
between the two is added to the task loss:

loss = CE(s, y) + ``beta`` * mean ||r(s_stage) - t_stage||^2

with ``beta`` = 100 as in Sarfraz et al. (ICPR 2020) and the RepDistiller benchmark; spatial sizes are
matched by adaptive average pooling when they differ. The regressor trains with the student, is saved
in the resume state and is synchronised under DDP.

The paper trains in two stages: hints first (the student up to its guided layer, and the regressor,
minimise the hint loss alone), then the whole student. ``hint_epochs`` > 0 runs that first stage for
the first ``hint_epochs`` epochs (``beta`` * hint alone; the layers above the guided stage and the
classifier get zero gradients), then the joint loss above. The paper's second stage is Hinton KD
rather than CE + hint; the default 0 is RepDistiller's single-stage training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import nn

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod
from noisystudent.errors import ConfigError


@register_method
class FitNet(DistillMethod):
    name = "fitnet"
    teacher = "online"
    summary = "Romero et al. 2015: regress a student stage onto a teacher stage (hint loss) + CE"
    stage_params = {"student_stage": "student", "teacher_stage": "teacher"}

    @dataclass
    class Params:
        student_stage: int = -2  # the middle stage of the CIFAR models (the paper's guided layer)
        teacher_stage: int = -2
        beta: float = field(default=100.0, metadata=validate.range(0, 1e6))
        hint_epochs: int = field(default=0, metadata=validate.range(0, 100000))  # first stage: hints alone

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        c_s = self.student_info[params.student_stage]["num_chs"]
        c_t = self.teacher_info[params.teacher_stage]["num_chs"]
        self.regressor = nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t))

    def set_epoch(self, epoch: int, total: int) -> None:
        if self.params.hint_epochs >= total:
            raise ConfigError(f"{self.field}.hint_epochs", f"must be less than the training epochs ({total}), "
                              f"got {self.params.hint_epochs}: the classifier would never train")
        super().set_epoch(epoch, total)

    def loss(self, student, teacher, batch):
        s = self.regressor(student.features[0])
        t = teacher.features[0]
        if s.shape[-2:] != t.shape[-2:]:
            s = F.adaptive_avg_pool2d(s, t.shape[-2:])
        hint = F.mse_loss(s.float(), t.float())
        ce = self.labeled_ce(student, batch)
        # hint stage: ce * 0 keeps the classifier in the graph (DDP wants a gradient for every parameter)
        task = ce * 0 if self.epoch < self.params.hint_epochs else ce
        return task + self.params.beta * hint, {"loss_labeled": ce.detach(), "loss_hint": hint.detach()}
