"""Labeling throughput: ``pseudo_labels.label_images`` (Ray Data, actor pool) against a bare inference loop.

What is compared. *Ours* is the whole labeling job on the 59,000 unlabeled Fashion-MNIST images (the
split of ``configs/fashion_mnist.yaml``, 100 labels per class, without its 10,000-image limit): the teacher
checkpoint is loaded, the images are cut into chunks, an actor pool of ``num_actors`` actors (one CPU
each) decodes, transforms and labels them in batches of 1,024, and the driver writes the Parquet
shards, ``summary.json`` and ``_SUCCESS``. Ray itself is started before any timing (its start is
reported on its own), so the time is that of a job on a running Ray instance: the call of
``label_images``, actor-pool start included. *Bare* is the loop anyone would write by hand in one
process: the same checkpoint loaded with ``load_checkpoint``, the same eval transform over a plain
``Dataset`` on the uint8 image array, a ``DataLoader`` with the same batch size, ``torch.inference_mode``
and a softmax, collecting the probabilities as numpy; no files are written.

Same CPUs on both sides. A Ray actor with ``num_cpus=1`` runs torch with one intra-op thread (the
labeling job sets it; Ray sets ``OMP_NUM_THREADS`` to the actor's CPUs anyway). So one actor is
compared with one bare loop of one thread, and N actors with N bare loops of one thread running at the
same time in N processes on 1/N of the images each (one process with N threads would be a different
thing: on a busy machine its OpenMP barriers make it several times slower than one thread).

Storage. Parquet bytes per image are the summed sizes of ``part-*.parquet`` over the rows, for all 10
probabilities (``topk=None``) and for ``topk=3``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import bare
from .harness import Row, Stopwatch, interleave, median, paired_ratio, scratch_dir
from .suite import Sizes

BATCH_SIZE = 1024
#: labeled images per class of the split whose unlabeled part is labeled: 100 -> 1,000 labeled, 59,000 unlabeled
LABELS_PER_CLASS = 100


def make_teacher(cfg: Any, bundle: Any, path: Path, steps: int, device: str = "cpu") -> Path:
    """A ResNet-14 teacher checkpoint trained for a few clean steps on the labeled split.

    Throughput does not depend on the weights, but the Parquet size does (peaked probabilities compress
    better than uniform ones), so the teacher is trained a little rather than left at random init.
    """
    import torch

    from noisystudent.checkpoint import save_checkpoint
    from noisystudent.engine import spec_for
    from noisystudent.transforms import create_transform

    spec = spec_for(cfg.teacher, cfg.data, bundle.classes)
    torch.manual_seed(0)
    model = spec.build(inference=False).to(device).train()
    tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    images = bundle.labeled.load_all()
    x_all = torch.stack([tf(img) for img in images])
    y_all = torch.as_tensor(np.asarray(bundle.labeled.labels))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (64,), generator=gen)
        bare.step(model, opt, None, x_all[idx].to(device), y_all[idx].to(device))
    save_checkpoint(path, model.eval(), spec, generation=0, role="teacher")
    return path


def _bare_label_run(checkpoint: Path, images: np.ndarray, batch_size: int, device: str, threads: Optional[int],
                    half: bool = False, barrier: Any = None) -> tuple[int, float, float]:
    """The bare inference loop (:func:`bench.bare.label` over :func:`bench.bare.label_loader`): ``(images
    labeled, loop start, loop end)`` on the monotonic clock.

    Model loading and transform construction happen before ``barrier`` (when given), so concurrent
    processes start their loops together and only the loops are timed.
    """
    import torch

    from noisystudent.checkpoint import load_checkpoint

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        ck = load_checkpoint(checkpoint)
        model = ck.build_model(device, channels_last=True)  # as the labeling actor's (pseudo_labels.labeling)
        if half:
            model = model.half()
        batches = bare.label_loader(images, ck.spec, batch_size)
        if barrier is not None:
            barrier.wait()
        start = time.monotonic()
        n = bare.label(model, batches, device, half=half, channels_last=True)  # .cpu() syncs a GPU
        return n, start, time.monotonic()
    finally:
        torch.set_num_threads(old_threads)


def bare_label(checkpoint: Path, images: np.ndarray, batch_size: int, device: str, threads: Optional[int],
               half: bool = False) -> float:
    """Images/s of a hand-written inference loop over ``images`` with the checkpoint's model."""
    n, start, end = _bare_label_run(checkpoint, images, batch_size, device, threads, half)
    return n / (end - start)


