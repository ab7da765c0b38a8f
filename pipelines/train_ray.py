"""Run a training job on Ray Train (``TorchTrainer``), or in the driver process.

``ray.workers = 0`` runs :func:`noisystudent.engine.run_training` right here (no Ray at all; handy for
debugging and the fastest choice on a laptop). ``ray.workers = N >= 1`` launches N Ray Train workers:
DDP over gloo on CPU or NCCL on GPU (Ray Train picks the backend), ``prepare_model`` /
``prepare_data_loader`` for sharding, and every epoch's state reported as a Ray Train checkpoint so a
worker that dies restarts from the last epoch (``FailureConfig(max_failures)``). Rank 0 writes the
job's artifacts into the run folder, which must therefore be shared storage on a multi-node cluster.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from noisystudent.io import read_json
from noisystudent.engine import TrainHooks, TrainJob, run_training, warn_budget
from pipelines.config import RayConfig


class _QuietRayTrainInfo(logging.Filter):
    """Drop Ray Train's own INFO records ("Reporting training result N", "Checkpoint successfully
    created") that would otherwise print twice per epoch beside our one epoch line.

    ``LoggingConfig(log_level="WARNING")`` covers the ``ray.train.*`` loggers, but Ray Train v2 names
    some loggers by file path, outside that hierarchy; those are matched by the file they come from."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/ray/train/" not in record.pathname.replace("\\", "/")


def _quiet_ray_train_logs() -> None:
    root = logging.getLogger()
    for handler in root.handlers:
        if "File" in type(handler).__name__:
            continue  # Ray's session log files keep everything; only the console is quieted
        if not any(isinstance(f, _QuietRayTrainInfo) for f in handler.filters):
            handler.addFilter(_QuietRayTrainInfo())


def _set_torch_threads(threads: Optional[int]) -> None:
    """``ray.torch_threads`` in a worker: Ray sets ``OMP_NUM_THREADS`` to the worker's CPUs, which on a
    small machine that also runs something else makes every step wait in OpenMP barriers."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _train_loop(config: dict) -> None:
    """Body of every Ray Train worker."""
    import ray.train
    import ray.train.torch

    _quiet_ray_train_logs()
    _set_torch_threads(config.get("torch_threads"))
    job: TrainJob = config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    resume: Optional[bytes] = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = (Path(d) / "last.pt").read_bytes()

    def report(row: dict, blob: bytes) -> None:
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float, str))}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "last.pt").write_bytes(blob)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    hooks = TrainHooks(
        prepare_model=ray.train.torch.prepare_model,
        # the loaders shard by rank themselves (ShuffleSampler): no DistributedSampler swapped in
        prepare_loader=lambda dl: ray.train.torch.prepare_data_loader(dl, add_dist_sampler=False, move_to_device=False),
        is_main=rank == 0,
        rank=rank,
        world_size=world,
        report=report,
        resume_state=resume,
        fail_at_epoch=config.get("fail_at_epoch"),
        warn_budget=False,  # the driver warned before launching (a worker's warning may never reach the console)
    )
    if world > 1 or job.device == "auto":
        job.device = str(ray.train.torch.get_device())
    run_training(job, hooks)


def train(job: TrainJob, ray_cfg: RayConfig, fail_at_epoch: Optional[int] = None) -> dict:
    """Train ``job`` as the config says and return its final metrics (read from ``metrics.json``)."""
    if ray_cfg.workers == 0:
        return run_training(job, TrainHooks(fail_at_epoch=fail_at_epoch))

    warn_budget(job, ray_cfg.workers)  # before anything starts, in the driver, where the user sees it
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray Train v2 only (the pinned 2.60 default); v1 has no such option
    logging_kw = {"logging_config": ray.train.LoggingConfig(log_level="WARNING")} if hasattr(ray.train, "LoggingConfig") else {}

    from .ray_runtime import init_ray

    resources = init_ray(ray_cfg.address, ray_cfg.num_cpus)
    use_gpu = ray_cfg.gpus_per_worker > 0
    cpus = float(resources.get("CPU", 1))
    per_worker = {"CPU": max(1.0, cpus // ray_cfg.workers) if not ray_cfg.address else 1.0}
    if use_gpu:
        per_worker["GPU"] = ray_cfg.gpus_per_worker
    out = Path(job.out_dir).resolve()
    job.out_dir = out
    if job.teacher_ckpt:  # workers run in another directory: a run folder given relative must not break them
        job.teacher_ckpt = str(Path(job.teacher_ckpt).resolve())
    job.step_bars = False  # bars do not redraw through Ray's log forwarding; per-epoch lines still print
    storage = out / "ray_train"
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"job": job, "fail_at_epoch": fail_at_epoch, "torch_threads": ray_cfg.torch_threads},
        scaling_config=ScalingConfig(num_workers=ray_cfg.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            # A fresh name per fit: Ray Train restores a run of the same name and storage path, which must
            # never pick up another job's checkpoint. A killed driver resumes from ``out/last.pt`` instead.
            name=f"{job.role}-gen{job.generation}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            worker_runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}},
            **logging_kw,
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # a worker's UserError comes back inside Ray's wrappers: raise it as itself
        from noisystudent.diskspace import find_user_error

        cause = find_user_error(exc)
        if cause is not None:
            raise cause from None
        raise
    if not (out / "metrics.json").is_file():
        raise RuntimeError(f"Ray Train finished but {out / 'metrics.json'} is missing")
    shutil.rmtree(storage, ignore_errors=True)  # its checkpoints duplicate model.pt once the job is done
    return read_json(out / "metrics.json")
