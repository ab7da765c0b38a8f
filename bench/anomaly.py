"""STPM anomaly detection on Fashion-MNIST: one detector per class, synthetic defects with masks, other classes.

``make bench-anomaly`` (= ``python -m bench.anomaly``), no download: a classifier teacher is trained on the
Fashion-MNIST training set (clean images, all ten classes) and cached; then, for each class taken as
"normal", an STPM student (the teacher's architecture, random init) trains on that class's training
images alone (``noisystudent anomaly train``'s code path, one run folder per class, resumable), its
threshold is set at a 5 % false-positive rate on 10 % held-out training images of the class, and its test
set is scored on Ray Data (``noisystudent anomaly score``'s code path, maps stored):

- ``good/``: half of the class's 1,000 test images, clean;
- ``defect/``: the other half with one synthetic defect each (scratch, blotch or a patch cut from another
  training image of the class, in turn; :mod:`noisystudent.anomaly.defects`), with its mask;
- ``other/``: ``other_per_class`` test images of each other class (semantic anomalies).

Reported per class and as the mean: image AUROC of defects vs good, image AUROC of other classes vs
good, pixel AUROC over the good and defective images against the masks, and the flag rates at the
threshold (FPR on the clean test images, TPR of defects and of other classes). Measured figures, time and
the MVTec AD reference figures: ``docs/benchmarks.md`` (bench-anomaly).

Sizes: a ResNet-14 teacher, 3 epochs on all 60,000 training images;
students 5 epochs on 5,400 images a class; 100 test images of each other class. ``--quick`` (a few
minutes): a ResNet-8 teacher, 1 epoch on 12,000 images, classes 0 and 1, 2,000 training images a class,
2 student epochs, 30 images of each other class; it writes under ``bench/results/`` unless ``--out`` says
otherwise. Output: a table, ``docs/bench-anomaly.json``, ``docs/bench-anomaly.png`` (AUROC per class and
maps over test images of the first class) and each class's HTML report (``<run>/class-K/scores/report``).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from bench.cache import teacher_dir, trained_teacher
from bench.harness import pyplot, save_figure, text_table

FMNIST = "/usr/share/datasets/fashion-mnist"
REFERENCE = ("MVTec AD, a different data set: STPM paper mean pixel AUROC 0.970, image AUROC 0.955; anomalib STFPM "
             "(ResNet-18) image 0.893, pixel 0.951")


@dataclass(frozen=True)
class Sizes:
    name: str
    teacher_model: str
    teacher_epochs: int
    teacher_per_class: int  # training images per class for the teacher (6000: all)
    classes: tuple[int, ...]
    student_epochs: int
    train_limit: Optional[int]  # training images of the normal class (after the validation split)
    other_per_class: int  # test images of each other class


FULL = Sizes("full", "resnet14", 3, 6000, tuple(range(10)), 5, None, 100)
QUICK = Sizes("quick", "resnet8", 1, 1200, (0, 1), 2, 2000, 30)


def teacher_config(sizes: Sizes, device: str, root: str):
    from pipelines.config import config_from_dict

    return config_from_dict({
        "name": "bench_anomaly_teacher", "device": device, "seed": 0,
        "data": {"kind": "fashion_mnist", "root": root, "labels_per_class": sizes.teacher_per_class, "val_fraction": 0.0,
                 "test_limit": 2000},
        "teacher": {"name": sizes.teacher_model, "noise": {"randaugment_n": 0}},
        "teacher_train": {"epochs": sizes.teacher_epochs, "batch_size": 128, "lr": 0.1, "num_workers": 0,
                          "eval_every": 1000},
        "ray": {"workers": 0},
    })


def train_teacher(sizes: Sizes, device: str, root: str, cache: Path, progress: bool) -> tuple[Path, dict]:
    """The classifier teacher, trained once on clean training images and cached (resumable)."""
    key = {"model": sizes.teacher_model, "epochs": sizes.teacher_epochs, "per_class": sizes.teacher_per_class}
    folder = teacher_dir(cache, "anomaly", sizes.teacher_model, sizes.teacher_epochs, key)
    ckpt, m = trained_teacher(teacher_config(sizes, device, root), folder, progress=progress)
    return ckpt, {k: m.get(k) for k in ("model", "test_acc", "train_seconds", "dir")}


def detector_config(sizes: Sizes, c: int, teacher: Path, device: str, root: str):
    from noisystudent.data.fashion_mnist import CLASSES
    from pipelines.anomaly.config import anomaly_config_from_dict

    return anomaly_config_from_dict({
        "name": f"fmnist-{c}", "device": device, "seed": 0,
        "data": {"kind": "fashion_mnist", "root": root, "normal_class": CLASSES[c], "val_fraction": 0.1,
                 "train_limit": sizes.train_limit},
        "teacher": {"checkpoint": str(teacher)},
        "stpm": {"stages": [0, 1, 2], "combine": "product"},
        "train": {"epochs": sizes.student_epochs, "batch_size": 32, "lr": 0.4, "momentum": 0.9, "weight_decay": 1e-4,
                  "num_workers": 0, "eval_every": 1000},
        "threshold": {"fpr": 0.05},
        "score": {"batch_size": 256, "chunk_size": 1024, "num_actors": 1},
        "ray": {"workers": 0},
    })


def test_set(sizes: Sizes, c: int, root: str):
    """``(source, masks by image id, kinds by image id)``: good/, defect/ and other/ images of class ``c``."""
    from noisystudent.anomaly import make_defects
    from noisystudent.data.array import ArraySource
    from noisystudent.data.fashion_mnist import CLASSES, load_fashion_mnist

    x, y = load_fashion_mnist(root, "test")
    x_train, y_train = load_fashion_mnist(root, "train")
    rng = np.random.default_rng(1000 + c)
    own = rng.permutation(np.flatnonzero(y == c))
    good, bad = own[: len(own) // 2], own[len(own) // 2:]
    donors = x_train[np.flatnonzero(y_train == c)[:500]]
    defective, masks, kinds = make_defects(x[bad], rng, donors=donors)
    others = np.concatenate([rng.choice(np.flatnonzero(y == k), sizes.other_per_class, replace=False)
                             for k in range(10) if k != c])
    ids = ([f"good/test-{i:05d}" for i in good] + [f"defect/{k}-{i:05d}" for k, i in zip(kinds, bad)]
           + [f"other/{CLASSES[int(y[i])].replace('/', '_')}-{i:05d}" for i in others])
    images = np.concatenate([x[good], defective, x[others]])
    mask_of = {f"defect/{k}-{i:05d}": m for k, i, m in zip(kinds, bad, masks)}
    return ArraySource(images, ids=ids, in_chans=1), mask_of


def evaluate(score_dir: Path, threshold: float, masks: dict[str, np.ndarray]) -> dict:
    from noisystudent.anomaly import auroc, decode_map, pixel_auroc
    from pipelines.anomaly.score import read_scores

    df = read_scores(score_dir, maps=True)
    group = df["image_id"].str.split("/").str[0].to_numpy()
    s = df["score"].to_numpy(np.float64)
    good, defect, other = group == "good", group == "defect", group == "other"

    def vs_good(sel: np.ndarray) -> Optional[float]:
        keep = good | sel
        return auroc(sel[keep], s[keep])

    kinds = df["image_id"].str.extract(r"^defect/(\w+)-")[0].to_numpy()
    px = np.flatnonzero(good | defect)
    maps = np.stack([decode_map(df["map"].iloc[k], (28, 28)) for k in px])
    ms = np.stack([masks.get(df["image_id"].iloc[k], np.zeros((28, 28), np.uint8)) for k in px])
    flagged = s > threshold
    return {
        "image_auroc_defects": vs_good(defect),
        "image_auroc_other_classes": vs_good(other),
        "pixel_auroc": pixel_auroc(maps, ms),
        "image_auroc_by_defect": {k: vs_good(kinds == k) for k in sorted(set(kinds[defect]))},
        "fpr_test_normals": float(flagged[good].mean()),
        "tpr_defects": float(flagged[defect].mean()),
        "tpr_other_classes": float(flagged[other].mean()),
        "test_images": {"good": int(good.sum()), "defect": int(defect.sum()), "other": int(other.sum())},
    }


def run_class(sizes: Sizes, c: int, teacher: Path, root: Path, device: str, data_root: str, progress: bool) -> dict:
    from noisystudent.data.fashion_mnist import CLASSES
    from pipelines.anomaly.report import build_anomaly_report
    from pipelines.anomaly.score import score_images
    from pipelines.anomaly.train import train_detector

    run = root / f"class-{c}"
    t0 = time.perf_counter()
    rec = train_detector(detector_config(sizes, c, teacher, device, data_root), run, progress=progress)
    t_train = time.perf_counter() - t0
    source, masks = test_set(sizes, c, data_root)
    t0 = time.perf_counter()
    summary = score_images(run, source, run / "scores", save_maps=True, progress=progress)
    t_score = time.perf_counter() - t0
    report = build_anomaly_report(run / "scores", source=source, masks=masks)
    row = {"class": c, "name": CLASSES[c], "threshold": rec["threshold"], "val_images": rec["val_images"],
           "train_images": rec["train"].get("labeled_images"), "epochs": rec["train"].get("epochs"),
           "train_seconds": rec["train"].get("train_seconds"), "wall_train_this_call": t_train,
           "score_images_per_s": summary.get("throughput_images_per_s"), "wall_score_this_call": t_score,
           "report": str(report), "run_dir": str(run)}
    row.update(evaluate(run / "scores", rec["threshold"], masks))
    return row


KEYS = ("image_auroc_defects", "image_auroc_other_classes", "pixel_auroc", "fpr_test_normals", "tpr_defects",
        "tpr_other_classes")


def mean_row(rows: list[dict]) -> dict:
    out = {"class": "mean", "name": "mean"}
    for k in KEYS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def format_table(rows: list[dict]) -> str:
    head = ["class", "AUROC defects", "AUROC other classes", "pixel AUROC", "FPR@thr", "TPR defects", "TPR other",
            "train imgs", "train s"]

    def f(v, d=3):
        return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))

    lines = [[r["name"], f(r["image_auroc_defects"]), f(r["image_auroc_other_classes"]), f(r["pixel_auroc"]),
              f(r["fpr_test_normals"]), f(r["tpr_defects"]), f(r["tpr_other_classes"]), f(r.get("train_images")),
              f(r.get("train_seconds"), 0)] for r in rows]
    return "\n".join(text_table(head, lines))


def plot(rows: list[dict], example: Optional[dict], path: Path, title: str) -> None:
    """AUROC bars per class (defects, other classes, pixels) and, below, maps over the first class's images."""
    plt = pyplot()

    from pipelines.anomaly.report import overlay

    per_class = [r for r in rows if r["class"] != "mean"]
    n_ex = len(example["images"]) if example else 0
    fig = plt.figure(figsize=(11, 4.2 + (2.0 if n_ex else 0)))
    gs = fig.add_gridspec(2 if n_ex else 1, max(n_ex, 1), height_ratios=[2.2, 1] if n_ex else [1])
    ax = fig.add_subplot(gs[0, :])
    names = [r["name"] for r in per_class] + ["mean"]
    xs = np.arange(len(names))
    for k, (key, label) in enumerate((("image_auroc_defects", "image AUROC, synthetic defects"),
                                      ("image_auroc_other_classes", "image AUROC, other classes"),
                                      ("pixel_auroc", "pixel AUROC, defect masks"))):
        vals = [r[key] if r[key] is not None else np.nan for r in per_class] + [mean_row(per_class)[key] or np.nan]
        ax.bar(xs + (k - 1) * 0.26, vals, 0.26, label=label, color=f"C{k}")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("AUROC")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    for j in range(n_ex):
        a = fig.add_subplot(gs[1, j])
        overlay(a, example["images"][j], example["maps"][j], example["scale"], example["masks"][j])
        a.set_title(example["titles"][j], fontsize=7, color="#c00" if "FLAG" in example["titles"][j] else "black")
    fig.tight_layout()
    save_figure(fig, path)


