"""The run folder and its ``state.json``: which steps are done, when, and with which artifacts.

A step counts as done only when its entry is in ``state.json``; the entry is written (atomically)
after every artifact of the step exists under its final name. A killed run therefore shows the step
as not done, and running again redoes or resumes only that step. The resolved config is frozen in
``config.yaml`` at the first step; a later call with a different config is refused (exit code 2).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from noisystudent.config import dump_config, to_dict
from noisystudent.errors import UserError
from noisystudent.io import read_json, sha256_file, write_json, write_text
from pipelines.config import ExperimentConfig, config_from_dict

# Fields that may change between calls on the same run: where Ray runs, how many generations to go, and
# the converged oracle's epochs (that oracle is cached outside the run, under a name that carries them).
RUNTIME_FIELDS = ("ray", "student.generations", "device", "oracle_converged_epochs")

STEPS = ("label", "select", "student", "evaluate", "promote")

# Fields added after runs could have been frozen, with the value that keeps such a run doing what it did
# (its labeled images all trained; every student was promoted). A config.yaml without one loads with it.
LEGACY_VALUES = {"data.val_fraction": 0.0, "student.promote": "always"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _strip_runtime(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    for dotted in RUNTIME_FIELDS:
        node = d
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return d


def config_digest(cfg: ExperimentConfig) -> str:
    blob = json.dumps(_strip_runtime(to_dict(cfg)), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix]


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
        return self.root / f"gen-{g}"

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

    def first_missing_step(self, g: int) -> Optional[str]:
        """The first step of generation ``g`` that is not done (``teacher`` at 0), None when all are."""
        names = ("teacher",) if g == 0 else STEPS
        done = self.state().get("steps", {})
        return next((s for s in names if step_name(g, s) not in done), None)

    # ---- config ----------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def load_config(self) -> ExperimentConfig:
        if not self.exists():
            raise UserError(f"{self.root} is not a run folder (no config.yaml); start one with `noisystudent run CONFIG --run-dir {self.root}`")
        raw = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        for dotted in self._legacy_fields(raw):
            node = raw
            *parents, key = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[key] = LEGACY_VALUES[dotted]
        return config_from_dict(raw)

    @staticmethod
    def _legacy_fields(raw: dict) -> list[str]:
        """The fields of :data:`LEGACY_VALUES` a frozen config does not have (it predates them)."""
        out = []
        for dotted in LEGACY_VALUES:
            node: Any = raw
            for p in dotted.split("."):
                node = node.get(p) if isinstance(node, dict) and p in node else KeyError
            if node is KeyError:
                out.append(dotted)
        return out

    def freeze_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """Write ``config.yaml`` on first use; afterwards refuse a config that differs in a non-runtime field.

        Runtime fields (Ray address and workers, generation count, device) may change; the frozen file
        is updated with them.
        """
        check_writable(self.root)
        if self.exists():
            old = self.load_config()
            raw = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
            for dotted in self._legacy_fields(raw):  # a run frozen before the field existed keeps its behaviour
                *parents, key = dotted.split(".")
                src, dst = old, cfg
                for p in parents:
                    src, dst = getattr(src, p), getattr(dst, p)
                setattr(dst, key, getattr(src, key))
            if config_digest(old) != config_digest(cfg):
                changed = _diff(_strip_runtime(to_dict(old)), _strip_runtime(to_dict(cfg)))
                raise UserError(
                    f"run {self.root} was started with a different config (changed: {', '.join(changed[:5])}); "
                    "use a new --run-dir or the original config"
                )
        write_text(self.config_path, dump_config(cfg))
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
        files = [Path(p) for p in artifacts if Path(p).is_file()]
        st.setdefault("steps", {})[step] = {
            "finished": _now(),
            "seconds": round(float(seconds), 3),
            "artifacts": {os.path.relpath(p, self.root): sha256_file(p) for p in files},
            # the cheap first check of pipelines.verify (a truncated file), before any hash
            "sizes": {os.path.relpath(p, self.root): p.stat().st_size for p in files},
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


def step_name(g: int, step: str) -> str:
    return f"gen-{g}/{step}"
