"""The training state of a job, saved after every epoch as ``last.pt`` and restored on resume.

:class:`TrainState` follows PyTorch's own protocol (``state_dict`` / ``load_state_dict``): the student,
the method's extra modules, optimizer, schedule, EMA, history, the finished epoch and the RNG. The
format of ``last.pt`` is a plain dict of these keys, readable by ``torch.load``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import safe_load, to_plain
from ..config import TrainConfig
from ..errors import UserError
from .budget import StepPlan
from .optim import constant_schedule, make_ema, make_optimizer, make_scheduler
from .step import StudentStep

RESUME_KEYS = ("model", "optimizer", "scheduler", "history", "epoch", "rng")


def check_resume_state(state: Any, path: Path) -> None:
    """Refuse a ``last.pt`` that is not a training state, naming the file and the missing field."""
    if not isinstance(state, dict):
        raise UserError(f"resume state {path} is not a training state (got {type(state).__name__}); delete it to restart")
    for key in RESUME_KEYS:
        if key not in state:
            raise UserError(f"resume state {path}: field '{key}' is missing; delete the file to restart the job")


@dataclass
class TrainState:
    """What changes as a job trains: its modules' weights, optimizer, schedule, EMA and history."""

    core: StudentStep  # the student and the method's modules
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any  # AveragedModel of ``core``, or None
    history: list[dict] = field(default_factory=list)
    epochs_done: int = 0
    method_name: str = ""  # for messages

    @classmethod
    def create(cls, core: StudentStep, cfg: TrainConfig, plan: StepPlan, world_size: int, method_name: str) -> "TrainState":
        """The optimizer over the student and the method's extra modules, its warm-up + cosine schedule
        over ``plan``'s steps (the learning rate scaled by the workers when asked), and the EMA."""
        lr = cfg.lr * (world_size if cfg.scale_lr_with_workers else 1)
        opt = make_optimizer(core, cfg, lr)  # the method's extra modules train with the student
        sched = make_scheduler(opt, plan.total, int(cfg.warmup_epochs * plan.total / cfg.epochs))
        # over the student *and* the method's modules: ONE's branches share the trunk, DML's peers are
        # exported beside the student, and an EMA trunk with raw branches is a model nobody trained
        return cls(core, opt, sched, make_ema(core, cfg.ema_decay), method_name=method_name)

    @property
    def final_core(self) -> StudentStep:
        """The student and the method's modules as evaluated and exported: their EMA when ``ema_decay``
        is set (both averaged, so an ensemble of a shared trunk and its branches stays one model)."""
        return self.ema.module if self.ema is not None else self.core

    def start_finetune(self, cfg: TrainConfig, lr: float) -> None:
        """A fresh optimizer at a constant small learning rate (the paper's optional labeled last step)."""
        self.optimizer = make_optimizer(self.core, cfg, lr)
        self.scheduler = constant_schedule(self.optimizer)

    def state_dict(self) -> dict:
        return {"model": self.core.student.state_dict(), "method": self.core.method.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "history": to_plain(self.history), "epoch": self.epochs_done - 1, "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict, where: str = "resume state") -> None:
        """Restore a :meth:`state_dict`; ``where`` names its origin in errors (``resume state <path>``)."""
        self.core.student.load_state_dict(state["model"])
        if self.core.method.state_dict():
            if not isinstance(state.get("method"), dict):
                raise UserError(f"{where}: field 'method' (the {self.method_name} method's trainable "
                                "modules) is missing; delete the file to restart the job")
            self.core.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(self._ema_state(state["ema"]))
        torch.set_rng_state(state["rng"].cpu())  # map_location put it on the GPU; the CPU generator needs it back
        self.history = list(state["history"])
        self.epochs_done = state["epoch"] + 1

    def _ema_state(self, ema_state: dict) -> dict:
        if any(k.startswith("module.") and not k.startswith(("module.student.", "module.method.")) for k in ema_state):
            # a last.pt from before the EMA covered the method's modules: its average is the student's
            ema_state = {("module.student." + k[len("module."):] if k.startswith("module.") else k): v
                         for k, v in ema_state.items()}
            ema_state.update({k: v for k, v in self.ema.state_dict().items() if k.startswith("module.method.")})
        return ema_state

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return buf.getvalue()

    def load_bytes(self, blob: bytes, path: Path, device: Optional[torch.device] = None) -> None:
        """Restore the bytes of a ``last.pt`` (``path`` names it in errors)."""
        state = safe_load(io.BytesIO(blob), what=f"resume state {path}", map_location=device)
        check_resume_state(state, path)
        self.load_state_dict(state, where=f"resume state {path}")