def _bare_child(args: tuple, barrier: Any, conn: Any) -> None:
    conn.send(_bare_label_run(*args, barrier=barrier))
    conn.close()


def bare_label_processes(checkpoint: Path, images: np.ndarray, batch_size: int, processes: int) -> float:
    """Aggregate images/s of ``processes`` bare loops of one thread each, run at the same time on equal
    shares of ``images``: the bare counterpart of ``processes`` one-CPU actors (the same CPUs, without
    the OpenMP barriers of one process with several threads). Timed from the first loop's start to
    the last loop's end."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # never fork a process that runs Ray and torch threads
    barrier = ctx.Barrier(processes)
    procs, pipes = [], []
    for part in np.array_split(images, processes):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_bare_child, args=((checkpoint, part, batch_size, "cpu", 1), barrier, send), daemon=True)
        p.start()
        procs.append(p)
        pipes.append(recv)
    results = [r.recv() for r in pipes]
    for p in procs:
        p.join()
    n = sum(r[0] for r in results)
    return n / (max(r[2] for r in results) - min(r[1] for r in results))


def parquet_bytes_per_image(folder: Path) -> tuple[float, int]:
    """(bytes per row, rows) over the ``part-*.parquet`` shards of a finished labeling folder."""
    import pyarrow.parquet as pq

    shards = sorted(Path(folder).glob("part-*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    size = sum(p.stat().st_size for p in shards)
    return (size / rows if rows else float("nan")), rows


def bench_labeling(cfg: Any, bundle: Any, sizes: Sizes, device: str = "cpu", actor_counts: tuple[int, ...] = (1, 2),
                   bar: Any = None) -> list[Row]:
    """Rows: ``label_images`` with 1 and 2 one-CPU actors (on a GPU: one GPU actor, fp16) vs the bare loop
    on the same CPUs, a ``topk=3`` job for the Parquet size, and (full sizes) the fixed cost of a job.

    The bare counterpart of one one-CPU actor is one loop with one thread; of N one-CPU actors, N such
    loops in N processes at the same time, each on 1/N of the images (:func:`bare_label_processes`).
    On a GPU both sides use the GPU in half precision with the driver's threads.
    """
    from pseudo_labels import label_images

    source = bundle.unlabeled
    if sizes.label_images is not None and sizes.label_images < len(source):
        source = source.subset(np.arange(sizes.label_images))
    images = source.load_all()
    n = len(source)
    ckpt = make_teacher(cfg, bundle, scratch_dir("teacher-ckpt") / "model.pt",
                        steps=20 if sizes.name == "quick" else 100, device=device)
    gpu = device == "cuda"
    # (actors, GPUs per actor, CPUs per actor)
    configs = [(1, 1.0, 1.0)] if gpu else [(a, 0.0, 1.0) for a in actor_counts]
    calls: dict[str, list[float]] = {}
    summaries: dict[str, list[dict]] = {}
    folders: dict[str, list[Path]] = {}

    def ours(key: str, src: Any, actors: int, gpus: float, cpus: float, topk: Optional[int] = None):
        def run() -> float:
            out = scratch_dir(f"labels-{key}")
            with Stopwatch() as sw:
                summary = label_images(src, [ckpt], out, topk=topk, batch_size=BATCH_SIZE, num_actors=actors,
                                       num_gpus_per_actor=gpus, num_cpus_per_actor=cpus, progress=False)
            calls.setdefault(key, []).append(sw.seconds)
            summaries.setdefault(key, []).append(summary)
            folders.setdefault(key, []).append(out)
            return len(src) / sw.seconds
        return run

    def baseline(actors: int):
        if gpu:
            return lambda: bare_label(ckpt, images, BATCH_SIZE, device, None, half=True)
        if actors == 1:
            return lambda: bare_label(ckpt, images, BATCH_SIZE, "cpu", 1)
        return lambda: bare_label_processes(ckpt, images, BATCH_SIZE, actors)

    measure: dict[str, Any] = {}
    for actors, gpus, cpus in configs:
        measure[f"bare-{actors}"] = baseline(actors)
        measure[f"ours-{actors}"] = ours(f"ours-{actors}", source, actors, gpus, cpus)
    got = interleave(labeling_rounds(sizes, n), measure, bar)
    last = configs[-1]
    extra_runs = {"ours-topk3": ours("ours-topk3", source, *last, topk=3)}
    small = None
    if sizes.name != "quick" and n > BATCH_SIZE:
        # a one-batch job: its time is almost all fixed cost (actor start, job set-up, summary)
        small = source.subset(np.arange(BATCH_SIZE))
        extra_runs["ours-1batch"] = ours("ours-1batch", small, *configs[0])
    got.update(interleave(1, extra_runs, bar))

    section = "labeling" + ("" if not gpu else f" ({device}, fp16)")
    rows = []
    for actors, gpus, cpus in configs:
        key = f"ours-{actors}"
        o, b = got[key], got[f"bare-{actors}"]
        bpi, _ = parquet_bytes_per_image(folders[key][-1])
        if gpu:
            what, th = f"{actors} GPU actor", "-/-"
        else:
            what = f"{actors} actor{'s' if actors > 1 else ''} x {cpus:g} CPU"
            th = f"{actors}x{int(cpus)}/{actors}x1"
        rows.append(Row(
            section=section, name=f"label_images, {what}", ours=median(o), bare=median(b),
            ratio=paired_ratio(o, b), images=n, repeats=len(o), threads=th,
            note=f"job {median(calls[key]):.1f} s; {bpi:.1f} B/img (10 probs)",
            samples={"ours": o, "bare": b, "ours_call_seconds": calls[key],
                     "ours_job_seconds": [s["seconds"] for s in summaries[key]]},
            extra={"batch_size": BATCH_SIZE, "num_actors": actors, "num_cpus_per_actor": cpus,
                   "num_gpus_per_actor": gpus, "parquet_bytes_per_image_topk_none": bpi,
                   "mean_confidence": summaries[key][-1].get("mean_confidence"),
                   "bare": "one process" if actors == 1 else f"{actors} processes at once, 1 thread each",
                   "timed": "ours: the label_images call (Ray already running); bare: first batch to last softmax"},
        ))
    if small is not None:
        # fixed cost of a job = one-batch job time minus what that batch costs at the big job's rate;
        # steady rate = the big job's images beyond the first batch over its time beyond the small job's
        one = rows[0]
        t_small, t_big = calls["ours-1batch"][-1], median(calls[f"ours-{configs[0][0]}"])
        fixed = t_small - BATCH_SIZE / one.ours
        steady = (n - BATCH_SIZE) / max(t_big - t_small, 1e-9)
        one.extra.update({"fixed_seconds_per_job": fixed, "one_batch_job_seconds": t_small,
                          "steady_images_per_s": steady, "steady_ratio": steady / one.bare if one.bare else None})
        one.note += f"; fixed ~{fixed:.0f} s/job, steady {steady:,.0f} img/s = {steady / one.bare:.2f}x bare"
    bpi3, rows3 = parquet_bytes_per_image(folders["ours-topk3"][-1])
    bpi_all = rows[-1].extra["parquet_bytes_per_image_topk_none"]
    o3 = got["ours-topk3"]
    rows.append(Row(
        section=section, name=f"label_images topk=3, {last[0]} actor{'s' if last[0] > 1 else ''}", ours=median(o3),
        bare=None, ratio=None, images=n, repeats=len(o3), threads=rows[-1].threads.split("/")[0] + "/-",
        note=f"{bpi3:.1f} B/img (top-3) vs {bpi_all:.1f} (all 10)",
        samples={"ours": o3, "ours_call_seconds": calls["ours-topk3"]},
        extra={"parquet_bytes_per_image_topk3": bpi3, "parquet_bytes_per_image_topk_none": bpi_all, "rows": rows3},
    ))
    return rows


def labeling_rounds(sizes: Sizes, n: int) -> int:
    """Rounds of (bare, ours) per configuration: one for big jobs (each takes minutes on 2 cores)."""
    return sizes.repeats if n <= 10_000 and sizes.name != "quick" else 1


def planned_runs(sizes: Sizes, n: int, device: str) -> int:
    """How many measurements :func:`bench_labeling` makes (for the progress bar)."""
    per_round = 2 if device == "cuda" else 4
    return per_round * labeling_rounds(sizes, n) + 1 + (1 if sizes.name != "quick" and n > BATCH_SIZE else 0)
