"""``byot``: self-distillation (Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional
Neural Networks via Self Distillation", ICCV 2019).

No separate teacher: the network's deepest classifier teaches shallow classifiers attached to its earlier
stages. Each shallow stage i gets an attention module (a separable conv at stride 2, resized back and a
sigmoid, multiplying the stage's map), a bottleneck (one separable conv per later stage, to the last
stage's width and resolution, then global pooling: the feature F_i) and a linear classifier z_i:

loss = CE(z_C, y) + sum_i [ (1 - alpha) CE(z_i, y) + alpha T^2 KL(softmax(z_C/T) || softmax(z_i/T))
                            + lambda ||F_i - F_C||^2 ]

with z_C the network's own logits and F_C its pooled last stage, both detached as targets (the deepest
classifier trains on labels alone). The heads are this method's submodules, so they train, resume and
sync under DDP with the network; the exported model is the plain network (the heads are dropped).

Defaults, and where they come from: the modules are the authors' code (github.com/ArchipLab-LinfengZhang/
pytorch-self-distillation-final, ``resnet.py``: ``SepConv``, the ``attention`` and ``scala`` stacks);
``alpha`` = 0.3 and ``temperature`` = 3 are its ``--loss_coefficient`` and ``--temperature``. That code has
no feature term; ``feature_weight`` is the paper's L2 hint with the weight of the reimplementation the
paper's README points to (github.com/luanyunteng/pytorch-be-your-own-teacher: beta = 1e-6 on a squared error
summed over a batch of 128), expressed per image so it does not change with the batch size:
1e-6 x 128 = 1.28e-4 on the batch mean of ||F_i - F_C||^2. The KL carries T^2 (Hinton's scaling, as
``hinton`` here and the reimplementation); the authors' code leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod
from noisystudent.losses import kd_kl
from noisystudent.errors import ConfigError


class SepConv(nn.Sequential):
    """Two depthwise-separable 3x3 convs (the first at ``stride``), each with BN and ReLU (the authors' block)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(),
            nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        )


class ShallowHead(nn.Module):
    """Attention, bottleneck and classifier on one stage; ``forward`` gives ``(logits, pooled feature)``.

    ``widths`` / ``reductions``: the channels and strides of this stage and of every later one, so the
    bottleneck ends at the last stage's shape (a stride-1 step where two stages share a resolution)."""

    def __init__(self, widths: list[int], reductions: list[int], num_classes: int):
        super().__init__()
        self.attention = SepConv(widths[0], widths[0], stride=2)
        steps = zip(widths[:-1], widths[1:], reductions[:-1], reductions[1:])
        self.bottleneck = nn.Sequential(*[SepConv(a, b, stride=max(1, r2 // r1)) for a, b, r1, r2 in steps])
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # resized to the map's own size (not x2 as the authors'): odd sizes (7x7 at 28 px) stay aligned
        att = torch.sigmoid(F.interpolate(self.attention(x), size=x.shape[-2:], mode="bilinear", align_corners=False))
        feat = F.adaptive_avg_pool2d(self.bottleneck(att * x), 1).flatten(1)
        return self.fc(feat), feat


@register_method
class BeYourOwnTeacher(DistillMethod):
    name = "byot"
    teacher = "none"
    summary = "Zhang et al. 2019 (Be Your Own Teacher): the deepest classifier teaches heads on earlier stages"

    @dataclass
    class Params:
        stages: Optional[list[int]] = None  # the shallow stages that get a head; null: every stage but the last
        alpha: float = field(default=0.3, metadata=validate.range(0, 1))
        temperature: float = field(default=3.0, metadata=validate.range(0, 100, lo_open=True))
        feature_weight: float = field(default=1.28e-4, metadata=validate.range(0, 1e6))

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        n = len(self.student_info)
        chosen = list(range(n - 1)) if params.stages is None else list(params.stages)
        self.check_stages(tuple(chosen), self.student_info, "student", "stages")
        self.shallow = sorted({s % n for s in chosen}) if n else []
        if not self.shallow or self.shallow[-1] == n - 1:
            raise ConfigError(f"{self.field}.stages", f"needs one or more stages before the last (0..{n - 2}) to "
                                                      f"attach a head to; got {chosen}")
        widths = [int(s["num_chs"]) for s in self.student_info]
        reds = [int(s["reduction"]) for s in self.student_info]
        self.heads = nn.ModuleList([ShallowHead(widths[i:], reds[i:], self.num_classes) for i in self.shallow])

    @property
    def student_stages(self):
        return (*self.shallow, len(self.student_info) - 1)  # the heads' stages, then the last (F_C)

    def head_outputs(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(logits, feature)`` of every shallow head, shallowest first."""
        return [head(f) for head, f in zip(self.heads, features)]

    def loss(self, student, teacher, batch):
        p = self.params
        n = len(student.logits) - student.n_extra
        deep = student.logits[:n]
        deep_feat = F.adaptive_avg_pool2d(student.features[-1][:n], 1).flatten(1).detach().float()
        target = F.softmax(deep.detach().float() / p.temperature, dim=-1)
        nl = batch.n_labeled
        ce_deep = batch.ce(deep[:nl], self.label_smoothing)
        ce_heads, kl, hint = deep.new_zeros(()).float(), deep.new_zeros(()).float(), deep.new_zeros(()).float()
        for logits, feat in self.head_outputs([f[:n] for f in student.features[:-1]]):
            ce_heads = ce_heads + batch.ce(logits[:nl], self.label_smoothing)
            kl = kl + kd_kl(logits, target, p.temperature)
            hint = hint + (feat.float() - deep_feat).pow(2).sum(dim=1).mean()
        total = ce_deep + (1 - p.alpha) * ce_heads + p.alpha * kl + p.feature_weight * hint
        return total, {"loss_labeled": ce_deep.detach(), "loss_heads": ce_heads.detach(), "loss_kd": kl.detach(),
                       "loss_feature": hint.detach()}
