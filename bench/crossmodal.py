"""Cross-modal distillation on Fashion-MNIST pairs: an image teacher teaches a student that never sees the image.

``make bench-crossmodal`` (= ``python -m bench.crossmodal``). Every Fashion-MNIST item becomes a pair of
two modalities written to disk as a paired manifest (docs/crossmodal.md): ``image`` (the 28 x 28 picture)
and ``profile``, a 2 x 28 signal, the image's row and column mean intensities. The profile is genuinely
weaker (a sandal's and a sneaker's profiles are much alike) and is the only thing the student reads, with
a 1-D CNN (``signal_cnn_s``). Per seed, all through the product's code paths on their own run folders:

- ``teacher``: ResNet-8 on the labeled *images* (the loop's generation-0 teacher);
- ``profile alone``: the student on the labeled *profiles* only (``distill`` with method ``supervised``);
- ``distill``: the student taught online by the image teacher, Hinton's loss over the labeled pairs and
  ``unlabeled_ratio`` unlabeled pairs per labeled one (``distill``, teacher.modality image);
- ``loop``: one Noisy Student generation: the teacher labels the unlabeled pairs on their images (Parquet),
  the student trains on their profiles from those labels joined by ``image_id``.

Every student has the same step budget. Prints a table (test accuracy mean ± std over seeds, gain over
``profile alone``, whether it beats the two seed spreads added: :func:`bench.harness.beats_baseline`), and
writes ``docs/bench-crossmodal.json`` / ``.png``. ``--quick`` (a few minutes: 50 labels a class, 3,000
unlabeled pairs, 1,000 test items, short budgets, 1 seed) writes under ``bench/results/`` instead.
A killed run resumes: finished run folders are read back.
"""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from bench.harness import beats_baseline, load_average, mean_std, pyplot, save_figure

FMNIST = "/usr/share/datasets/fashion-mnist"
ARMS = ("profile alone", "distill", "loop")


@dataclass(frozen=True)
class Sizes:
    labels_per_class: int
    unlabeled: int
    test: int
    teacher_steps: int
    student_steps: int
    seeds: int


FULL = Sizes(labels_per_class=100, unlabeled=20_000, test=5_000, teacher_steps=1_500, student_steps=1_500, seeds=2)
QUICK = Sizes(labels_per_class=50, unlabeled=3_000, test=1_000, teacher_steps=200, student_steps=200, seeds=1)


def profile(image: np.ndarray) -> np.ndarray:
    """The 2 x 28 profile of a 28 x 28 image: row means, then column means (uint8)."""
    return np.stack([image.mean(1), image.mean(0)]).round().astype(np.uint8)


def write_pairs(root: Path, sizes: Sizes) -> dict[str, str]:
    """``labeled``/``unlabeled``/``test`` paired manifests of Fashion-MNIST under ``root`` (written once:
    ``_SUCCESS`` last). The labeled and unlabeled items are disjoint draws from the training split (seed 0)."""
    import pandas as pd
    from PIL import Image

    from noisystudent.data import load_fashion_mnist
    from noisystudent.io import atomic_path

    names = {k: str(root / f"{k}.csv") for k in ("labeled", "unlabeled", "test")}
    if (root / "_SUCCESS").is_file():
        return names
    rng = np.random.default_rng(0)
    x_tr, y_tr = load_fashion_mnist(FMNIST, "train")
    x_te, y_te = load_fashion_mnist(FMNIST, "test")
    lab = np.concatenate([rng.choice(np.flatnonzero(y_tr == c), sizes.labels_per_class, replace=False) for c in range(10)])
    rest = np.setdiff1d(np.arange(len(y_tr)), lab)
    parts = {"labeled": (x_tr, y_tr, np.sort(lab), True), "test": (x_te, y_te, np.sort(rng.choice(len(y_te), sizes.test, replace=False)), True),
             "unlabeled": (x_tr, y_tr, np.sort(rng.choice(rest, sizes.unlabeled, replace=False)), False)}
    for mod in ("image", "profile"):
        (root / mod).mkdir(parents=True, exist_ok=True)
    for part, (xs, ys, idx, labeled) in parts.items():
        rows = []
        split = "test" if part == "test" else "train"
        for i in idx:
            iid = f"{split}-{i:05d}"
            Image.fromarray(xs[i]).save(root / "image" / f"{iid}.png")
            Image.fromarray(profile(xs[i])).save(root / "profile" / f"{iid}.png")
            rows.append({"image_id": iid, "image": f"image/{iid}.png", "profile": f"profile/{iid}.png",
                         "label": int(ys[i])})  # unlabeled: hidden labels, for pseudo-label accuracy only
        with atomic_path(names[part]) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    (root / "_SUCCESS").write_text("")
    return names


