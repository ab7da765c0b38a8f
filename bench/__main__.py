"""``python -m bench [--quick] [--only teacher,online,labeling,workers] [--threads N]``: one table, one JSON file.

Prints one plain-text table (ours vs bare images/s and their ratio per row) and writes
``bench/results/bench.json`` with every raw sample. ``--quick`` is a smoke test (small sizes, about
three minutes on 2 busy cores); the default sizes are the real measurement (about fifteen minutes).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import click

from .harness import LOAD_SAMPLES, RESULTS_DIR, Row, cleanup, environment, format_table, init_ray, load_average
from .harness import median, resolve_device, write_results
from .suite import FULL, QUICK, SECTIONS, fashion_mnist


def _sections(only: str | None) -> list[str]:
    if not only:
        return list(SECTIONS)
    chosen = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise click.BadParameter(f"unknown section {unknown[0] if unknown else only!r}; choose from {', '.join(SECTIONS)}",
                                 param_hint="--only")
    return [s for s in SECTIONS if s in chosen]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Small sizes: a smoke test of every benchmark (~3 min).")
@click.option("--only", default=None, metavar="LIST", help=f"Comma-separated sections to run: {', '.join(SECTIONS)}.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="torch intra-op threads of the driver (in-process training and the bare loops). One by "
                   "default: on a loaded machine several threads per process spend most of their time in "
                   "OpenMP barriers, which measures the load rather than the code.")
@click.option("--repeats", default=None, type=click.IntRange(1, 20),
              help="Override the number of ours/bare rounds per row (median reported).")
def main(quick: bool, only: str | None, threads: int, repeats: int | None) -> None:
    """Throughput of teacher training, distillation with an online teacher, labeling and Ray Train workers
    against bare PyTorch loops."""
    import dataclasses

    import torch
    from tqdm.auto import tqdm

    from . import labeling, online, throughput

    sections = _sections(only)
    sizes = QUICK if quick else FULL
    if repeats is not None:
        sizes = dataclasses.replace(sizes, repeats=repeats, worker_repeats=repeats)
    torch.set_num_threads(threads)
    load_before = load_average()
    t_start = time.perf_counter()
    cfg, bundle = fashion_mnist(sizes.labels_per_class)
    ray_seconds = init_ray() if {"labeling", "workers"} & set(sections) else None
    gpu = resolve_device().type == "cuda"
    devices = ["cpu", "cuda"] if gpu else ["cpu"]

    rows: list[Row] = []
    try:
        if "teacher" in sections:
            for dev in devices:
                with tqdm(total=4 * sizes.repeats, desc=f"teacher ({dev})", unit="run", dynamic_ncols=True) as bar:
                    rows += throughput.bench_teacher(cfg, bundle, sizes, threads, dev, bar)
        if "online" in sections:
            for dev in devices:
                with tqdm(total=online.planned_runs(sizes), desc=f"online ({dev})", unit="run", dynamic_ncols=True) as bar:
                    rows += online.bench_online(cfg, bundle, sizes, threads, dev, bar)
        if "labeling" in sections:
            lab_cfg, lab_bundle = fashion_mnist(labeling.LABELS_PER_CLASS)
            n_unl = min(sizes.label_images or len(lab_bundle.unlabeled), len(lab_bundle.unlabeled))
            for dev in devices:
                total = labeling.planned_runs(sizes, n_unl, dev)
                with tqdm(total=total, desc=f"labeling ({dev})", unit="run", dynamic_ncols=True) as bar:
                    rows += labeling.bench_labeling(lab_cfg, lab_bundle, sizes, dev, bar=bar)
        if "workers" in sections:
            with tqdm(total=throughput.planned_worker_runs(sizes, threads), desc="workers", unit="run", dynamic_ncols=True) as bar:
                rows += throughput.bench_workers(cfg, bundle, sizes, threads, bar=bar)
    finally:
        cleanup()

    load_after = load_average()
    wall = time.perf_counter() - t_start
    env = environment()
    device = f"cuda ({env['gpu']})" if gpu else "cpu"
    footer = ["ours/bare: median of per-round ratios; img/s: medians over rounds alternating ours and bare in one run."]
    if {"teacher", "workers"} & set(sections):
        footer.append("teacher/workers: ours = history.csv images_per_s of run_training (epoch loop only; 'call' = "
                      "whole call); bare = same model, transform, batch 64 and steps, same span timed.")
    if "online" in sections:
        footer.append("online: ours = history.csv images_per_s of run_training with method hinton and a ResNet-26 "
                      "teacher_ckpt run online (same student, noise, batch and steps as the teacher rows); bare = "
                      "the same loop written by hand with the teacher forward under torch.no_grad() and the same "
                      "KL+CE loss; 'teacher fwd' = 1 - bare / bare without the teacher.")
    if "labeling" in sections:
        footer.append("labeling: ours = the whole label_images call on a running Ray (actor start and Parquet writing "
                      "included); bare = the same inference in N one-thread processes for N actors, no files.")
        if quick:
            footer.append("quick labeling ratios are mostly the fixed cost of a job (actor start, ~8 s here); the full "
                          "run labels 59,000 images and reports that cost and the steady rate apart.")
    footer.append("threads: torch intra-op threads ours/bare; NxM = N processes of M threads. A row with more CPUs "
                  "than its bare loop can exceed 1 (workers=2: ideal 2 on an idle machine).")
    line = f"sizes: {sizes.name}; device: {device}; cpus: {env['cpus']}; torch {env['torch']}"
    if ray_seconds is not None:
        line += f"; Ray start {ray_seconds:.1f} s (in no row)"
    footer.append(line)
    footer.append(f"load average (1/5/15 min): before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
                  f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; 1-min load after each "
                  f"measurement: min {min(LOAD_SAMPLES, default=float('nan')):.1f}, median {median(LOAD_SAMPLES):.1f}, "
                  f"max {max(LOAD_SAMPLES, default=float('nan')):.1f}; bench wall {wall / 60:.1f} min")
    table = format_table(rows, footer)
    meta = {
        "sizes": dataclasses.asdict(sizes), "sections": sections, "threads": threads, "environment": env,
        "ray_start_seconds": ray_seconds, "load_average_before": load_before, "load_average_after": load_after,
        "wall_seconds": wall, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_samples": LOAD_SAMPLES,
        "command": " ".join(["python -m bench"] + sys.argv[1:]),
        "table": table,
    }
    path = write_results(RESULTS_DIR / "bench.json", {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]})
    click.echo("")
    click.echo(table)
    click.echo(f"\nwrote {path.relative_to(os.getcwd()) if path.is_relative_to(os.getcwd()) else path}")


if __name__ == "__main__":
    main(prog_name="python -m bench")
