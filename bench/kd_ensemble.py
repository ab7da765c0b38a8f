"""A student of an ensemble of teachers beside a student of the best single one (issue 26, the fidelity
comparison of Beyer et al., "A good teacher is patient and consistent", on Sarfraz et al.'s protocol).

``make bench-kd-ensemble`` (= ``python -m bench.kd_ensemble``): ``bench-kd``'s data and sizes (500 labels a
class, a validation split held out, the full test set) and three ResNet-26 teachers that differ only in
their seed (the bench-kd teacher is seed 0; each is trained once and cached in ``runs/cache/`` like it).
A ResNet-8 student is distilled online with ``hinton`` (consistent teaching, bench-kd's defaults) from:

- ``best single``: the teacher with the best *validation* accuracy (never chosen on the test set);
- ``ensemble of 2`` and ``ensemble of 3``: ``distill.teachers`` with equal weights, the student learning
  the weighted mixture of the members' probabilities;
- and ``supervised`` (no teacher) as the floor, all at the same budget and seeds (2 by default).

Prints, per row, the teacher's own test accuracy (an ensemble's is its mixture's), the student's test
accuracy and its fidelity (top-1 agreement on the test set with the teacher it learned from: the mixture
for an ensemble; ``supervised``'s is to the best single teacher), mean ± std over seeds, and writes
``docs/bench-kd-ensemble.json`` and ``.png``. Every run is a resumable ``noisystudent distill`` run folder
under ``runs/bench_kd/<student>/``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Optional

from bench.harness import load_average, mean_std, pyplot, save_figure, text_table, write_results
from bench.kd import FULL, QUICK, base_config, run_student, train_teacher

TEACHER_SEEDS = (0, 1, 2)


def member_config(cfg, seed: int):
    """``cfg`` with the teacher's seed changed: the same model, data and schedule (another cache folder)."""
    from noisystudent.config import to_dict
    from pipelines.config import config_from_dict

    return config_from_dict({**to_dict(cfg), "seed": seed})


def summarise(runs: list[dict]) -> list[dict]:
    """One row per ``row`` label, in the order first seen: mean ± std of accuracy, fidelity, the teacher's
    accuracy and seconds, and the gain over ``supervised``."""
    order = list(dict.fromkeys(r["row"] for r in runs))
    rows = []
    for name in order:
        rs = [r for r in runs if r["row"] == name]
        row = {"row": name, "seeds": len(rs), "members": rs[0].get("members")}
        for key in ("test_acc", "test_fidelity", "teacher_test_acc", "train_seconds"):
            row[key], row[f"{key}_std"] = mean_std([r.get(key) for r in rs])
        rows.append(row)
    base = next((r for r in rows if r["row"] == "supervised"), None)
    for r in rows:
        r["gain"] = None if base is None or r is base or r["test_acc"] is None else r["test_acc"] - base["test_acc"]
    return rows


