"""``at``: attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

A stage's spatial attention map is the mean over channels of its activations raised to the power ``p``,
flattened and L2-normalised per image. The student matches the teacher's map at each chosen stage pair:

loss = CE(s, y) + ``beta`` / 2 * sum_j mean_(n, k) (Q_s^j / ||Q_s^j|| - Q_t^j / ||Q_t^j||)^2

Defaults are the paper's CIFAR setting: p = 2, beta = 1000 (the paper's "10^3 divided by the number of
elements in the attention map and batch size", i.e. the mean above; RepDistiller, the benchmark code of
Tian et al. ICLR 2020, uses the same maps and beta without the 1/2) at the output of every residual
group (stages 0, 1, 2 of the CIFAR ResNets and WRNs). The channel counts may differ (a map sums them
away); maps of different sizes are matched by average-pooling the larger one, as RepDistiller does.
No trainable modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import StagePairsMethod


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): channel mean of |f|^p, L2-normalised per image."""
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


def pool_to_common(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever of two feature maps is larger to the other's spatial size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-2] * a.shape[-1] > b.shape[-2] * b.shape[-1]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    with torch.autocast(f_s.device.type, enabled=False):  # in fp32 under bf16/fp16 autocast too
        f_s, f_t = pool_to_common(f_s.float(), f_t.float())
        return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@register_method
class AttentionTransfer(StagePairsMethod):
    name = "at"
    teacher = "online"
    summary = "Zagoruyko & Komodakis 2017: match normalised spatial attention maps of stages + CE"

    @dataclass
    class Params:
        student_stages: list[int] = field(default_factory=lambda: [0, 1, 2])
        teacher_stages: list[int] = field(default_factory=lambda: [0, 1, 2])
        p: float = field(default=2.0, metadata=validate.range(0, 16, lo_open=True))
        beta: float = field(default=1000.0, metadata=validate.range(0, 1e7))

    def loss(self, student, teacher, batch):
        p = self.params
        at = sum(at_loss(s, t, p.p) for s, t in zip(student.features, teacher.features))
        ce = self.labeled_ce(student, batch)
        return ce + p.beta / 2 * at, {"loss_labeled": ce.detach(), "loss_at": at.detach()}
