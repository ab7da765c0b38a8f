"""``rkd``: relational knowledge distillation (Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019).

The student matches the structure of the teacher's embedding space rather than the embeddings: the
pairwise distances of the batch (each divided by the batch's mean distance, so scale does not matter) and
the angles formed by every triplet, both compared with the Huber loss (smooth L1, delta 1):

loss = CE(s, y) + ``distance_weight`` * L_distance + ``angle_weight`` * L_angle

``mode``: ``distance`` (RKD-D), ``angle`` (RKD-A) or ``both`` (RKD-DA, the default), with the paper's
weights 25 and 50. The embedding is a stage output global-average-pooled (default the last stage: the
pooled features the classifier reads, the paper's "last pooling layer" in its classification
experiments and RepDistiller's tap). The two embeddings may differ in size. The angle term costs
O(b^3) in memory on a batch of b. No trainable modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod


def _embed(f: torch.Tensor) -> torch.Tensor:
    return (f.float().mean((-2, -1)) if f.ndim == 4 else f.float()).flatten(1)


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances over their mean; clamped before the root so the diagonal (0) has a
    finite gradient, then zeroed."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    d = d * off
    return d / d[off].mean().clamp_min(1e-12)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [j, i] = unit vector from e_j to e_i
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cosine of the angle at j between i and k


def rkd_losses(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance loss, angle loss) between two batches of features; zero for batches of fewer than 2 / 3.
    In fp32 even under autocast: distances from |a|^2 + |b|^2 - 2ab cancel badly in bf16."""
    with torch.autocast(f_s.device.type, enabled=False):
        s, t = _embed(f_s), _embed(f_t).detach()
        zero = s.sum() * 0
        dist = F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t)) if len(s) >= 2 else zero
        angle = F.smooth_l1_loss(_angles(s), _angles(t)) if len(s) >= 3 else zero
        return dist, angle


@register_method
class RKD(DistillMethod):
    name = "rkd"
    teacher = "online"
    summary = "Park et al. 2019: match the batch's distances (25) and angles (50) of pooled embeddings + CE"
    stage_params = {"student_stage": "student", "teacher_stage": "teacher"}

    @dataclass
    class Params:
        mode: Literal["distance", "angle", "both"] = "both"
        distance_weight: float = field(default=25.0, metadata=validate.range(0, 1e6))
        angle_weight: float = field(default=50.0, metadata=validate.range(0, 1e6))
        student_stage: int = -1
        teacher_stage: int = -1


    def loss(self, student, teacher, batch):
        p = self.params
        dist, angle = rkd_losses(student.features[0], teacher.features[0])
        ce = self.labeled_ce(student, batch)
        total = ce
        if p.mode in ("distance", "both"):
            total = total + p.distance_weight * dist
        if p.mode in ("angle", "both"):
            total = total + p.angle_weight * angle
        return total, {"loss_labeled": ce.detach(), "loss_rkd_distance": dist.detach(), "loss_rkd_angle": angle.detach()}
