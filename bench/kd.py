"""Distillation methods compared on Fashion-MNIST in the protocol of Sarfraz et al. (ICPR 2020).

``make bench-kd`` (= ``python -m bench.kd``): one ResNet-26 teacher and ResNet-8 students that all see
the same labeled images (``labels_per_class`` per class of the training set, the same split for every
run), each student trained with one registered method at the same budget (``supervised`` is the
no-teacher baseline), over several seeds. Prints a table of test accuracy (mean +- std over seeds),
fidelity to the teacher (top-1 agreement on the test set) and training seconds per method, and writes
``docs/bench-kd.json`` and ``docs/bench-kd.png``.

Every run goes through ``noisystudent distill``'s code path (``pipelines.steps.distill`` on its own run
folder, ``runs/bench_kd/<student>/<method>/seed<k>``), so a killed benchmark resumes: finished runs are
read back, an unfinished one continues from its ``last.pt``. The teacher is trained once and cached in
``runs/cache/kd-teacher-<model>-<epochs>ep-<digest>/`` (``make clean`` keeps it, ``make clean-runs``
deletes it); the digest covers the model, data split and training settings, so any later benchmark with
the same ones reuses it.

Two named parts, each about an hour on 2 idle cores, sharing the teacher and the runs they have in
common (``supervised``, ``hinton``): ``--part feature`` (``make bench-kd``: response, feature and
relation methods) and ``--part online`` (``make bench-kd-online``: ``dml``, ``one``, ``bss`` and
``hinton`` under the four teaching settings, written ``hinton@fixed`` ...; plain ``hinton`` is
``hinton@consistent``, the default), writing ``docs/bench-kd.*`` and ``docs/bench-kd-online.*``.

Sizes (chosen to fit about an hour on 2 idle CPU cores): 500 labels per class (5,000 images), teacher
15 epochs, students 10 epochs at batch 128 with SGD + cosine (the training settings of
``configs/distill_fashion_mnist.yaml``), 3 seeds, the full 10,000-image test set. ``--quick`` is a smoke
run of a few minutes (100 labels per class, teacher 3 and students 2 epochs, 1 seed, 1,000 test images)
that writes under ``bench/results/`` instead of ``docs/``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.cache import teacher_dir, trained_teacher
from noisystudent.config import non_default
from bench.harness import beats_baseline, mean_std, pyplot, save_figure, text_table

CONFIG = "configs/distill_fashion_mnist.yaml"
METHODS = ("supervised", "hinton", "fitnet", "at", "fsp", "sp", "rkd")
# online methods and teaching settings: a row "method@mode" is the method under distill.teaching.mode
ONLINE = ("supervised", "hinton", "dml", "one", "bss", "hinton@fixed", "hinton@independent", "hinton@function_matching")
PARTS = {"feature": METHODS, "online": ONLINE}
BASELINE = "supervised"


def split_variant(spec: str) -> tuple[str, Optional[str]]:
    """``"hinton@fixed"`` -> ``("hinton", "fixed")``; ``"@consistent"`` (the default setting) is dropped, so
    ``hinton@consistent`` and ``hinton`` are the same runs."""
    name, _, mode = spec.partition("@")
    return name, (mode if mode and mode != "consistent" else None)


@dataclass(frozen=True)
class Sizes:
    labels_per_class: int
    teacher_epochs: int
    student_epochs: int
    seeds: int
    test_limit: Optional[int]


FULL = Sizes(labels_per_class=500, teacher_epochs=15, student_epochs=10, seeds=3, test_limit=None)
QUICK = Sizes(labels_per_class=100, teacher_epochs=3, student_epochs=2, seeds=1, test_limit=1000)


def base_config(sizes: Sizes, teacher_model: str = "resnet26", device: str = "auto"):
    """The benchmark's config: the shipped distillation config at the benchmark's sizes, trained in-process."""
    from pipelines.config import load_config

    return load_config(CONFIG, {
        "name": "bench_kd", "device": device,
        "data.labels_per_class": sizes.labels_per_class, "data.test_limit": sizes.test_limit,
        "teacher.name": teacher_model,
        "teacher_train.epochs": sizes.teacher_epochs, "teacher_train.num_workers": 0,
        "teacher_train.eval_every": 1000,
        "student.train.epochs": sizes.student_epochs, "student.train.num_workers": 0,
        "student.train.eval_every": 1000,
        "ray.workers": 0,
    })


def teacher_cache_dir(cfg, cache_root: str | Path) -> Path:
    """``cache_root/kd-teacher-<model>-<epochs>ep-<digest>``; the digest covers the teacher's model, the
    data split, its training settings and the seed (not the device or where the data lies)."""
    data = non_default(cfg.data)
    data.pop("root", None)
    key = {"model": non_default(cfg.teacher), "train": non_default(cfg.teacher_train), "data": data, "seed": cfg.seed}
    return teacher_dir(cache_root, "kd", cfg.teacher.name, cfg.teacher_train.epochs, key)


def train_teacher(cfg, cache_root: str | Path, progress: bool = True) -> tuple[Path, dict]:
    """Train (or resume, or reuse) the cached teacher; return its checkpoint and metrics (with ``dir``)."""
    return trained_teacher(cfg, teacher_cache_dir(cfg, cache_root), progress=progress)


def student_config(cfg, student: str, method: str, seed: int, teacher_ckpt: Path,
                   teachers: Optional[list[tuple[Path, float]]] = None):
    """``cfg`` for one student run: its model, method (``name`` or ``name@teaching``) and seed; the teacher
    always given (fidelity), or with ``teachers`` (``[(checkpoint, weight)]``) an online ensemble in its place
    (``distill.teachers``: the student learns, and fidelity compares with, the weighted mixture)."""
    from noisystudent.config import to_dict
    from pipelines.config import config_from_dict

    d = to_dict(cfg)
    rung = dict(d["student"]["ladder"][0], name=student)
    d["student"]["ladder"] = [rung]
    d["seed"] = seed
    name, mode = split_variant(method)
    d["distill"] = {"teacher": str(teacher_ckpt), "method": {"name": name}}
    if mode:
        d["distill"]["teaching"] = {"mode": mode}
    if teachers:
        d["distill"].update(teacher=None, teachers=[{"path": str(p), "weight": w} for p, w in teachers])
    return config_from_dict(d)


def run_student(cfg, root: Path, student: str, method: str, seed: int, teacher_ckpt: Path,
                progress: bool = True, teachers: Optional[list[tuple[Path, float]]] = None,
                folder: Optional[str] = None) -> dict:
    """One ``noisystudent distill`` run in ``root/<student>/<folder>/seed<k>`` (resumable; ``folder``
    defaults to the method's name); its metrics. ``teachers``: see :func:`student_config`."""
    from pipelines import steps
    from pipelines.state import RunDir

    name, mode = split_variant(method)
    run = RunDir(root / student / (folder or (f"{name}@{mode}" if mode else name)) / f"seed{seed}")
    scfg = run.freeze_config(student_config(cfg, student, method, seed, teacher_ckpt, teachers))
    m = steps.distill(run, scfg, progress=progress)
    return {"student": student, "method": method, "seed": seed, "test_acc": m.get("test_acc"),
            "test_fidelity": m.get("test_fidelity"), "teacher_test_acc": m.get("teacher_test_acc"),
            "train_seconds": m.get("train_seconds"), "images_per_s": m.get("images_per_s"),
            "method_params": m.get("method_params"), "dir": str(run.root)}


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (student, method): accuracy and fidelity mean/std over seeds, seconds, the gain over
    the same student's ``supervised`` runs, and whether that gain exceeds the two spreads added."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["student"], r["method"]), []).append(r)
    rows = []
    for (student, method), rs in groups.items():
        acc, acc_sd = mean_std([r["test_acc"] for r in rs])
        fid, fid_sd = mean_std([r["test_fidelity"] for r in rs])
        secs, _ = mean_std([r["train_seconds"] for r in rs])
        rows.append({"student": student, "method": method, "seeds": len(rs), "test_acc": acc, "test_acc_std": acc_sd,
                     "test_fidelity": fid, "test_fidelity_std": fid_sd, "train_seconds": secs})
    base = {r["student"]: r for r in rows if r["method"] == BASELINE}
    for r in rows:
        b = base.get(r["student"])
        if b is None or r["method"] == BASELINE or r["test_acc"] is None:
            r["gain"], r["beats_baseline"] = None, None
            continue
        r["gain"] = r["test_acc"] - b["test_acc"]
        r["beats_baseline"] = beats_baseline(r["gain"], r["test_acc_std"], r["seeds"], b["test_acc_std"], b["seeds"])
    order = {m: i for i, m in enumerate(dict.fromkeys(METHODS + ONLINE))}
    rows.sort(key=lambda r: (r["student"], order.get(r["method"], len(order)), r["method"]))
    return rows


def format_table(rows: list[dict], teacher: dict) -> str:
    def pm(m, s, scale=100):
        return "-" if m is None else f"{scale * m:.2f} ± {scale * s:.2f}"

    head = ["student", "method", "seeds", "test acc %", "vs supervised", "beats by > spread", "fidelity %", "seconds"]
    body = [[r["student"], r["method"], str(r["seeds"]), pm(r["test_acc"], r["test_acc_std"]),
             "-" if r["gain"] is None else f"{100 * r['gain']:+.2f}",
             "-" if r["beats_baseline"] is None else ("yes" if r["beats_baseline"] else "no"),
             pm(r["test_fidelity"], r["test_fidelity_std"]),
             "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"] for r in rows]
    lines = text_table(head, body)
    lines.append(f"\nteacher {teacher.get('model')}: test acc {100 * teacher.get('test_acc', float('nan')):.2f}%, "
                 f"{teacher.get('train_seconds', 0):.0f} s (cached in {teacher.get('dir')})")
    return "\n".join(lines)


def plot(rows: list[dict], teacher: dict, path: Path, title: str) -> None:
    """Two panels, test accuracy and fidelity, one bar group per method (mean, error bar = std over seeds);
    dashed: each student's ``supervised`` mean, dotted: the teacher."""
    plt = pyplot()

    rows = [r for r in rows if r["test_acc"] is not None]
    students = sorted({r["student"] for r in rows})
    methods = [m for m in dict.fromkeys(METHODS + ONLINE) if any(r["method"] == m for r in rows)]
    methods += sorted({r["method"] for r in rows} - set(methods))
    width = 0.8 / max(len(students), 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, label in ((axes[0], "test_acc", "test accuracy %"), (axes[1], "test_fidelity", "fidelity to the teacher %")):
        values = []
        for k, student in enumerate(students):
            rs = [r for r in rows if r["student"] == student and r[key] is not None]
            xs = [methods.index(r["method"]) + (k - (len(students) - 1) / 2) * width for r in rs]
            ax.bar(xs, [100 * r[key] for r in rs], width, yerr=[100 * r[f"{key}_std"] for r in rs], capsize=3,
                   label=student, color=f"C{k}")
            values += [100 * r[key] for r in rs]
            base = next((r for r in rs if r["method"] == BASELINE), None)
            if base is not None:
                ax.axhline(100 * base[key], ls="--", lw=1, color=f"C{k}", alpha=0.7)
        if key == "test_acc" and teacher.get("test_acc") is not None:
            ax.axhline(100 * teacher["test_acc"], ls=":", lw=1.2, color="black", label=f"teacher {teacher['model']}")
            values.append(100 * teacher["test_acc"])
        if values:
            ax.set_ylim(max(0.0, min(values) - 2), min(100.0, max(values) + 1))
        ax.set_xticks(range(len(methods)), methods, rotation=25 if len(max(methods, key=len)) > 8 else 0, ha="right"
                      if len(max(methods, key=len)) > 8 else "center", fontsize=8)
        ax.set_ylabel(label + " (mean ± std)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 labels/class, 2-3 epochs, 1 seed, 1,000 test images")
    ap.add_argument("--part", choices=sorted(PARTS), default="feature",
                    help="which rows: feature (%s) or online (%s)" % (", ".join(METHODS), ", ".join(ONLINE)))
    ap.add_argument("--methods", default=None, help="comma-separated methods, name or name@teaching (default: the part's)")
    ap.add_argument("--students", default="resnet8", help="comma-separated student models (e.g. resnet8,wrn_16_2)")
    ap.add_argument("--teacher", default="resnet26", help="teacher model (default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default: 3; 1 with --quick)")
    ap.add_argument("--run-dir", default=None, help="student runs (default: runs/bench_kd, runs/bench_kd_quick)")
    ap.add_argument("--cache-dir", default="runs/cache", help="where the teacher is cached (default: %(default)s)")
    ap.add_argument("--out", default=None, help="JSON and figure stem (default: docs/bench-kd, bench/results/bench-kd-quick)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 on a busy machine)")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = ap.parse_args(argv)

    import torch

    from noisystudent.distill import list_methods
    from noisystudent.errors import UserError

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    seeds = args.seeds or sizes.seeds
    methods = [m.strip() for m in (args.methods or ",".join(PARTS[args.part])).split(",") if m.strip()]
    unknown = [m for m in methods if split_variant(m)[0] not in list_methods()]
    if unknown:
        raise SystemExit(f"error: --methods: unknown method {unknown[0]!r}; known: {', '.join(list_methods())}")
    from noisystudent.distill.teaching import MODES

    bad = [m for m in methods if "@" in m and m.partition("@")[2] not in MODES]
    if bad:
        raise SystemExit(f"error: --methods: unknown teaching setting in {bad[0]!r}; known: {', '.join(MODES)}")
    students = [s.strip() for s in args.students.split(",") if s.strip()]
    root = Path(args.run_dir or ("runs/bench_kd_quick" if args.quick else "runs/bench_kd"))
    suffix = "" if args.part == "feature" else f"-{args.part}"
    stem = Path(args.out or (f"bench/results/bench-kd{suffix}-quick" if args.quick else f"docs/bench-kd{suffix}"))
    t0 = time.perf_counter()
    progress = not args.quiet
    try:
        cfg = base_config(sizes, args.teacher, args.device)
        ckpt, tm = train_teacher(cfg, args.cache_dir, progress=progress)
        teacher = {"model": tm.get("model"), "test_acc": tm.get("test_acc"), "train_seconds": tm.get("train_seconds"),
                   "epochs": tm.get("epochs"), "dir": tm["dir"]}
        runs, skipped = [], []
        for seed in range(seeds):  # seed-major: an interrupted benchmark has every method at the same seeds
            for student in students:
                for method in methods:
                    try:
                        runs.append(run_student(cfg, root, student, method, seed, ckpt, progress=progress))
                    except (UserError, FloatingPointError) as exc:  # FSP between unlike models, a diverged loss
                        skipped.append({"student": student, "method": method, "seed": seed, "reason": str(exc)})
                        print(f"[bench-kd] {student} {method} seed {seed} skipped: {exc}")
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    rows = summarise(runs)
    table = format_table(rows, teacher)
    print()
    print(table)
    for s in {(x["student"], x["method"]): x for x in skipped}.values():
        print(f"{s['student']} {s['method']}: skipped ({s['reason']})")
    wall = time.perf_counter() - t0
    print(f"\nwall time of this call: {wall:.0f} s (runs in {root}; finished runs are read back, not retrained)")
    result = {
        "protocol": "Sarfraz et al. ICPR 2020: teacher and students train on the same labeled images; one cached "
                    "teacher; every method at the same student budget",
        "part": args.part, "config": CONFIG, "sizes": sizes.__dict__ | {"seeds": seeds}, "labeled_images": 10 * sizes.labels_per_class,
        "batch_size": cfg.student.train.batch_size, "teacher": teacher, "students": students, "methods": methods,
        "rows": rows, "runs": runs, "skipped": skipped, "wall_seconds_this_call": wall,
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    from noisystudent.io import write_json

    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), result)
    title = (f"Fashion-MNIST, {10 * sizes.labels_per_class} labels (a {cfg.data.val_fraction:g} validation split held out), students {sizes.student_epochs} epochs, "
             f"{seeds} seed(s); teacher {teacher['model']} {100 * (teacher['test_acc'] or 0):.2f}%")
    plot(rows, teacher, stem.with_suffix(".png"), title)
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
