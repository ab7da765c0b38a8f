"""``sp``: similarity-preserving distillation (Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019).

Images that the teacher represents alike should be represented alike by the student. For a batch of b
images, a stage's activations flattened per image give Q (b, C*H*W); G = Q Q^T, each row L2-normalised,
is the batch similarity matrix. The student matches the teacher's:

loss = CE(s, y) + ``gamma`` * sum_stages ||G_t - G_s||_F^2 / b^2

``gamma`` = 3000 is the paper's CIFAR-10 value (also RepDistiller's, the benchmark code of Tian et al.
ICLR 2020); the default tap is the last stage, the output of the last group of residual blocks, as in
RepDistiller. Only the batch relations are compared, so the two models' stages may differ in channels and
resolution. No trainable modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import StagePairsMethod


def similarity(f: torch.Tensor) -> torch.Tensor:
    """(b, ...) -> (b, b): row-normalised Gram matrix of the flattened activations."""
    q = f.float().flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    b = f_s.shape[0]
    with torch.autocast(f_s.device.type, enabled=False):  # Gram matrices in fp32 under autocast too
        return (similarity(f_t) - similarity(f_s)).pow(2).sum() / max(b * b, 1)


@register_method
class SimilarityPreserving(StagePairsMethod):
    name = "sp"
    teacher = "online"
    summary = "Tung & Mori 2019: match the batch similarity matrices of stages + CE"

    @dataclass
    class Params:
        student_stages: list[int] = field(default_factory=lambda: [-1])
        teacher_stages: list[int] = field(default_factory=lambda: [-1])
        gamma: float = field(default=3000.0, metadata=validate.range(0, 1e8))

    def loss(self, student, teacher, batch):
        sp = sum(sp_loss(s, t) for s, t in zip(student.features, teacher.features))
        ce = self.labeled_ce(student, batch)
        return ce + self.params.gamma * sp, {"loss_labeled": ce.detach(), "loss_sp": sp.detach()}
