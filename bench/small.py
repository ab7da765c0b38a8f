"""Small-data benchmark: the shipped example config, only its paths changed, on a small image folder.

``make bench-small`` (= ``python -m bench.small``) exports Fashion-MNIST as an image folder of the kind a
new user brings (10 classes; 10 labeled PNGs a class, 1,000 unlabeled, 100 test a class; 28x28 grayscale
files that the config reads as 32x32 RGB), runs ``configs/imagefolder_example.yaml`` on it with *only*
``data.labeled``, ``data.unlabeled`` and ``data.test`` changed, for two generations, into
``runs/bench_small`` (resumable), then prints teacher and student test accuracy per generation, which
model taught each generation, the promotion decisions (taken on validation, never on test) and the wall
time, and writes ``bench/results/small.json`` and the run's report.

The folder's labeled images lose ``data.val_fraction`` to validation: 10 a class keep 8 for training
and hold out 2 (20 validation images, so one image moves validation accuracy by 5 points).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from bench.harness import text_table

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "imagefolder_example.yaml"
FMNIST = Path(os.environ.get("NOISYSTUDENT_FMNIST", "/usr/share/datasets/fashion-mnist"))
PATH_FIELDS = ("labeled", "unlabeled", "test")


def export_fashion_mnist_folder(out: str | Path, root: str | Path = FMNIST, labeled_per_class: int = 10,
                                unlabeled: int = 1000, test_per_class: int = 100, seed: int = 0) -> dict[str, str]:
    """Write Fashion-MNIST images as PNG files: ``out/train/<class>/``, ``out/unlabeled/`` (no labels) and
    ``out/test/<class>/``; return the three folders as ``{labeled, unlabeled, test}``.

    Labeled and unlabeled images are disjoint draws (seeded) from the training split, test images from
    the test split. A finished export (``out/_SUCCESS`` for the same sizes) is reused."""
    import numpy as np
    from PIL import Image

    from noisystudent.data.fashion_mnist import CLASSES, load_fashion_mnist

    out = Path(out)
    paths = {"labeled": str(out / "train"), "unlabeled": str(out / "unlabeled"), "test": str(out / "test")}
    stamp = f"{labeled_per_class} {unlabeled} {test_per_class} {seed}\n"
    done = out / "_SUCCESS"
    if done.is_file() and done.read_text() == stamp:
        return paths
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    names = [c.replace("/", "_") for c in CLASSES]  # "T-shirt/top" is not a folder name
    images, labels = load_fashion_mnist(root, "train")
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), labeled_per_class, replace=False)
                             for c in range(len(CLASSES))])
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    for i in chosen:
        d = out / "train" / names[labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"train-{i:05d}.png")
    (out / "unlabeled").mkdir(parents=True, exist_ok=True)
    for i in rng.choice(rest, unlabeled, replace=False):
        Image.fromarray(images[i]).save(out / "unlabeled" / f"train-{i:05d}.png")
    images, labels = load_fashion_mnist(root, "test")
    for c in range(len(CLASSES)):
        d = out / "test" / names[c]
        d.mkdir(parents=True, exist_ok=True)
        for i in rng.choice(np.flatnonzero(labels == c), test_per_class, replace=False):
            Image.fromarray(images[i]).save(d / f"test-{i:05d}.png")
    done.write_text(stamp)
    return paths


def example_config(paths: dict[str, str], sets: Optional[dict] = None):
    """``configs/imagefolder_example.yaml`` with only its data paths replaced (and ``sets``, for tests)."""
    from pipelines.config import load_config

    return load_config(EXAMPLE, {**{f"data.{k}": v for k, v in paths.items()}, **(sets or {})})


def table(run_dir: Path, generations: int) -> list[dict]:
    """One row per generation 0..``generations`` (0: the teacher) from ``noisystudent status``, with the
    model that taught it and whether its student teaches the next generation."""
    from pipelines.loop import status_rows
    from pipelines.state import RunDir

    return [r for r in status_rows(RunDir(run_dir)) if isinstance(r["generation"], int) and r["generation"] <= generations]


def final_model(run_dir: Path, generations: int) -> dict:
    """The model the loop ends with (the teacher of generation N + 1) and its test accuracy."""
    from noisystudent.io import read_json
    from pipelines.state import RunDir

    run = RunDir(run_dir)
    ckpt = run.teacher_of(generations + 1)
    m = read_json(ckpt.parent / "metrics.json")
    return {"model_dir": str(ckpt.parent.relative_to(run.root)), "model": m.get("model"), "test_acc": m.get("test_acc"),
            "val_acc": m.get("val_acc")}


def print_table(rows: list[dict]) -> str:
    def f(v, fmt=".4f"):
        return "-" if v is None else (format(v, fmt) if isinstance(v, float) else str(v))

    head = ["gen", "model", "taught by", "val acc", "test acc", "teaches next", "seconds"]
    body = [[str(r["generation"]), r["model"], f(r.get("taught_by")), f(r.get("val_acc")), f(r["test_acc"]),
             {"student": "its student", "teacher": "its teacher", None: "-"}[r.get("promoted")],
             f(r["seconds"], ",.0f")] for r in rows]
    lines = text_table(head, body)
    lines += [f"gen {r['generation']} promotion: {r['decision']}" for r in rows if r.get("decision")]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/bench_small")
    ap.add_argument("--data-dir", default="runs/bench_small_data", help="where the Fashion-MNIST image folder is written")
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="delete the run folder first (a full, timed run)")
    ap.add_argument("--table-only", action="store_true", help="print the table of an existing run")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    t0 = time.perf_counter()

    from noisystudent.errors import UserError, show_warnings_as_lines
    from pipelines.loop import run_all

    show_warnings_as_lines()
    try:
        if not args.table_only:
            if not FMNIST.joinpath("train-images-idx3-ubyte.gz").is_file():
                raise SystemExit(f"error: Fashion-MNIST not found in {FMNIST} (make data)")
            paths = export_fashion_mnist_folder(args.data_dir)
            cfg = example_config(paths)
            if args.fresh:
                shutil.rmtree(run_dir, ignore_errors=True)
            run_all(cfg, run_dir, generations=args.generations)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    wall = time.perf_counter() - t0
    rows = table(run_dir, args.generations)
    print(print_table(rows))
    final = final_model(run_dir, args.generations)
    teacher = rows[0]["test_acc"]
    ok = final["test_acc"] is not None and teacher is not None and final["test_acc"] >= teacher
    print(f"\nthe loop ends with {final['model_dir']} ({final['model']}): test {final['test_acc']:.4f} vs the "
          f"generation 0 teacher {teacher:.4f} ({100 * (final['test_acc'] - teacher):+.2f} points; at least as good: {ok})")
    steps_seconds = sum(r["seconds"] or 0 for r in rows)
    from pipelines.state import RunDir

    run_seconds = RunDir(run_dir).state().get("last_run_seconds")  # the loop's own wall time, written by run_all
    print(f"wall time of the loop: {run_seconds:.0f} s; of this call: {wall:.0f} s; sum of the run's step times: "
          f"{steps_seconds:.0f} s ({run_dir}, {os.cpu_count()} CPUs, 1-minute load {os.getloadavg()[0]:.1f})")
    from noisystudent.io import write_json
    from pipelines.report import build_report

    out = Path("bench/results/small.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"config": str(EXAMPLE.relative_to(EXAMPLE.parent.parent)), "changed_fields": [f"data.{k}" for k in PATH_FIELDS],
                     "run_dir": str(run_dir), "generations": args.generations, "rows": rows, "final_model": final,
                     "final_at_least_teacher": ok, "run_seconds": run_seconds, "wall_seconds_this_call": round(wall, 1),
                     "step_seconds": round(steps_seconds, 1),
                     "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]})
    print(f"report: {build_report(run_dir)}")


if __name__ == "__main__":
    main()
