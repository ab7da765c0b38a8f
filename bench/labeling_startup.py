"""Where a labeling job's fixed cost goes: a timeline of its actors, against bare Ray actors.

Why: issue 28 asks for at most 3 s of fixed cost a labeling job on a CPU; the labeling benchmark measures
the total (a one-batch job against the big job's rate) but not its parts. This runs ``label_images`` with a
``PartitionWorker`` subclass that prints, relative to the call, when each actor's constructor starts and
ends and when each partition runs; then times bare Ray actors (nothing imported, torch imported, our
labeling module imported) from ``.remote()`` to their first answer.

    PYTHONPATH=$PWD python -m bench.labeling_startup                 # a random ResNet-14 teacher, 28 px
    PYTHONPATH=$PWD python -m bench.labeling_startup --checkpoint runs/x/gen-0/teacher/model.pt
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import harness


def timed_worker_class(stamps: Path):
    """``PartitionWorker`` with its constructor and calls stamped: ``what pid start end`` (wall clock) lines
    appended to ``stamps`` (the actors run on this machine: the embedded instance)."""
    import pseudo_labels.sharded as sharded

    def stamp(what: str, start: float) -> None:
        with open(stamps, "a") as f:
            f.write(f"{what} {os.getpid()} {start:.3f} {time.time():.3f}\n")

    class StampedWorker(sharded.PartitionWorker):
        def __init__(self, *args, **kwargs):
            start = time.time()
            super().__init__(*args, **kwargs)
            stamp("constructor", start)

        def __call__(self, batch):
            start = time.time()
            out = super().__call__(batch)
            stamp("partition", start)
            return out

    return sharded, StampedWorker


def bare_actors(rounds: int = 2) -> dict[str, list[float]]:
    """Seconds from ``.remote()`` to the first answer of an empty actor, one importing torch, one importing
    Ray Data and torch (the least a Ray Data labeling actor imports: the floor of a job's fixed cost while every
    job starts its own pool), one importing the labeling module (each a fresh process)."""
    import ray

    @ray.remote(num_cpus=1)
    class Empty:
        def ready(self) -> int:
            return 1

    @ray.remote(num_cpus=1)
    class Torch:
        def __init__(self) -> None:
            import torch  # noqa: F401

        def ready(self) -> int:
            return 1

    @ray.remote(num_cpus=1)
    class RayDataTorch:
        def __init__(self) -> None:
            import ray.data  # noqa: F401 - what every Ray Data map worker imports
            import torch  # noqa: F401

        def ready(self) -> int:
            return 1

    @ray.remote(num_cpus=1)
    class Labeling:
        def __init__(self) -> None:
            import pseudo_labels.labeling  # noqa: F401

        def ready(self) -> int:
            return 1

    out: dict[str, list[float]] = {"empty": [], "torch": [], "ray.data + torch": [], "labeling module": []}
    for _ in range(rounds):
        for name, cls in (("empty", Empty), ("torch", Torch), ("ray.data + torch", RayDataTorch),
                          ("labeling module", Labeling)):
            with harness.Stopwatch() as sw:
                actor = cls.remote()
                ray.get(actor.ready.remote())
            out[name].append(sw.seconds)
            ray.kill(actor)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a teacher model.pt (default: a random ResNet-14, 28 px)")
    ap.add_argument("--images", type=int, nargs="+", default=[1024, 8192], help="job sizes (random 28 px images)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/labeling_startup.json)")
    args = ap.parse_args(argv)
    from bench.cache import random_teacher
    from bench.sources import array_source, images_for, spec_of

    harness.init_ray()
    from pseudo_labels import label_images

    ckpt = Path(args.checkpoint) if args.checkpoint else random_teacher(harness.scratch_dir("startup"),
                                                                        spec_of("resnet14", 28, 1))
    jobs, body = [], []
    for n in args.images:
        stamps = harness.scratch_dir("stamps") / "stamps.txt"
        sharded, stamped = timed_worker_class(stamps)
        original, sharded.PartitionWorker = sharded.PartitionWorker, stamped
        try:
            source = array_source(images_for(n, 28, 1))
            start = time.time()
            label_images(source, [ckpt], tempfile.mkdtemp(), batch_size=1024, chunk_size=4096,
                         num_actors=args.actors, progress=False)
            seconds = time.time() - start
        finally:
            sharded.PartitionWorker = original
        events = [line.split() for line in stamps.read_text().splitlines()] if stamps.exists() else []
        events = [{"what": w, "pid": int(pid), "start": float(a) - start, "end": float(b) - start}
                  for w, pid, a, b in events]
        jobs.append({"images": n, "seconds": seconds, "events": events})
        body.append([f"{n:,} images", "job", "0.0", f"{seconds:.1f}"])
        body += [["", f"{e['what']} (pid {e['pid']})", f"{e['start']:.1f}", f"{e['end']:.1f}"]
                 for e in sorted(events, key=lambda e: e["start"])]
    bare = bare_actors()
    print("seconds after label_images was called:")
    print("\n".join(harness.text_table(["job", "what", "from", "to"], body, right={2, 3}, rule="  ")))
    print("\n".join(harness.text_table(["bare actor", "ready in s (each round)"],
                                       [[k, ", ".join(f"{v:.2f}" for v in vs)] for k, vs in bare.items()], rule="  ")))
    load = harness.load_average()
    print(f"load average {load[0]:.2f}")
    path = harness.write_results(harness.results_path("labeling_startup.json", args.out),
                                 {"jobs": jobs, "bare_actors": bare, "load": load,
                                  "environment": harness.environment("cpu")})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
