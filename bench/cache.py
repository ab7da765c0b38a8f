"""The benchmarks' teacher checkpoints: trained once and kept under ``runs/cache``, or made for one run.

Trained teachers (bench-kd, bench-patience, bench-anomaly) live in ``<cache root>/<prefix>-<model>-<epochs>ep-<digest>/``,
an ordinary resumable run folder; the digest covers what the teacher depends on, so a later benchmark with
the same settings reuses it (``make clean`` keeps ``runs/``, ``make clean-runs`` deletes it). The converged
oracle of bench-accuracy is the pipeline's own (:func:`pipelines.loop.converged_oracle_dir`).

Throughput benchmarks need teachers whose weights do not matter: :func:`random_checkpoint` (in memory) and
:func:`random_teacher` (a file, written once per folder). Nothing here imports Ray or ``pipelines`` at import
time (``bench.gpu_check`` uses the made checkpoints on a machine without Ray).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def digest(key: Any) -> str:
    """Ten hex digits of the SHA-256 of ``key`` as sorted JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


def teacher_dir(cache_root: str | Path, prefix: str, model: str, epochs: int, key: Any) -> Path:
    """``cache_root/<prefix>-teacher-<model>-<epochs>ep-<digest of key>``."""
    return Path(cache_root) / f"{prefix}-teacher-{model}-{epochs}ep-{digest(key)}"


def trained_teacher(cfg: Any, folder: Path, progress: bool = True) -> tuple[Path, dict]:
    """Train (or resume, or reuse) the teacher of ``cfg`` in the cache folder ``folder`` (the pipeline's
    teacher step on its own run folder); its checkpoint and metrics (with ``dir``)."""
    from pipelines import steps
    from pipelines.state import RunDir

    run = RunDir(folder)
    cfg = run.freeze_config(cfg)
    metrics = steps.train_teacher(run, cfg, progress=progress)
    return run.teacher_dir() / "model.pt", {**metrics, "dir": str(run.root)}


def random_checkpoint(spec: Any, checkpoint_id: str, seed: int = 0):
    """A :class:`~noisystudent.checkpoint.Checkpoint` of ``spec`` with random weights (seeded), in memory."""
    import torch

    from noisystudent.checkpoint import Checkpoint

    torch.manual_seed(seed)
    net = spec.build(inference=True)
    return Checkpoint(spec=spec, state_dict={k: v.detach().clone() for k, v in net.state_dict().items()},
                      checkpoint_id=checkpoint_id)


def random_teacher(folder: Path, spec: Any, seed: int = 1) -> Path:
    """``folder/teacher-<model>-<side>.pt``: ``spec``'s model with random weights (seeded), written on the
    first call and found again by the next."""
    import torch

    from noisystudent.checkpoint import save_checkpoint

    path = Path(folder) / f"teacher-{spec.name}-{spec.image_size}.pt"
    if not path.is_file():
        torch.manual_seed(seed)
        save_checkpoint(path, spec.build(inference=True), spec, role="teacher")
    return path
