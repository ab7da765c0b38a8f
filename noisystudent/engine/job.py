"""The inputs of one training job: what to train, on what data, and how the job talks to its runner.

Plain dataclasses with no behaviour beyond checking themselves, so a runner (``pipelines.train_ray``,
a test, a benchmark) builds a job without importing the engine's machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checkpoint import ModelSpec
from ..config import ModelConfig, TrainConfig
from ..data import ImageSource


@dataclass
class PseudoLabeledSet:
    """Pseudo-labeled images for a student: a source, its targets and a duplicate count per image.

    Targets come either as stored, ``topk_classes``/``topk_probs`` ``(N, k)`` with ``num_classes`` (the
    pipeline's way: 8·k bytes an image, expanded to dense rows one batch at a time by
    :class:`~noisystudent.data.torch_dataset.TopKTargets`; ``hard`` gives one-hot rows of the top class),
    or as a dense ``targets`` ``(N, C)`` float32 matrix (small sets, older callers).
    ``weights`` are the balancing duplicate counts from selection; the student sees image ``i``
    ``weights[i]`` times per epoch.
    """

    source: ImageSource
    targets: Optional[np.ndarray] = None  # (N, C) float32 probabilities, or None with top-k
    weights: Optional[np.ndarray] = None  # (N,) int
    topk_classes: Optional[np.ndarray] = None  # (N, k) int32
    topk_probs: Optional[np.ndarray] = None  # (N, k) float32
    num_classes: Optional[int] = None
    hard: bool = False

    def __post_init__(self):
        if self.weights is None:
            raise ValueError("a pseudo-labeled set needs weights (1 per image without balancing)")
        n = len(self.topk_classes) if self.targets is None and self.topk_classes is not None else \
            (len(self.targets) if self.targets is not None else -1)
        if self.targets is None and (self.topk_classes is None or self.topk_probs is None or self.num_classes is None):
            raise ValueError("a pseudo-labeled set needs dense targets, or topk_classes, topk_probs and num_classes")
        if len(self.source) != n or n != len(self.weights):
            raise ValueError("pseudo-labeled source, targets and weights differ in length")

    def dataset_targets(self):
        """What :class:`~noisystudent.data.torch_dataset.SourceDataset` takes as ``targets``."""
        from ..data.torch_dataset import TopKTargets

        if self.targets is not None:
            return np.asarray(self.targets, dtype=np.float32)
        return TopKTargets(self.topk_classes, self.topk_probs, self.num_classes, hard=self.hard)


@dataclass
class TrainHooks:
    """How the job talks to its runner. Defaults run in one process; Ray Train overrides them."""

    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    prepare_loader: Callable[[DataLoader], DataLoader] = lambda dl: dl
    is_main: bool = True
    rank: int = 0  # this worker's place among world_size: the loaders shard the data by it
    world_size: int = 1
    # called after each epoch with (epoch_metrics, state_bytes); return nothing
    report: Optional[Callable[[dict, bytes], None]] = None
    # state to resume from (bytes of a ``last.pt``), when the runner restores one
    resume_state: Optional[bytes] = None
    # called as before_epoch(job, epoch) when an epoch starts (after the model is put in training mode)
    before_epoch: Optional[Callable[["TrainJob", int], None]] = None
    # shorthand for before_epoch=FailOnce(fail_at_epoch): raise in this epoch once (fault injection for
    # tests of worker failure recovery; see :mod:`noisystudent.engine.faults`)
    fail_at_epoch: Optional[int] = None
    # warn when the job's step budget is below train_cfg.warn_below_steps; a runner that already warned in its
    # driver (pipelines.train_ray) turns it off in the workers
    warn_budget: bool = True

    def __post_init__(self):
        if self.fail_at_epoch is not None and self.before_epoch is None:
            from .faults import FailOnce

            self.before_epoch = FailOnce(self.fail_at_epoch)

    def epoch_started(self, job: "TrainJob", epoch: int) -> None:
        if self.before_epoch is not None:
            self.before_epoch(job, epoch)


class StudentMix(Protocol):
    """What a student job reads of the experiment's ``student`` section (:class:`pipelines.config.StudentConfig`):
    how many pseudo-labeled images join each labeled one, the optional labeled fine-tune, and the method of
    a model. A protocol, so that the core knows these knobs and not the generation loop they sit in."""

    ratio: float
    finetune_epochs: int
    finetune_lr: float

    def method_for(self, rung: ModelConfig) -> dict: ...


@dataclass
class TrainJob:
    """Inputs of one training job."""

    spec: ModelSpec
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    labeled: ImageSource
    out_dir: Path
    test: Optional[ImageSource] = None
    pseudo: Optional[PseudoLabeledSet] = None
    student: Optional[StudentMix] = None  # the student section when pseudo-labels are mixed in
    seed: int = 0
    device: str = "auto"
    generation: int = 0
    role: str = "teacher"
    config: dict = field(default_factory=dict)
    progress: bool = True  # per-step progress bars and per-epoch lines
    step_bars: bool = True  # per-step bars only (off inside Ray workers, whose logs cannot redraw a bar)
    # distillation method ({name, ...params}); None: supervised, or the student's noisy_student with pseudo
    method: Optional[dict] = None
    # teacher checkpoint: run online by online methods; fidelity is measured against it in every case
    teacher_ckpt: Optional[str] = None
    # validation images: evaluated with the test set (val_acc in history and metrics); the loop decides on them
    val: Optional[ImageSource] = None
    # the config section of train_cfg, for messages (null: teacher_train, or student.train for students)
    train_field: Optional[str] = None
    # what an online teacher sees (TeachingConfig or its dict; null: consistent, the student's own view)
    teaching: Any = None
    # a checkpoint whose weights the student starts from (same architecture and classes); None: random
    init_ckpt: Optional[str] = None
    # an online ensemble instead of teacher_ckpt alone: (checkpoint, normalised weight) per teacher
    # (noisystudent.distill.ensemble); teacher_ckpt is then the first, for messages
    teachers: Optional[list] = None

    @property
    def train_section(self) -> str:
        return self.train_field or ("student.train" if self.role in ("student", "distill") else "teacher_train")

    @property
    def uses_pseudo(self) -> bool:
        """Whether pseudo-labeled images join the labeled ones (some kept, and a student ratio above 0)."""
        return (self.pseudo is not None and len(self.pseudo.source) > 0 and self.student is not None
                and self.student.ratio > 0)

    @property
    def unlabeled_batch(self) -> int:
        """The pseudo-labeled batch size: ``student.ratio`` times the labeled one, at least 1."""
        return max(1, int(round(self.student.ratio * self.train_cfg.batch_size)))


def spec_for(model_cfg: ModelConfig, data_cfg, classes: list[str]) -> ModelSpec:
    """The :class:`ModelSpec` of a configured model on a configured data set."""
    return ModelSpec(
        name=model_cfg.name,
        num_classes=len(classes),
        in_chans=data_cfg.in_chans,
        image_size=data_cfg.image_size,
        mean=list(data_cfg.mean),
        std=list(data_cfg.std),
        classes=list(classes),
        drop_rate=model_cfg.drop_rate,
        drop_path_rate=model_cfg.drop_path_rate,
    )
