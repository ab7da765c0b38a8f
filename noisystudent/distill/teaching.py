"""Teaching settings: what an online teacher sees of the images its student trains on.

Beyer et al. ("Knowledge distillation: A good teacher is patient and consistent", CVPR 2022) show that
a teacher whose outputs are computed once on clean images (``fixed``: what stored pseudo-labels are)
lets the student overfit them, and that the teacher should see the *same* augmented view as the
student (``consistent``), best with mixup applied identically to both (``function_matching``), over a
long schedule. ``independent`` (each its own augmentation) is their ablation between the two.

How the views reach the loop: for ``fixed`` and ``independent`` the training transform returns both
views stacked (:class:`PairTransform`), so the data loaders, ``DistributedSampler`` and the skipping of
unreadable images stay as they are; :meth:`Teaching.prepare` splits them, mixes them and resizes each
to its model's input side. The mixing is written here, not taken from torchvision: ``v2.MixUp`` needs
labels and mixes one tensor, while function matching mixes two views identically and unlabeled rows
too; it is the few lines of :func:`mixup_plan` / :func:`mix`, tested in ``tests/test_teaching.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from noisystudent.distill.base import Batch

MODES = ("fixed", "independent", "consistent", "function_matching")


class PairTransform:
    """``image -> (2, C, H, W)``: the student's view stacked on the teacher's.

    ``teacher`` is the eval transform (``fixed``) or the training transform again (``independent``:
    albumentations draws fresh random parameters on every call)."""

    def __init__(self, student: Callable, teacher: Callable):
        self.student, self.teacher = student, teacher

    def __call__(self, image: Any) -> torch.Tensor:
        from noisystudent.data.torch_dataset import apply_transform

        return torch.stack([apply_transform(self.student, image), apply_transform(self.teacher, image)])


def mixup_plan(n_labeled: int, n_unlabeled: int, alpha: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A permutation of the batch's rows that pairs labeled rows among themselves and unlabeled rows
    among themselves, and the weight ``lam ~ Beta(alpha, alpha)`` of the batch (mixup's one draw per
    batch). Drawn from torch's global generator (seeded, and restored when a job resumes)."""
    lam = float(torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha))).sample())
    perm_l = torch.randperm(n_labeled)
    perm_u = torch.randperm(n_unlabeled) + n_labeled
    return torch.cat([perm_l, perm_u]).to(device), lam


def mix(x: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]``: the same pairs and weight for every tensor it is applied to."""
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` at ``size`` x ``size`` (bilinear, antialiased when shrinking); unchanged when already there."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@dataclass
class Teaching:
    """One job's teaching setting, applied to each step's batch by the training loop."""

    mode: str = "consistent"
    mixup_alpha: float = 1.0
    student_size: int = 28
    teacher_size: int = 28
    num_classes: int = 0  # the width of mixed label rows (function_matching)

    @classmethod
    def from_config(cls, cfg: Any, student_size: int, teacher_size: Optional[int], num_classes: int) -> "Teaching":
        """``cfg``: a :class:`~noisystudent.config.TeachingConfig`, its dict, or None (``consistent``)."""
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            cfg = vars(cfg)
        mode = cfg.get("mode", "consistent")
        if mode not in MODES:
            raise ValueError(f"teaching mode must be one of {', '.join(MODES)}, got {mode!r}")
        t_size = cfg.get("teacher_image_size") or teacher_size or student_size
        return cls(mode=mode, mixup_alpha=float(cfg.get("mixup_alpha", 1.0)), student_size=student_size,
                   teacher_size=int(t_size), num_classes=num_classes)

    @property
    def view_size(self) -> int:
        """The side views are drawn at: the larger model's, so neither model sees an upsampled image."""
        return max(self.student_size, self.teacher_size)

    @property
    def paired(self) -> bool:
        """Whether the loaders must return two views per image."""
        return self.mode in ("fixed", "independent")

    def train_transform(self, train_tf: Callable, eval_tf: Callable) -> Callable:
        """The loaders' transform: both views for ``fixed``/``independent``, the student's alone else.
        ``train_tf`` and ``eval_tf`` are built at :attr:`view_size`."""
        if self.mode == "fixed":
            return PairTransform(train_tf, eval_tf)
        if self.mode == "independent":
            return PairTransform(train_tf, train_tf)
        return train_tf

    def prepare(self, batch: Batch, mixup: bool = True) -> tuple[Batch, torch.Tensor]:
        """Split paired views into ``x_labeled``/``x_unlabeled`` (student) and ``x_teacher``, mix both
        identically under ``function_matching`` (labels of labeled rows become the mixed probability
        rows), resize each to its model. Returns the batch and the labeled rows' hard labels (for the
        accuracy the loop logs)."""
        y_hard = batch.y
        parts = [batch.x_labeled] + ([batch.x_unlabeled] if batch.x_unlabeled is not None else [])
        if self.paired:
            student = [p[:, 0] for p in parts]
            teacher = torch.cat([p[:, 1] for p in parts])
        else:
            student, teacher = parts, None
        n_l = len(student[0])
        n_u = len(student[1]) if len(student) > 1 else 0
        if mixup and self.mode == "function_matching":
            x = torch.cat(student)
            perm, lam = mixup_plan(n_l, n_u, self.mixup_alpha, x.device)
            x = mix(x, perm, lam)
            student = [x[:n_l]] + ([x[n_l:]] if n_u else [])
            if n_l:
                batch.y = self._mixed_labels(batch.y, perm[:n_l], lam)
        batch.x_labeled = resize(student[0], self.student_size)
        if len(student) > 1:
            batch.x_unlabeled = resize(student[1], self.student_size)
        if teacher is not None or self.teacher_size != self.student_size:
            src = teacher if teacher is not None else torch.cat(student)
            batch.x_teacher = resize(src, self.teacher_size)
        return batch, y_hard

    def _mixed_labels(self, y: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
        rows = F.one_hot(y, self.num_classes).float() if y.ndim == 1 else y.float()
        return rows.mul(lam).add_(rows[perm], alpha=1.0 - lam)

    def teacher_input(self, batch: Batch) -> torch.Tensor:
        """The teacher's rows: its own view (or the student's), then a method's extra rows, at its size."""
        if batch.x_teacher is None:
            return resize(batch.inputs, self.teacher_size)  # the student's very rows
        if batch.x_extra is None:
            return batch.x_teacher
        return torch.cat([batch.x_teacher, resize(batch.x_extra, self.teacher_size)])