def profile_stats(manifest: str) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of the labeled profiles: the profile modality's normalisation."""
    import pandas as pd
    from PIL import Image

    base = Path(manifest).parent
    arr = np.stack([np.asarray(Image.open(base / p)) for p in pd.read_csv(manifest)["profile"]]).astype(np.float64) / 255
    return arr.mean((0, 2)).tolist(), arr.std((0, 2)).tolist()


def config(pairs: dict[str, str], sizes: Sizes, seed: int, device: str):
    from pipelines.config import config_from_dict

    mean, std = profile_stats(pairs["labeled"])
    train = {"epochs": 10, "batch_size": 64, "lr": 0.05, "warn_below_steps": 0, "eval_every": 1000}
    return config_from_dict({
        "name": "bench_crossmodal", "seed": seed, "device": device,
        "data": {"kind": "paired", **{k: pairs[k] for k in ("labeled", "unlabeled", "test")},
                 "modalities": {"image": {"kind": "image", "channels": 1, "size": 28, "mean": [0.286], "std": [0.353]},
                                "profile": {"kind": "signal", "channels": 2, "size": 28, "mean": mean, "std": std,
                                            "noise": {"randaugment_n": 0, "hflip": False, "crop_padding": 1}}}},
        "teacher": {"name": "resnet8", "modality": "image", "noise": {"randaugment_n": 2, "randaugment_m": 9}},
        "teacher_train": {**train, "total_steps": sizes.teacher_steps},
        "student": {"modality": "profile", "generations": 1, "promote": "always", "ratio": 3,
                    "ladder": [{"name": "signal_cnn_s", "drop_rate": 0.1}],
                    "train": {**train, "total_steps": sizes.student_steps}},
        "distill": {"method": {"name": "hinton"}, "unlabeled_ratio": 3.0},
        "ray": {"workers": 0},
    })


def run_seed(pairs: dict[str, str], sizes: Sizes, seed: int, root: Path, device: str, progress: bool) -> dict:
    """The teacher, the loop's student and the two distill arms of one seed; their test accuracies."""
    import dataclasses

    from noisystudent.io import read_json
    from pipelines import steps
    from pipelines.loop import run_all
    from pipelines.state import RunDir

    cfg = config(pairs, sizes, seed, device)
    loop = RunDir(root / f"seed{seed}" / "loop")
    run_all(cfg, loop.root, progress=progress, tracking=None)
    teacher = read_json(loop.teacher_dir() / "metrics.json")
    student = read_json(loop.student_dir(1) / "metrics.json")
    labels = read_json(loop.labels_dir(1) / "summary.json")
    out = {"seed": seed, "teacher": teacher["test_acc"], "loop": student["test_acc"],
           "pseudo_label_acc": labels.get("pseudo_label_accuracy")}
    ckpt = str(loop.teacher_dir() / "model.pt")
    for arm, method in (("profile alone", {"name": "supervised"}), ("distill", cfg.distill.method)):
        d = dataclasses.replace(cfg.distill, teacher=ckpt, method=method,
                                unlabeled_ratio=cfg.distill.unlabeled_ratio if arm == "distill" else 0.0)
        run = RunDir(root / f"seed{seed}" / arm.replace(" ", "_"))
        m = steps.distill(run, run.freeze_config(dataclasses.replace(cfg, distill=d)), progress=progress)
        out[arm] = m["test_acc"]
        if arm == "distill":
            out["distill_fidelity"] = m.get("test_fidelity")
    return out


