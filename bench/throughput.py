"""Training throughput: ``run_training`` (in-process and on Ray Train) against a bare PyTorch loop.

What is compared. *Ours* is :func:`noisystudent.engine.run_training` on the Fashion-MNIST labeled split
with the teacher of ``configs/fashion_mnist.yaml`` (ResNet-14, dropout 0.2, RandAugment n=2 m=9, flip,
pad-and-crop 2), batch 64 and a fixed number of steps (``TrainConfig.steps_per_epoch``, one epoch,
``test=None`` so nothing is evaluated). *Bare* is the loop anyone would write by hand: the same model
from ``create_model``, the same albumentations transform from ``create_transform`` over a plain
``torch.utils.data.Dataset`` on the uint8 image array, a ``DataLoader`` (shuffle, drop_last, no worker
processes, as ours), nesterov SGD with the same lr, momentum and weight decay, the same batch size and
number of steps.

What is timed. Ours: ``images_per_s`` from the job's ``history.csv``, i.e. the epoch loop only (from the
first batch to the last optimizer step; model building, transform construction and the final
checkpoint writing are outside it). The wall time of the whole call is kept in ``bench.json``. Bare:
the same span, from the first batch to the last step (on a GPU, up to a ``synchronize``). Ray Train
rows use the same ``history.csv`` figure, which rank 0 computes as its images times the world size
over its epoch seconds; the whole call (worker group start included) is in the notes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from . import bare
from .harness import Row, Stopwatch, history_rate, interleave, median, paired_ratio, scratch_dir
from .suite import Sizes

BATCH_SIZE = 64


def bare_train(spec: Any, noise: Any, images: np.ndarray, labels: np.ndarray, train_cfg: Any, steps: int,
               device: str, **kd: Any) -> float:
    """Images/s of :func:`bench.bare.train` for ``steps`` steps with ``train_cfg``'s batch size and optimizer
    (``kd``: its teacher, temperature, alpha, autocast and label smoothing, for the online rows)."""
    return bare.train(spec, noise, images, labels, device, batch_size=train_cfg.batch_size, lr=train_cfg.lr,
                      momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay, steps=steps, **kd)


def teacher_job(cfg: Any, bundle: Any, noise: Any, steps: int, out_dir: Path, device: str) -> Any:
    """The teacher job of the config with a fixed number of steps, one epoch and no evaluation."""
    from noisystudent.engine import TrainJob, spec_for

    mcfg = dataclasses.replace(cfg.teacher, noise=noise)
    tcfg = dataclasses.replace(cfg.teacher_train, epochs=1, steps_per_epoch=steps, batch_size=BATCH_SIZE,
                               num_workers=0)
    spec = spec_for(mcfg, cfg.data, bundle.classes)
    return TrainJob(spec=spec, model_cfg=mcfg, train_cfg=tcfg, labeled=bundle.labeled, out_dir=out_dir, test=None,
                    seed=0, device=device, role="teacher", progress=False)


def bench_teacher(cfg: Any, bundle: Any, sizes: Sizes, threads: int, device: str, bar: Any = None) -> list[Row]:
    """Rows: ``run_training`` vs the bare loop, with the config's noise and with clean inputs."""
    from noisystudent.engine import run_training

    images = bundle.labeled.load_all()
    labels = np.asarray(bundle.labeled.labels)
    steps = sizes.train_steps
    variants = {"noised": cfg.teacher.noise, "clean": bare.clean_noise()}
    walls: dict[str, list[float]] = {k: [] for k in variants}

    def ours(kind: str):
        def run() -> float:
            out = scratch_dir(f"teacher-{kind}")
            job = teacher_job(cfg, bundle, variants[kind], steps, out, device)
            with Stopwatch() as sw:
                run_training(job)
            walls[kind].append(sw.seconds)
            return history_rate(out)
        return run

    def baseline(kind: str):
        spec = teacher_job(cfg, bundle, variants[kind], steps, Path("."), device).spec
        return lambda: bare_train(spec, variants[kind], images, labels, cfg.teacher_train, steps, device)

    measure = {}
    for kind in variants:
        measure[f"ours-{kind}"] = ours(kind)
        measure[f"bare-{kind}"] = baseline(kind)
    got = interleave(sizes.repeats, measure, bar)

    rows = []
    n_img = steps * BATCH_SIZE
    noise = cfg.teacher.noise
    for kind, label in (("noised", f"train resnet14, RandAugment n{noise.randaugment_n} m{noise.randaugment_m:g}"),
                        ("clean", "train resnet14, clean inputs")):
        o, b = got[f"ours-{kind}"], got[f"bare-{kind}"]
        rows.append(Row(
            section="teacher" + ("" if device == "cpu" else f" ({device})"),
            name=label,
            ours=median(o), bare=median(b), ratio=paired_ratio(o, b),
            images=n_img, repeats=len(o), threads=f"{threads}/{threads}",
            note=f"loop only; call {median(walls[kind]):.1f} s",
            samples={"ours": o, "bare": b, "ours_call_seconds": walls[kind]},
            extra={"steps": steps, "batch_size": BATCH_SIZE, "labeled_images": len(images), "device": device,
                   "timed": "ours: history.csv images_per_s (epoch loop); bare: first batch to last step"},
        ))
    # what RandAugment + flip + crop cost, measured on the bare loop
    clean_b, noised_b = median(got["bare-clean"]), median(got["bare-noised"])
    rows[0].extra["noise_cost_fraction_of_bare_step"] = round(1 - noised_b / clean_b, 3) if clean_b else None
    return rows


