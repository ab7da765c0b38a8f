"""The "patience" result of Beyer et al. (CVPR 2022) on Fashion-MNIST: test accuracy against training
steps for one student distilled from one teacher under ``fixed``, ``consistent`` and
``function_matching`` teaching, long enough to see whether the fixed teacher saturates.

``make bench-patience`` (= ``python -m bench.patience``): the cached ResNet-26 teacher of ``bench-kd``
(same labeled images, same digest, trained once), a ResNet-8 student with ``hinton`` (T = 4,
alpha = 0.9) for ``--epochs`` epochs (default 40: about 1,500 optimizer steps at batch 128 on 4,500
training images, four times bench-kd's budget), test and validation accuracy every 2 epochs. Each
setting is an ordinary resumable ``noisystudent distill`` run under ``runs/bench_patience/``; a killed
benchmark continues where it stopped. Writes ``docs/bench-patience.json`` and ``docs/bench-patience.png``
(``--quick``: 6 epochs on 100 labels per class, under ``bench/results/``).

Budget: about an hour on 2 idle cores for the three runs (each is hinton's cost per step, about
2.2x a supervised ResNet-8 step because the teacher runs online; ``--threads 1`` when the machine is shared).
Accuracy is read from each run's ``history.csv``; the figure marks each curve's best validation epoch
(what a user would pick), never the best test epoch.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Optional

import pandas as pd

from bench.harness import pyplot, save_figure
from bench.kd import FULL, QUICK, base_config, run_student, train_teacher

SETTINGS = ("fixed", "consistent", "function_matching")


def _variant(mode: str) -> str:
    """bench-kd's name (and run folder) of hinton under teaching ``mode``; ``consistent`` is plain hinton."""
    return "hinton" if mode == "consistent" else f"hinton@{mode}"


def curves(root: Path, student: str, seed: int) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Per setting: epoch, val_acc, test_acc rows of its run's history (evaluated epochs only), and the
    settings whose run has not finished: their curve so far, read from the run's ``last.pt``."""
    from noisystudent.checkpoint import safe_load

    out, partial = {}, []
    for mode in SETTINGS:
        name = _variant(mode)
        folder = root / student / name / f"seed{seed}" / "distill"
        if (folder / "history.csv").is_file():
            h = pd.read_csv(folder / "history.csv")
        elif (folder / "last.pt").is_file():
            h = pd.DataFrame(safe_load(folder / "last.pt", what=f"resume state {folder / 'last.pt'}")["history"])
            partial.append(mode)
        else:
            continue
        h = h[h["phase"] == "train"] if "phase" in h else h
        if "test_acc" not in h:
            continue
        h = h.dropna(subset=["test_acc"]).copy()
        out[mode] = h
    return out, partial


def _metric(root: Path, student: str, mode: str, seed: int, key: str):
    """``key`` of a finished run's metrics.json, None while it has not finished."""
    import json

    name = _variant(mode)
    path = root / student / name / f"seed{seed}" / "distill" / "metrics.json"
    return json.loads(path.read_text()).get(key) if path.is_file() else None