def summarise(runs: list[dict]) -> list[dict]:
    def ms(key):
        return mean_std(r[key] for r in runs)

    rows = [{"arm": "teacher (image)", "reads": "image", "acc": ms("teacher")[0], "std": ms("teacher")[1]}]
    base, base_sd = ms("profile alone")
    for arm in ARMS:
        acc, sd = ms(arm)
        gain = None if arm == "profile alone" else acc - base
        rows.append({"arm": arm, "reads": "profile", "acc": acc, "std": sd, "gain": gain,
                     "beats": None if gain is None else beats_baseline(gain, sd, len(runs), base_sd, len(runs))})
    return rows


def format_table(rows: list[dict], seeds: int) -> str:
    lines = [f"{'arm':18} {'reads':8} {'test acc % (' + str(seeds) + ' seeds)':24} {'vs profile alone':17} beats by > spread"]
    for r in rows:
        gain = r.get("gain")
        lines.append(f"{r['arm']:18} {r['reads']:8} {100 * r['acc']:6.2f} ± {100 * r['std']:<14.2f} "
                     f"{'-' if gain is None else f'{100 * gain:+.2f}':17} "
                     f"{'-' if r.get('beats') is None else ('yes' if r['beats'] else 'no')}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = range(len(rows))
    ax.bar(xs, [100 * r["acc"] for r in rows], yerr=[100 * r["std"] for r in rows], capsize=4,
           color=["black"] + [f"C{k}" for k in range(len(rows) - 1)])
    ax.set_xticks(list(xs), [f"{r['arm']}\n({r['reads']})" for r in rows], fontsize=8)
    ax.set_ylabel("test accuracy % (mean ± std)")
    lo = min(100 * r["acc"] for r in rows)
    ax.set_ylim(max(0, lo - 10), 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(textwrap.fill(title, 80), fontsize=9)  # the long title fits the figure's width
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run of a few minutes (writes under bench/results/)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default: 2; 1 with --quick)")
    ap.add_argument("--run-dir", default=None, help="default: runs/bench_crossmodal[_quick]")
    ap.add_argument("--out", default=None, help="JSON and figure stem (default: docs/bench-crossmodal)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from noisystudent.errors import UserError
    from noisystudent.io import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    seeds = args.seeds or sizes.seeds
    root = Path(args.run_dir or ("runs/bench_crossmodal_quick" if args.quick else "runs/bench_crossmodal"))
    stem = Path(args.out or ("bench/results/bench-crossmodal-quick" if args.quick else "docs/bench-crossmodal"))
    t0 = time.perf_counter()
    try:
        pairs = write_pairs(root / "pairs", sizes)
        runs = [run_seed(pairs, sizes, s, root, args.device, not args.quiet) for s in range(seeds)]
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    rows = summarise(runs)
    table = format_table(rows, seeds)
    wall = time.perf_counter() - t0
    print("\n" + table + f"\n\nwall {wall:.0f} s, load average {load_average()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads")
    result = {"sizes": sizes.__dict__ | {"seeds": seeds}, "rows": rows, "runs": runs, "wall_seconds_this_call": wall,
              "load_average_end": load_average(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "modalities": "image: 28x28 Fashion-MNIST picture (teacher); profile: 2x28 row and column means (student)"}
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), result)
    plot(rows, stem.with_suffix(".png"), f"Fashion-MNIST pairs: {10 * sizes.labels_per_class} labels, {sizes.unlabeled:,} "
         f"unlabeled pairs, {seeds} seed(s); ResNet-8 image teacher, signal_cnn_s profile student")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
