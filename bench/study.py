"""A study on Ray Tune: distillation under label noise on Fashion-MNIST.

``make bench-study`` (= ``python -m bench.study``) runs ``configs/study_fashion_mnist.yaml`` (no teacher,
Hinton KD and FitNet on a ResNet-8 at symmetric label noise 0 and 0.4, 2 seeds; one ResNet-20 teacher
per noise level, trained on the same noisy labels) into ``runs/bench_study`` and prints the summary over
seeds. It is an ordinary study: a killed benchmark resumes when run again (finished trials are kept).
Sized for about an hour on 2 CPU cores (an estimate, not a measurement). ``--quick`` is a smoke run of a
few minutes (20 labels a class, 1 epoch of a few steps, 500 test images) into ``bench/results/study``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

STUDY = Path("configs/study_fashion_mnist.yaml")
QUICK_SET = {"data.labels_per_class": 20, "data.test_limit": 500, "teacher.name": "resnet8",
             "teacher_train.epochs": 1, "teacher_train.total_steps": 4, "teacher_train.warn_below_steps": 0,
             "student.train.epochs": 1, "student.train.total_steps": 4, "student.train.warn_below_steps": 0}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    ap.add_argument("--ray-address", default=None)
    args = ap.parse_args(argv)
    from pipelines.study import format_summary, run_study, summary

    study_file, study_dir = STUDY, Path("runs/bench_study")
    if args.quick:
        spec = yaml.safe_load(STUDY.read_text())
        spec["base"] = str(STUDY.parent.resolve() / spec["base"])
        spec["set"] = {**spec.get("set", {}), **QUICK_SET}
        study_dir = Path("bench/results/study")
        study_dir.mkdir(parents=True, exist_ok=True)
        study_file = study_dir / "study.yaml"
        study_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.perf_counter()
    out = run_study(study_file, study_dir, ray_address=args.ray_address)
    print(format_summary(summary(out["rows"])))
    for tid, err in out["errors"].items():
        print(f"failed: {tid}: {err}")
    print(f"{len(out['rows'])} trials in {time.perf_counter() - t0:,.0f} s -> {study_dir / 'results.parquet'}")


if __name__ == "__main__":
    main()
