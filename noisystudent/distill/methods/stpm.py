"""``stpm``: student-teacher feature pyramid matching (Wang, Han, Ding, Huang, "Student-Teacher Feature
Pyramid Matching for Anomaly Detection", BMVC 2021; anomalib ships it as STFPM).

Unsupervised anomaly detection, not compression: a frozen teacher and a randomly initialised student of
the *same architecture* see only defect-free images, and the student learns to reproduce the teacher's
stage features. At each chosen stage l both feature maps are L2-normalised along the channels, and at
every location (i, j) the paper's per-location loss is

    e^l_ij = 1/2 * || t^l_ij / ||t^l_ij|| - s^l_ij / ||s^l_ij|| ||^2     (in [0, 2])

loss = sum over stages of the mean of e^l over the locations (and the images of the batch). Labels are
not used: the student never sees a class. The same e^l, computed on a test image, is the stage's anomaly
map (:func:`stpm_stage_maps`); :mod:`noisystudent.anomaly` upsamples and combines them.

Default stages 0, 1, 2: the paper's conv2_x..conv4_x of ResNet-18 (its ``layer1``..``layer3``), and the
three block groups of the CIFAR ResNets. No trainable modules. The stages after the last tapped one and
the classifier get no signal; they are kept in the graph with a zero-weight term so DDP sees a gradient
for every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod
from noisystudent.errors import ConfigError


def stpm_stage_maps(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per stage, ``(N, C, H, W)`` pairs -> ``(N, H, W)`` maps of 1/2 ||t/|t| - s/|s|||^2 (float32)."""
    maps = []
    for s, t in zip(student, teacher):
        diff = F.normalize(t.float(), dim=1) - F.normalize(s.float(), dim=1)
        maps.append(0.5 * diff.pow(2).sum(1))
    return maps


def stpm_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """The paper's training loss: sum over stages of the stage map's mean over locations and images."""
    return sum(m.mean() for m in stpm_stage_maps(student, teacher))


@register_method
class STPM(DistillMethod):
    name = "stpm"
    teacher = "online"
    summary = ("Wang et al. 2021: a same-architecture student matches normalised teacher stage features on normal "
               "images (anomaly detection; labels unused)")
    stage_params = {"stages": "both"}

    @dataclass
    class Params:
        stages: list[int] = field(default_factory=lambda: [0, 1, 2])

    @classmethod
    def check_params(cls, params, field: str) -> None:
        if not params.stages:
            raise ConfigError(f"{field}.stages", "needs at least one stage")
        if len(set(params.stages)) != len(params.stages):
            raise ConfigError(f"{field}.stages", f"lists a stage twice: {params.stages}")

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        stages = tuple(params.stages)
        for s in stages:
            a, b = self.student_info[s], self.teacher_info[s]
            if (a["num_chs"], a["reduction"]) != (b["num_chs"], b["reduction"]):
                raise ConfigError(f"{self.field}.stages", f"stage {s} of the student ({a.get('model', 'student')}: "
                                  f"{a['num_chs']} channels, stride {a['reduction']}) differs from the teacher's "
                                  f"({b.get('model', 'teacher')}: {b['num_chs']} channels, stride {b['reduction']}); "
                                  "STPM's student is the teacher's architecture")

    def loss(self, student, teacher, batch):
        match = stpm_loss(student.features, teacher.features)
        unused = student.logits.float().sum() * 0.0  # the head and later stages in the graph, for DDP
        return match + unused, {"loss_stpm": match.detach()}