def format_table(rows: list[dict], teachers: list[dict]) -> str:
    def pm(r, key):
        return "-" if r.get(key) is None else f"{100 * r[key]:.2f} ± {100 * r[f'{key}_std']:.2f}"

    head = ["student of", "teacher test acc %", "student test acc %", "vs supervised", "fidelity %", "seconds"]
    body = [[r["row"], "-" if r.get("teacher_test_acc") is None else f"{100 * r['teacher_test_acc']:.2f}",
             pm(r, "test_acc"), "-" if r["gain"] is None else f"{100 * r['gain']:+.2f}", pm(r, "test_fidelity"),
             "-" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}"] for r in rows]
    lines = text_table(head, body)
    lines.append("")
    for t in teachers:
        lines.append(f"teacher seed {t['seed']}: {t['model']}, val {100 * t['val_acc']:.2f}%, test {100 * t['test_acc']:.2f}%"
                     f"{'  <- best single (validation)' if t.get('best') else ''}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """Student accuracy and fidelity per row (mean ± std; the teacher's accuracy as a marker)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r["row"] for r in rows]
    xs = range(len(rows))
    for ax, key, label in ((axes[0], "test_acc", "student test accuracy %"), (axes[1], "test_fidelity", "fidelity to its teacher %")):
        vals = [(100 * r[key], 100 * r[f"{key}_std"]) if r.get(key) is not None else (0.0, 0.0) for r in rows]
        ax.bar(xs, [v for v, _ in vals], 0.6, yerr=[s for _, s in vals], capsize=3, color=[f"C{i}" for i in xs])
        if key == "test_acc":
            tx = [(i, 100 * r["teacher_test_acc"]) for i, r in enumerate(rows) if r.get("teacher_test_acc") is not None]
            ax.scatter([i for i, _ in tx], [v for _, v in tx], marker="_", s=400, color="black", label="its teacher", zorder=3)
            ax.legend(fontsize=8, loc="lower right")
        shown = [v for v, _ in vals if v > 0] + ([v for _, v in tx] if key == "test_acc" else [])
        if shown:
            ax.set_ylim(min(shown) - 2, min(100, max(shown) + 1))
        ax.set_xticks(list(xs), names, fontsize=8)
        ax.set_ylabel(label + " (mean ± std)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: bench-kd's quick sizes, 1 seed")
    ap.add_argument("--student", default="resnet8", help="student model (default: %(default)s)")
    ap.add_argument("--teacher", default="resnet26", help="the members' model (default: %(default)s)")
    ap.add_argument("--members", type=int, default=3, choices=[2, 3], help="largest ensemble (default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=None, help="student seeds per row (default: 2; 1 with --quick)")
    ap.add_argument("--run-dir", default=None, help="student runs (default: runs/bench_kd, runs/bench_kd_quick)")
    ap.add_argument("--cache-dir", default="runs/cache", help="where the teachers are cached (default: %(default)s)")
    ap.add_argument("--out", default=None, help="JSON and figure stem (default: docs/bench-kd-ensemble)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = ap.parse_args(argv)

    import torch

    from noisystudent.errors import UserError

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    seeds = args.seeds or (1 if args.quick else 2)
    root = Path(args.run_dir or ("runs/bench_kd_quick" if args.quick else "runs/bench_kd"))
    stem = Path(args.out or ("bench/results/bench-kd-ensemble-quick" if args.quick else "docs/bench-kd-ensemble"))
    progress = not args.quiet
    t0 = time.perf_counter()
    try:
        cfg = base_config(sizes, args.teacher, args.device)
        teachers = []
        for s in TEACHER_SEEDS[:args.members]:
            ckpt, tm = train_teacher(member_config(cfg, s), args.cache_dir, progress=progress)
            teachers.append({"seed": s, "model": tm.get("model"), "ckpt": str(ckpt), "val_acc": tm.get("val_acc"),
                             "test_acc": tm.get("test_acc"), "train_seconds": tm.get("train_seconds"), "dir": tm["dir"]})
        best = max(teachers, key=lambda t: (t["val_acc"] or 0.0, -t["seed"]))  # validation decides, never the test set
        best["best"] = True
        runs = []
        # the bench-kd teacher's students are bench-kd's own runs (read back when bench-kd made them)
        single_root = root if best["seed"] == 0 else root / f"teacher-seed{best['seed']}"
        for seed in range(seeds):
            r = run_student(cfg, root, args.student, "supervised", seed, Path(best["ckpt"]), progress=progress)
            # no teacher: its fidelity is measured against the best single teacher, whose accuracy is that row's
            runs.append({**r, "row": "supervised", "members": [], "teacher_test_acc": None})
            r = run_student(cfg, single_root, args.student, "hinton", seed, Path(best["ckpt"]), progress=progress)
            runs.append({**r, "row": f"best single (seed {best['seed']})", "members": [best["seed"]]})
            for k in range(2, args.members + 1):
                members = [(Path(t["ckpt"]), 1.0 / k) for t in teachers[:k]]
                r = run_student(cfg, root, args.student, "hinton", seed, members[0][0], progress=progress,
                                teachers=members, folder=f"hinton-ensemble{k}")
                runs.append({**r, "row": f"ensemble of {k}", "members": [t["seed"] for t in teachers[:k]]})
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    rows = summarise(runs)
    text = format_table(rows, teachers)
    print()
    print(text)
    wall = time.perf_counter() - t0
    load = load_average()
    print(f"\nwall time of this call: {wall:.0f} s, load average {load[0]:.1f} (runs in {root}; finished runs are read back)")
    payload = {"protocol": "bench-kd's (Sarfraz et al.): teachers and students on the same labeled images; hinton online, "
                           "consistent teaching; the best single teacher chosen on validation",
               "sizes": sizes.__dict__ | {"seeds": seeds}, "student": args.student, "teachers": teachers, "rows": rows,
               "runs": runs, "table": text, "wall_seconds_this_call": wall, "load_average": load,
               "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    write_results(stem.with_suffix(".json"), payload)
    plot(rows, stem.with_suffix(".png"), f"{args.student} students of {args.teacher} teachers (Fashion-MNIST, "
                                         f"{10 * sizes.labels_per_class} labels, {seeds} seed(s))")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    main()