def bench_workers(cfg: Any, bundle: Any, sizes: Sizes, threads: int, worker_counts: tuple[int, ...] = (0, 1, 2),
                  bar: Any = None) -> list[Row]:
    """Rows: ``pipelines.train_ray.train`` with 0 (in-process), 1 and 2 Ray Train workers vs the bare loop.

    Every worker runs ``worker_steps`` steps of batch 64, so N workers process N times the images of
    one; the bare loop runs the same steps as one worker, in the driver, with the driver's threads.
    """
    import ray

    from pipelines.config import RayConfig
    from pipelines.train_ray import train

    images = bundle.labeled.load_all()
    labels = np.asarray(bundle.labeled.labels)
    steps = sizes.worker_steps
    noise = cfg.teacher.noise
    cpus = int(ray.cluster_resources().get("CPU", 1))
    walls: dict[int, list[float]] = {n: [] for n in worker_counts}

    def ours(n: int):
        def run() -> float:
            parent = scratch_dir(f"workers-{n}")
            job = teacher_job(cfg, bundle, noise, steps, parent / "teacher", "cpu")
            with Stopwatch() as sw:
                train(job, RayConfig(workers=n, max_failures=0))
            walls[n].append(sw.seconds)
            return history_rate(parent / "teacher")
        return run

    spec = teacher_job(cfg, bundle, noise, steps, Path("."), "cpu").spec

    def baseline(n_threads: int):
        def run() -> float:
            import torch

            old = torch.get_num_threads()
            torch.set_num_threads(n_threads)
            try:
                return bare_train(spec, noise, images, labels, cfg.teacher_train, steps, "cpu")
            finally:
                torch.set_num_threads(old)
        return run

    measure = {"bare": baseline(threads)}
    # A single Ray Train worker gets every CPU, so Ray sets OMP_NUM_THREADS to the CPU count; the bare
    # loop at that many threads tells the cost of the threads apart from the cost of Ray Train.
    if cpus != threads and 1 in worker_counts:
        measure[f"bare-{cpus}t"] = baseline(cpus)
    for n in worker_counts:
        measure[f"workers={n}"] = ours(n)
    got = interleave(sizes.worker_repeats, measure, bar)

    rows = []
    b = got["bare"]
    for n in worker_counts:
        o = got[f"workers={n}"]
        if n == 0:
            name, th, note = "train_ray workers=0 (in-process)", f"{threads}/{threads}", "loop only"
        else:
            per = max(1, cpus // n)  # what train_ray gives each worker; Ray sets OMP_NUM_THREADS to it
            name = f"train_ray workers={n} (Ray Train, gloo)"
            th, note = f"{n}x{per}/{threads}", "loop only, all workers"
        rows.append(Row(
            section="workers", name=name, ours=median(o), bare=median(b),
            ratio=paired_ratio(o, b), images=steps * BATCH_SIZE * max(n, 1), repeats=len(o),
            threads=th, note=f"{note}; call {median(walls[n]):.1f} s",
            samples={"ours": o, "bare": b, "ours_call_seconds": walls[n]},
            extra={"workers": n, "steps_per_worker": steps, "batch_size": BATCH_SIZE, "ray_cpus": cpus},
        ))
    if f"bare-{cpus}t" in got:
        bt = got[f"bare-{cpus}t"]
        rows.append(Row(
            section="workers", name=f"bare loop at {cpus} threads (reference)", ours=median(bt), bare=median(b),
            ratio=paired_ratio(bt, b), images=steps * BATCH_SIZE, repeats=len(bt),
            threads=f"{cpus}/{threads}", note="the threads a 1-worker Ray Train job gets",
            samples={"ours": bt, "bare": b}, extra={"threads": cpus},
        ))
    return rows


def planned_worker_runs(sizes: Sizes, threads: int, worker_counts: tuple[int, ...] = (0, 1, 2)) -> int:
    """How many measurements :func:`bench_workers` makes (for the progress bar)."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return sizes.worker_repeats * (1 + len(worker_counts) + (1 if cpus != threads and 1 in worker_counts else 0))