def plot(data: dict[str, pd.DataFrame], steps_per_epoch: int, teacher: dict, path: Path, title: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, (mode, h) in enumerate(data.items()):
        steps = h["epoch"] * steps_per_epoch
        ax.plot(steps, 100 * h["test_acc"], marker="o", ms=3, color=f"C{k}", label=f"{mode} (test)")
        if "val_acc" in h and h["val_acc"].notna().any():
            best = h.loc[h["val_acc"].idxmax()]
            ax.scatter([best["epoch"] * steps_per_epoch], [100 * best["test_acc"]], s=70, facecolors="none",
                       edgecolors=f"C{k}", linewidths=1.5)
    if teacher.get("test_acc") is not None:
        ax.axhline(100 * teacher["test_acc"], ls=":", color="black", lw=1.2, label=f"teacher {teacher['model']}")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("test accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=8)
    ax.set_xlim(left=0)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 labels/class, 6 epochs, 1,000 test images")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default 40; 6 with --quick)")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--teacher", default="resnet26")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", default=None, help="default: runs/bench_patience (runs/bench_patience_quick)")
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", default=None, help="JSON and figure stem (default: docs/bench-patience)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: table and figure from the runs as they are (unfinished ones up to their last epoch)")
    args = ap.parse_args(argv)

    import torch

    from noisystudent.errors import UserError

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    epochs = args.epochs or (6 if args.quick else 40)
    root = Path(args.run_dir or ("runs/bench_patience_quick" if args.quick else "runs/bench_patience"))
    stem = Path(args.out or ("bench/results/bench-patience-quick" if args.quick else "docs/bench-patience"))
    t0 = time.perf_counter()
    try:
        cfg = base_config(sizes, args.teacher, args.device)  # the teacher's digest is bench-kd's: shared cache
        ckpt, tm = train_teacher(cfg, args.cache_dir, progress=not args.quiet)
        cfg.student.train.epochs = epochs
        cfg.student.train.eval_every = 2
        if not args.report_only:
            for m in SETTINGS:  # resumable; what the table shows is read back from the run folders
                run_student(cfg, root, args.student, _variant(m), args.seed, ckpt, progress=not args.quiet)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    from noisystudent.data import create_data

    n_train = len(create_data(cfg.data).labeled)
    steps_per_epoch = max(1, n_train // cfg.student.train.batch_size)
    data, partial = curves(root, args.student, args.seed)
    teacher = {"model": tm.get("model"), "test_acc": tm.get("test_acc")}
    rows = []
    for mode, h in data.items():
        best = h.loc[h["val_acc"].idxmax()] if "val_acc" in h and h["val_acc"].notna().any() else h.iloc[-1]
        half = h[h["epoch"] <= epochs // 2]
        rows.append({"teaching": mode, "final_test_acc": float(h["test_acc"].iloc[-1]),
                     "test_acc_at_half": float(half["test_acc"].iloc[-1]) if len(half) else None,
                     "epochs_done": int(h["epoch"].max()), "finished": mode not in partial,
                     "best_val_epoch": int(best["epoch"]), "test_acc_at_best_val": float(best["test_acc"]),
                     "final_fidelity": _metric(root, args.student, mode, args.seed, "test_fidelity")})
    head = (f"{'teaching':<18} {'epochs':>6} {'test @ half':>11} {'test @ last':>11} {'best-val epoch':>14} "
            f"{'test there':>10} {'fidelity':>8}")
    print("\n" + head)
    for r in rows:
        half = "-" if r["test_acc_at_half"] is None else f"{100 * r['test_acc_at_half']:.2f}"
        fid = "-" if r["final_fidelity"] is None else f"{100 * r['final_fidelity']:.2f}"
        done = f"{r['epochs_done']}" + ("" if r["finished"] else "*")
        print(f"{r['teaching']:<18} {done:>6} {half:>11} {100 * r['final_test_acc']:>11.2f} {r['best_val_epoch']:>14} "
              f"{100 * r['test_acc_at_best_val']:>10.2f} {fid:>8}")
    wall = time.perf_counter() - t0
    if partial:
        print(f"* unfinished ({', '.join(partial)}): the curve up to its last finished epoch; rerun to continue")
    print(f"\nteacher {teacher['model']}: {100 * (teacher['test_acc'] or 0):.2f}%; {epochs} epochs x {steps_per_epoch} "
          f"steps; wall time of this call {wall:.0f} s (finished runs are read back)")
    result = {"protocol": "Beyer et al. 2022 patience: one student and teacher, three teaching settings, accuracy "
                          "against steps", "student": args.student, "teacher": teacher, "epochs": epochs,
              "steps_per_epoch": steps_per_epoch, "labeled_images": n_train, "rows": rows, "unfinished": partial,
              "curves": {m: h[["epoch", "val_acc", "test_acc"]].to_dict("records") for m, h in data.items()},
              "train_seconds": {m: _metric(root, args.student, m, args.seed, "train_seconds") for m in SETTINGS},
              "wall_seconds_this_call": wall,
              "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    from noisystudent.io import write_json

    write_json(stem.with_suffix(".json"), result)
    plot(data, steps_per_epoch, teacher, stem.with_suffix(".png"),
         f"Fashion-MNIST, {n_train} labeled images: {args.student} from {teacher['model']} (hinton); "
         "circles: best validation epoch")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
