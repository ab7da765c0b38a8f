"""``fsp``: flow of solution procedure (Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation", CVPR 2017).

The FSP matrix of two feature maps F1 (N, C1, H, W) and F2 (N, C2, H, W) of one model is their inner
product over positions, G[c1, c2] = sum_(h, w) F1[c1, h, w] F2[c2, h, w] / (H W): how the solution flows
from one layer to the other. The student matches the teacher's matrices, one per stage pair:

loss = CE(s, y) + ``beta`` * sum_pairs mean (G_s - G_t)^2 / mean G_t^2      (``normalize: true``, the default)
loss = CE(s, y) + ``beta`` * sum_pairs mean (G_s - G_t)^2                  (``normalize: false``, Yim et al.'s)

Why normalised by default: G is a product of two feature maps, so the plain term grows with the fourth
power of the teacher's feature scale, and a ``beta`` that suits one family is wrong by orders of magnitude
for another. Measured (2026-12-07): a trained ResNet-26's stage outputs (after BN and ReLU) give a plain term
near 6 against a fresh ResNet-8, while a trained WRN-28-2's pre-activation stage outputs (mean |F| 2.5, FSP
entries 3-4) give 57.8 against a fresh WRN-16-2, and that student's loss is NaN within 5 SGD steps at lr 0.1
(the WRN-16-2 column of Sarfraz et al.'s table failed this way with ``beta`` 1). Divided by the teacher's
mean squared entry, the term is a relative error, about 2 at the start for either pair, and the WRN student
trains. ``normalize: false`` is the paper's plain term (bench-kd's ResNet-8 row was measured with it).

Yim et al. take both maps of a pair inside one section of equal resolution (its first and last layer).
Here a pair ``[i, j]`` names two stage outputs; consecutive stages are the input and output of the
section between them, and the finer map is average-pooled to the coarser one's resolution (as
RepDistiller, the benchmark code of Tian et al. ICLR 2020, does). Default pairs ``[[0, 1], [1, 2]]``: the
sections 2 and 3 of the CIFAR ResNets and WRNs. Comparing the matrices needs each stage of a pair to
exist in both models with the same channels and resolution (Yim's student was a shallower ResNet of the
teacher's widths); a pair that does not is a config error naming both models and their stages.

Schedule: the paper trains in two stages, the FSP loss alone (initialising the student), then the task
loss alone. ``init_epochs`` > 0 runs exactly that: ``beta`` * FSP for the first ``init_epochs`` epochs,
then CE alone (RepDistiller's schedule too, with 30 extra init epochs). The default 0 is single-stage,
the joint loss above throughout, so FSP trains at the same budget as every other method. The paper
weights pairs equally and gives no weight against CE, since its stages never mix them; ``beta`` = 1 is
the single-stage weight of AberHu's Knowledge-Distillation-Zoo. (RepDistiller's script passes 50, which
its FSP never applies, as it runs two-stage; from a trained ResNet-26 teacher to a fresh ResNet-8 the
FSP term starts near 6, so 50 would outweigh CE a hundredfold.) No trainable modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod
from noisystudent.errors import ConfigError


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, C1, H1, W1), (N, C2, H2, W2) -> (N, C1, C2); the finer map pooled to the coarser one's size.
    In fp32 even under autocast, which would run the product in bf16/fp16."""
    with torch.autocast(a.device.type, enabled=False):
        a, b = a.float(), b.float()
        if a.shape[-2:] != b.shape[-2:]:
            if a.shape[-2] * a.shape[-1] > b.shape[-2] * b.shape[-1]:
                a = F.adaptive_avg_pool2d(a, b.shape[-2:])
            else:
                b = F.adaptive_avg_pool2d(b, a.shape[-2:])
        return torch.einsum("nchw,ndhw->ncd", a, b) / (a.shape[-2] * a.shape[-1])


