"""Cross-modal teaching: the online teacher reads another modality of the student's very items.

Gupta et al. ("Cross Modal Distillation for Supervision Transfer", CVPR 2016): a teacher trained with
labels on a source modality transfers to a student on a target modality through paired (unlabeled) items.
Here the student's batch is read from a :class:`~noisystudent.data.paired.PairedSource` in the student's
modality and, item by item, in the teacher's: :class:`CrossModalDataset` returns both inputs,
:meth:`CrossModalTeaching.prepare` puts the teacher's in ``Batch.x_teacher`` (the engine's teacher view),
so methods see nothing new: Hinton's KL, and feature methods whose stage shapes line up, work unchanged.

The teacher always sees its modality's clean eval view (its checkpoint's own size and normalisation):
there is no "same augmented view" across modalities, so ``consistent`` means that clean view too (the
``fixed`` of Beyer et al.), and ``independent`` / ``function_matching`` are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from noisystudent.data.torch_dataset import SourceDataset, _to_tensor
from noisystudent.distill.base import Batch
from noisystudent.distill.teaching import Teaching
from noisystudent.errors import ConfigError, ImageDecodeError

CROSS_MODES = ("fixed", "consistent")


class CrossModalDataset(SourceDataset):
    """Items ``((student input, teacher input), target, index)`` of a paired source; ``None`` when either
    modality's file cannot be read (skipped by the collate, as an unreadable image is)."""

    def __init__(self, source: Any, transform: Callable, teacher_transform: Callable, teacher_modality: str,
                 targets: Any = None) -> None:
        super().__init__(source, transform, targets=targets)
        self.teacher_transform, self.teacher_modality = teacher_transform, teacher_modality

    def __getitem__(self, i: int):
        item = super().__getitem__(i)
        if item is None:
            return None
        x, y, i = item
        try:
            t = self.source.load_modality(int(i), self.teacher_modality)
        except ImageDecodeError:
            self.skipped += 1
            return None
        return (x, _to_tensor(self.teacher_transform(t))), y, i


def check_teacher_input(teacher_spec: Any, modality: str, modalities: dict, field: str) -> None:
    """A teacher checkpoint's input channels must be those of the modality it is to read (``field`` names the
    setting: ``teacher.modality``); :class:`ConfigError` otherwise."""
    m = modalities.get(modality)
    if m is None:
        raise ConfigError(field, f"modality {modality!r} is not declared in data.modalities "
                                 f"(declared: {', '.join(modalities)})")
    if teacher_spec.in_chans != m.channels:
        raise ConfigError(field, f"the teacher checkpoint takes {teacher_spec.in_chans}-channel input, but its modality "
                                 f"{modality!r} has {m.channels} channel(s)")


@dataclass
class CrossModalTeaching(Teaching):
    """The teaching setting of a job whose online teacher reads ``teacher_modality``."""

    teacher_modality: str = ""
    teacher_transform: Optional[Callable] = None

    @classmethod
    def create(cls, cfg: Any, student_spec: Any, teacher_spec: Any, teacher_modality: str) -> "CrossModalTeaching":
        from noisystudent.transforms import create_transform

        mode = (cfg.get("mode") if isinstance(cfg, dict) else getattr(cfg, "mode", None)) or "consistent"
        if mode not in CROSS_MODES:
            raise ConfigError("teaching.mode", f"a cross-modal teacher reads its own modality's clean view: "
                                               f"{' or '.join(CROSS_MODES)}, got {mode!r}")
        t = teacher_spec
        return cls(mode=mode, student_size=student_spec.image_size, teacher_size=t.image_size,
                   num_classes=student_spec.num_classes, teacher_modality=teacher_modality,
                   teacher_transform=create_transform(t.image_size, t.in_chans, list(t.mean), list(t.std), None))

    @property
    def view_size(self):
        return self.student_size  # each modality has its own input; nothing is drawn at a shared size

    @property
    def paired(self) -> bool:
        return True

    def train_transform(self, train_tf: Callable, eval_tf: Callable) -> Callable:
        return train_tf

    def dataset(self, source: Any, transform: Callable, targets: Any = None) -> SourceDataset:
        if not hasattr(source, "load_modality"):
            raise ConfigError("data.kind", "a cross-modal teacher needs paired data (data.kind: paired)")
        return CrossModalDataset(source, transform, self.teacher_transform, self.teacher_modality, targets)

    def prepare(self, batch: Batch, mixup: bool = True) -> tuple[Batch, torch.Tensor]:
        """``(student, teacher)`` pairs of rows into the student's rows and ``x_teacher``."""
        parts = [batch.x_labeled] + ([batch.x_unlabeled] if batch.x_unlabeled is not None else [])
        if not isinstance(parts[0], (tuple, list)):  # fine-tune rows read without the teacher: nothing to split
            return batch, batch.y
        batch.x_labeled = parts[0][0]
        if len(parts) > 1:
            batch.x_unlabeled = parts[1][0]
        batch.x_teacher = torch.cat([p[1] for p in parts])
        return batch, batch.y

    def teacher_input(self, batch: Batch) -> torch.Tensor:
        if batch.x_extra is not None:
            raise ConfigError("method", "a method that adds inputs of its own (BSS) cannot teach across modalities: "
                                        "its extra rows exist in the student's modality only")
        return batch.x_teacher
