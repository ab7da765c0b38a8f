"""The run folder and its ``state.json``: which steps are done, when, and with which artifacts.

A step counts as done only when its entry is in ``state.json``; the entry is written (atomically)
after every artifact of the step exists under its final name. A killed run therefore shows the step
as not done, and running again redoes or resumes only that step. The resolved config is frozen in
``config.yaml`` at the first step; a later call with a different config is refused (exit code 2).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from noisystudent.errors import UserError
from noisystudent.io import read_json, sha256_file, write_json
from pipelines.config import ExperimentConfig, config_from_dict

from .frozen import FrozenConfig, digest
from .steps.names import gen_folder

# Fields that may change between calls on the same run: where Ray runs, how many generations to go, and
# the converged oracle's epochs (that oracle is cached outside the run, under a name that carries them).
RUNTIME_FIELDS = ("ray", "student.generations", "device", "oracle_converged_epochs")

# Fields added after runs could have been frozen, with the value that keeps such a run doing what it did
# (its labeled images all trained; every student was promoted). A config.yaml without one loads with it.
LEGACY_VALUES = {"data.val_fraction": 0.0, "student.promote": "always"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def config_digest(cfg: ExperimentConfig) -> str:
    """A short hash of the config's non-runtime fields (``state.json``'s ``config_digest``)."""
    return digest(cfg, RUNTIME_FIELDS)


def check_writable(path: Path, min_free_bytes: Optional[int] = None) -> None:
    """Fail before any work if the run folder cannot be written or its disk is (nearly) full.

    The free-space floor is ``NOISYSTUDENT_MIN_FREE_MB`` (default 200 MiB): below it a run would die
    mid-step on a full disk, so it is refused up front.
    """
    if min_free_bytes is None:
        min_free_bytes = int(float(os.environ.get("NOISYSTUDENT_MIN_FREE_MB", "200")) * (1 << 20))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"run directory {path} is not writable: {exc.strerror or exc}") from None
    if min_free_bytes <= 0:
        return
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise UserError(f"run directory {path} has only {free >> 20} MiB free; need at least {min_free_bytes >> 20} MiB")


@dataclass
class RunDir:
    """A run folder: paths of every artifact and the step ledger."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    # ---- paths -----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def gen(self, g: int) -> Path:
        return self.root / gen_folder(g)

    def teacher_dir(self) -> Path:
        return self.gen(0) / "teacher"

    def labels_dir(self, g: int) -> Path:
        return self.gen(g) / "labels"

    def selected_dir(self, g: int) -> Path:
        return self.gen(g) / "selected"

    def student_dir(self, g: int) -> Path:
        return self.gen(g) / "student"

    def distill_dir(self) -> Path:
        return self.root / "distill"

    def baseline_dir(self, role: str) -> Path:
        return self.root / "baselines" / role

    def model_dir(self, g: int) -> Path:
        """The trained model of generation ``g``: the teacher at 0, the student after."""
        return self.teacher_dir() if g == 0 else self.student_dir(g)

    def teacher_of(self, g: int) -> Path:
        """The checkpoint that labels for generation ``g`` (the promoted model of ``g - 1``)."""
        promoted = self.state().get("teachers", {}).get(str(g))
        return self.root / promoted if promoted else self.model_dir(g - 1) / "model.pt"

    # ---- config ----------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def frozen(self) -> FrozenConfig:
        """The run's frozen ``config.yaml`` (:mod:`pipelines.frozen`)."""
        return FrozenConfig(self.config_path, config_from_dict, RUNTIME_FIELDS, LEGACY_VALUES)

    def load_config(self) -> ExperimentConfig:
        if not self.exists():
            raise UserError(f"{self.root} is not a run folder (no config.yaml); start one with `noisystudent run CONFIG --run-dir {self.root}`")
        return self.frozen().load()

    def freeze_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """Write ``config.yaml`` on first use; afterwards refuse a config that differs in a non-runtime field.

        Runtime fields (Ray address and workers, generation count, device) may change; the frozen file
        is updated with them.
        """
        check_writable(self.root)
        frozen = self.frozen()
        if frozen.exists():
            _, changed = frozen.changes(cfg)  # a run frozen before a legacy field existed keeps its behaviour
            if changed:
                raise UserError(
                    f"run {self.root} was started with a different config (changed: {', '.join(changed[:5])}); "
                    "use a new --run-dir or the original config"
                )
        frozen.write(cfg)
        st = self.state()
        st.setdefault("name", cfg.name)
        st.setdefault("created", _now())
        st["config_digest"] = config_digest(cfg)
        self._write_state(st)
        return cfg

    # ---- state -----------------------------------------------------------------------------------
    def state(self) -> dict:
        if not self.state_path.is_file():
            return {"steps": {}}
        return read_json(self.state_path)

    def _write_state(self, st: dict) -> None:
        write_json(self.state_path, st)

    def is_done(self, step: str) -> bool:
        return step in self.state().get("steps", {})

    def step_info(self, step: str) -> Optional[dict]:
        return self.state().get("steps", {}).get(step)

    def mark_done(self, step: str, seconds: float, artifacts: list[Path] = (), **extra: Any) -> None:
        st = self.state()
        st.setdefault("steps", {})[step] = {
            "finished": _now(),
            "seconds": round(float(seconds), 3),
            "artifacts": {os.path.relpath(p, self.root): sha256_file(p) for p in artifacts if Path(p).is_file()},
            **extra,
        }
        self._write_state(st)

    def forget(self, step: str) -> None:
        st = self.state()
        st.get("steps", {}).pop(step, None)
        self._write_state(st)

    def promote(self, g: int, checkpoint: Path, decision: Optional[dict] = None) -> None:
        """``checkpoint`` teaches generation ``g + 1``; ``decision`` (see :mod:`pipelines.promotion`) is
        recorded under ``promotions`` beside it, so status and the report can say why."""
        st = self.state()
        st.setdefault("teachers", {})[str(g + 1)] = os.path.relpath(checkpoint, self.root)
        if decision is not None:
            st.setdefault("promotions", {})[str(g)] = decision
        self._write_state(st)