def _describe(info: list[dict], i: int) -> str:
    return f"{info[i]['num_chs']} channels at 1/{info[i]['reduction']}"


@register_method
class FSP(DistillMethod):
    name = "fsp"
    teacher = "online"
    summary = "Yim et al. 2017: match FSP (Gram) matrices between stage pairs + CE; optional FSP-only first stage"

    @dataclass
    class Params:
        pairs: list[list[int]] = field(default_factory=lambda: [[0, 1], [1, 2]])
        beta: float = field(default=1.0, metadata=validate.range(0, 1e7))
        init_epochs: int = field(default=0, metadata=validate.range(0, 100000))
        normalize: bool = True

    @classmethod
    def check_params(cls, params, field: str) -> None:
        if not params.pairs:
            raise ConfigError(f"{field}.pairs", "needs at least one stage pair")
        for k, pair in enumerate(params.pairs):
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(f"{field}.pairs[{k}]", f"must be two different stage indices [i, j], got {pair!r}")

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        s_info, t_info = self.student_info, self.teacher_info
        s_name, t_name = s_info[0].get("model", "student"), t_info[0].get("model", "teacher")
        ns, nt = len(s_info), len(t_info)
        pairs = []
        for k, pair in enumerate(params.pairs):
            where = f"{self.field}.pairs[{k}]"
            for i in pair:
                if not (-ns <= i < ns and -nt <= i < nt):
                    raise ConfigError(where, f"FSP pair {pair} does not exist in both models: student {s_name} has "
                                      f"{ns} stages, teacher {t_name} has {nt} (indices 0..{min(ns, nt) - 1})")
            pair = [i % ns for i in pair]
            for i in pair:
                s, t = s_info[i], t_info[i]
                if (s["num_chs"], s["reduction"]) != (t["num_chs"], t["reduction"]):
                    raise ConfigError(where, f"FSP pair {params.pairs[k]} does not exist in both models: stage {i} is "
                                      f"{_describe(s_info, i)} in the student {s_name} but {_describe(t_info, i)} in the "
                                      f"teacher {t_name}; FSP needs equal channels and resolution at both stages")
            pairs.append(tuple(sorted(pair)))
        self._stages = tuple(sorted({i for pair in pairs for i in pair}))
        self._pairs = [(self._stages.index(i), self._stages.index(j)) for i, j in pairs]

    @property
    def student_stages(self):
        return self._stages

    @property
    def teacher_stages(self):
        return self._stages

    def set_epoch(self, epoch: int, total: int) -> None:
        if self.params.init_epochs >= total:
            raise ConfigError(f"{self.field}.init_epochs", f"must be less than the training epochs ({total}), "
                              f"got {self.params.init_epochs}: the classifier would never train")
        super().set_epoch(epoch, total)

    def _pair_loss(self, gs: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Mean squared difference of two batches of FSP matrices; relative to the teacher's mean squared entry
        when ``normalize`` (the teacher is frozen: its scale is a constant, detached; eps for an all-zero map)."""
        err = (gs - gt).pow(2).mean()
        if self.params.normalize:
            err = err / gt.detach().pow(2).mean().clamp_min(1e-12)
        return err

    def loss(self, student, teacher, batch):
        fs, ft = student.features, teacher.features
        fsp = sum(self._pair_loss(fsp_matrix(fs[i], fs[j]), fsp_matrix(ft[i], ft[j])) for i, j in self._pairs)
        ce = self.labeled_ce(student, batch)
        init = self.params.init_epochs
        if init and self.epoch < init:  # first stage: FSP alone (ce * 0 keeps every parameter in DDP's graph)
            total = self.params.beta * fsp + ce * 0
        elif init:  # second stage: the task loss alone (fsp * 0: the same graph on every step)
            total = ce + fsp * 0
        else:
            total = ce + self.params.beta * fsp
        return total, {"loss_labeled": ce.detach(), "loss_fsp": fsp.detach()}