def example_maps(row: dict, source_masks, per_group: int = 3) -> dict:
    """Images of the first class with their maps: clean, each defect kind, another class."""
    from noisystudent.anomaly import decode_map
    from pipelines.anomaly.score import read_scores

    source, masks = source_masks
    df = read_scores(Path(row["run_dir"]) / "scores", maps=True).set_index("image_id")
    wanted = []
    for prefix in ("good/", "defect/scratch", "defect/blotch", "defect/patch", "other/"):
        ids = [i for i in df.index if i.startswith(prefix)]
        wanted += ids[: (per_group if prefix == "good/" else 1 if prefix.startswith("defect") else 2)]
    pos = source.positions(wanted)
    return {"images": [source.load(int(p))[:, :, 0] for p in pos],
            "maps": [decode_map(df.loc[i, "map"], (28, 28)) for i in wanted],
            "masks": [masks.get(i) for i in wanted], "scale": row["threshold"],
            "titles": [f"{i.split('/')[0] if i.startswith(('good', 'other')) else i.split('/')[1].split('-')[0]}\n"
                       f"{df.loc[i, 'score']:.2g}" + (" FLAG" if df.loc[i, "flagged"] else "") for i in wanted]}


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: 2 classes, a small teacher, 2 student epochs")
    ap.add_argument("--classes", default=None, help="comma-separated class indices (default: all 10; 0,1 with --quick)")
    ap.add_argument("--student-epochs", type=int, default=None, help="override the students' epochs")
    ap.add_argument("--run-dir", default=None, help="run folders (default: runs/bench_anomaly, runs/bench_anomaly_quick)")
    ap.add_argument("--cache-dir", default="runs/cache", help="where the teacher is cached (default: %(default)s)")
    ap.add_argument("--out", default=None, help="JSON and figure stem (default: docs/bench-anomaly, "
                                                "bench/results/bench-anomaly-quick)")
    ap.add_argument("--data-root", default=os.environ.get("NOISYSTUDENT_FMNIST", FMNIST))
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 on a busy machine)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    args = ap.parse_args(argv)

    import dataclasses

    import torch

    from noisystudent.errors import UserError, show_warnings_as_lines
    from pipelines.ray_runtime import init_ray

    show_warnings_as_lines()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    if args.classes:
        sizes = dataclasses.replace(sizes, classes=tuple(int(c) for c in args.classes.split(",")))
    if args.student_epochs:
        sizes = dataclasses.replace(sizes, student_epochs=args.student_epochs)
    root = Path(args.run_dir or ("runs/bench_anomaly_quick" if args.quick else "runs/bench_anomaly"))
    stem = Path(args.out or ("bench/results/bench-anomaly-quick" if args.quick else "docs/bench-anomaly"))
    progress = not args.quiet
    t0 = time.perf_counter()
    try:
        init_ray(None, quiet=args.quiet)
        ckpt, teacher = train_teacher(sizes, args.device, args.data_root, Path(args.cache_dir), progress)
        rows = []
        for c in sizes.classes:
            rows.append(run_class(sizes, c, ckpt, root, args.device, args.data_root, progress))
            print(f"[bench-anomaly] class {c} ({rows[-1]['name']}): AUROC defects {rows[-1]['image_auroc_defects']:.3f}, "
                  f"other classes {rows[-1]['image_auroc_other_classes']:.3f}, pixel {rows[-1]['pixel_auroc']:.3f}", flush=True)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    mean = mean_row(rows)
    table = format_table(rows + [mean])
    print()
    print(table)
    print(f"\nteacher {teacher['model']}: test accuracy {teacher['test_acc']:.4f} on 2,000 test images")
    print(f"reference ({REFERENCE})")
    wall = time.perf_counter() - t0
    print(f"wall time of this call: {wall:.0f} s (runs in {root}; finished runs are read back, not retrained)")
    result = {"mode": sizes.name, "sizes": asdict(sizes), "teacher": teacher, "rows": rows, "mean": mean,
              "reference": REFERENCE, "wall_seconds_this_call": wall, "cpus": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "command": "python -m bench.anomaly" + (" --quick" if args.quick else "")}
    from noisystudent.io import write_json

    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), result)
    example = example_maps(rows[0], test_set(sizes, rows[0]["class"], args.data_root)) if rows else None
    title = (f"STPM on Fashion-MNIST ({sizes.name} mode: teacher {teacher['model']} {sizes.teacher_epochs} ep, students "
             f"{sizes.student_epochs} ep); maps: class {rows[0]['name'] if rows else '-'} (colour: sqrt(map / threshold), "
             "white: defect mask, red: flagged)")
    plot(rows + [mean], example, stem.with_suffix(".png"), title)
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
