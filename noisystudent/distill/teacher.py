"""The online teacher: a frozen model that runs on exactly the batch the student sees.

Loaded from a checkpoint (weights-only) on every training worker, in eval mode (BatchNorm uses its
running statistics and never updates them, dropout and drop path are off), with ``requires_grad``
off on every parameter. Its forward runs under ``torch.no_grad()``, not ``torch.inference_mode()``:
tensors made in inference mode cannot be saved for backward, and a student loss such as
``KL(teacher || student)`` or FitNet's ``||r(s) - t||^2`` saves them. Under autocast (bf16/fp16 on a GPU)
the teacher runs in the same precision as the student.
"""

from __future__ import annotations

from typing import Optional

import torch

from noisystudent.checkpoint import Checkpoint
from noisystudent.distill.base import Outputs


class OnlineTeacher:
    """Not an ``nn.Module`` on purpose: it must stay out of the student's optimizer, DDP wrapper and
    ``state_dict`` (the teacher's checkpoint is already on disk and named in the config)."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device, stages: tuple[int, ...] = (),
                 channels_last: bool = False):
        self.checkpoint = checkpoint
        self.model = checkpoint.build_model(device, channels_last)  # eval mode, noise rates zero
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.stages = tuple(stages)

    @property
    def feature_info(self) -> list[dict]:
        return list(self.model.feature_info)

    def __call__(self, x: torch.Tensor, n_labeled: int, stages: Optional[tuple[int, ...]] = None) -> Outputs:
        stages = self.stages if stages is None else stages
        self.model.eval()
        with torch.no_grad():
            if stages:
                logits, feats = self.model.forward_intermediates(x, indices=list(stages))
            else:
                logits, feats = self.model(x), []
        return Outputs(logits=logits, features=list(feats), n_labeled=n_labeled)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(x).argmax(1)
