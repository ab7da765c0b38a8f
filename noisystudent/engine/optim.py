"""Optimisation: device, seeding, optimizer, learning-rate schedule, mixed precision and EMA.

Each builder takes plain settings and returns a torch object; :class:`~noisystudent.engine.state.TrainState`
holds what they return and saves it for resume.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..config import TrainConfig


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.amp`` on ``device`` (None: full fp32).

    ``auto`` is bf16 on a CUDA device that supports it, fp16 (with loss scaling) on an older one, and off
    elsewhere; ``bf16``/``fp16`` are taken as asked (torch autocasts on CPU too, slowly).
    """
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class Precision:
    """Mixed precision of a job: autocast around forward and loss; fp16 needs loss scaling, bf16 does not."""

    dtype: Optional[torch.dtype]
    device: torch.device
    scaler: Any  # torch.amp.GradScaler, enabled for fp16 only

    @classmethod
    def create(cls, mode: str, device: torch.device) -> "Precision":
        dtype = resolve_amp(mode, device)
        return cls(dtype, device, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16))

    @property
    def label(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (Nesterov when ``momentum`` > 0) or AdamW over ``model``'s trainable parameters."""
    # no weight decay on norms and biases (timm's param_groups_weight_decay)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


def make_scheduler(opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up from 1% then cosine decay, stepped once per optimizer step."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    total_steps = max(total_steps, 1)
    warmup_steps = min(warmup_steps, total_steps - 1)
    cosine = CosineAnnealingLR(opt, T_max=max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return cosine
    warm = LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(opt, [warm, cosine], milestones=[warmup_steps])


def constant_schedule(opt: torch.optim.Optimizer):
    """The fine-tune's schedule: the optimizer's learning rate, unchanged."""
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def make_ema(module: torch.nn.Module, decay: Optional[float]):
    """An exponential moving average of ``module`` (parameters and buffers), or None when ``decay`` is unset."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
