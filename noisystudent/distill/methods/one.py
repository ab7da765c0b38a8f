"""``one``: On-the-fly Native Ensemble (Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native
Ensemble", NeurIPS 2018).

No pre-trained teacher: the student grows ``branches`` - 1 more copies of its last stage and classifier on
its shared earlier stages (the trunk), a gate weighs the branches per image, and the gated ensemble of
their logits, a better model than any branch, teaches each branch while all of them learn together:

loss = sum_i CE(z_i, y) + CE(z_e, y) + w * T^2 * sum_i KL(softmax(z_e/T) || softmax(z_i/T)),  z_e = sum_i g_i z_i

with the ensemble's targets detached (as the official code's ``KLLoss``). Why: in Sarfraz et al. (ICPR 2020)
ONE is among the strongest methods for the smallest students (ResNet-8), at the cost of training
(not deploying) the extra branches. Defaults are the paper's and its official code's
(github.com/Lan1991Xu/ONE_NeurIPS2018): 3 branches, T = 3 (``loss/kl_loss.py``), the gate of
``models/cifar/resnet.py`` (:class:`noisystudent.models.one.Gate`). The official script also ramps ``w`` up
over the first 80 of 300 epochs with the mean-teacher sigmoid, exp(-5 (1 - t)^2); ``rampup`` (a fraction of
training) turns that on, off by default as in the paper's loss (its eq. 6).

The student is branch 0: the engine's student model is the trunk plus its own last stage and head, and
this method holds the other branches and the gate (its submodules, so they train, resume and sync
under DDP with the student). It reads the trunk output as the student's stage -2. ``export: branch``
(default) writes the student, an ordinary single model; ``export: ensemble`` writes the gated ensemble as
model ``one{m}_{student}`` (:mod:`noisystudent.models.one`), which any checkpoint reader rebuilds.
Only CIFAR ResNets and Wide ResNets have the layout (checked).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod
from noisystudent.errors import ConfigError
from noisystudent.losses import kd_kl


@register_method
class One(DistillMethod):
    name = "one"
    teacher = "none"
    summary = "Lan et al. 2018 (ONE): a gated ensemble of branches on a shared trunk teaches each branch"

    @dataclass
    class Params:
        branches: int = field(default=3, metadata=validate.range(2, 16))
        temperature: float = field(default=3.0, metadata=validate.range(0, 100, lo_open=True))
        rampup: float = field(default=0.0, metadata=validate.range(0, 1))  # sigmoid ramp-up of the KL weight
        export: Literal["branch", "ensemble"] = "branch"

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        from noisystudent.models import create_model
        from noisystudent.models.one import is_one_base, one_parts

        spec = getattr(self, "student_spec", None)  # None where built without one (unit tests)
        name = spec.name if spec is not None else (self.student_info[0].get("model") if self.student_info else None)
        with torch.device("meta"):
            ok = name is not None and is_one_base(create_model(name, num_classes=1))
        if not ok:
            raise ConfigError(self.field, f"method 'one' needs a CIFAR ResNet or Wide ResNet student (resnet8 ... "
                                          f"resnet26, wrn_D_K) to branch; the student is {name!r}")
        self.base_name = name
        kw = {"in_chans": spec.in_chans, "drop_rate": spec.drop_rate, "drop_path_rate": spec.drop_path_rate} if spec else {}
        self.branches, self.gate = one_parts(name, self.num_classes, params.branches, **kw)

    @property
    def student_stages(self):
        return (-2,)  # the trunk: the last stage's input, which every branch and the gate read

    def kl_weight(self) -> float:
        ramp = self.params.rampup
        if ramp <= 0:
            return 1.0
        t = min(1.0, self.epoch / (ramp * self.total_epochs))
        return math.exp(-5.0 * (1.0 - t) ** 2)

    def outputs(self, student_logits: torch.Tensor, trunk: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every branch's logits (the student's first) and the gated ensemble's."""
        from noisystudent.models.one import ensemble

        logits = [student_logits] + [b(trunk) for b in self.branches]
        return logits, ensemble(logits, self.gate(trunk))

    def loss(self, student, teacher, batch):
        p = self.params
        n = len(student.logits) - student.n_extra
        logits, ens = self.outputs(student.logits[:n], student.features[0][:n])
        nl = batch.n_labeled
        ces = [batch.ce(z[:nl], self.label_smoothing) for z in logits + [ens]]  # y: indices or mixup rows
        target = F.softmax(ens.detach().float() / p.temperature, dim=-1)  # every row: the KL needs no label
        kl = sum(kd_kl(z, target, p.temperature) for z in logits)
        total = sum(ces) + self.kl_weight() * kl
        return total, {"loss_labeled": ces[0].detach(), "loss_ensemble": ces[-1].detach(), "loss_kd": kl.detach()}

    def export_model(self, student, spec, member_metrics=None):
        """The student (branch 0), or with ``export: ensemble`` the gated ensemble ``one{m}_{student}``."""
        if self.params.export == "branch":
            return student, spec
        out_spec = dataclasses.replace(spec, name=f"one{self.params.branches}_{spec.name}")
        model = out_spec.build(inference=False)
        state = {f"base.{k}": v for k, v in student.state_dict().items()}
        state.update(self.state_dict())  # branches.* and gate.*: the same names in both
        model.load_state_dict(state)
        return model.to(next(student.parameters()).device).train(student.training), out_spec
