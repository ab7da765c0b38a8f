"""A study on Ray Tune: distillation under label noise on Fashion-MNIST.

``make bench-study`` (= ``python -m bench.study``) runs ``configs/study_fashion_mnist.yaml`` (no teacher,
Hinton KD and FitNet on a ResNet-8 at symmetric label noise 0 and 0.4, 2 seeds; one ResNet-20 teacher
per noise level, trained on the same noisy labels) into ``runs/bench_study`` and prints the summary over
seeds. It is an ordinary study: a killed benchmark resumes when run again (finished trials are kept).
Measured figures: ``docs/benchmarks.md`` (bench-study). ``--report-only`` redraws ``docs/bench-study.json`` and
``.png`` from the study folder. ``--quick`` is a smoke run of a
few minutes (20 labels a class, 1 epoch of a few steps, 500 test images) into ``bench/results/study``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import yaml

from bench.harness import beats_baseline
from noisystudent.io import read_json

STUDY = Path("configs/study_fashion_mnist.yaml")
QUICK_SET = {"data.labels_per_class": 20, "data.test_limit": 500, "teacher.name": "resnet8",
             "teacher_train.epochs": 1, "teacher_train.total_steps": 4, "teacher_train.warn_below_steps": 0,
             "student.train.epochs": 1, "student.train.total_steps": 4, "student.train.warn_below_steps": 0}


def teachers(study_dir: Path) -> list[dict]:
    """One row per data condition's teacher: its label-noise rate, imbalance ratio and test accuracy."""
    out = []
    for d in sorted((study_dir / "teachers").glob("*")):
        mfile, cond = d / "gen-0" / "teacher" / "metrics.json", d / "data_conditions.json"
        if mfile.is_file():
            m = read_json(mfile)
            summary = read_json(cond) if cond.is_file() else {}
            noise, imbalance = summary.get("label_noise") or {}, summary.get("imbalance") or {}
            out.append({"key": d.name, "label_noise": noise.get("rate", 0.0), "flipped": noise.get("flipped", 0),
                        "imbalance_ratio": imbalance.get("ratio"), "train_images": summary.get("train_images"),
                        "model": m.get("model"), "test_acc": m.get("test_acc")})
    return out


def teacher_condition(t: dict) -> tuple[str, float]:
    """A teacher row's data condition, in :func:`_condition`'s terms (so trials find their teacher)."""
    if t.get("imbalance_ratio") is not None:
        return "imbalance ratio", float(t["imbalance_ratio"])
    if float(t.get("label_noise") or 0.0) > 0:
        return "label noise", float(t["label_noise"])
    return "no data condition", 0.0


def gains(rows: list[dict]) -> list[dict]:
    """Each method's mean gain over ``supervised`` in the same data condition (label noise, imbalance ratio or
    none), and whether it beats it (:func:`bench.harness.beats_baseline`, bench-kd's verdict). Methods are named
    as in the figure (:func:`_method`: ``rkd-distance`` for a method mapping with a mode)."""
    from bench.harness import mean_std

    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("status") == "done" and r.get("test_acc") is not None:
            groups.setdefault((_condition(r), _method(r)), []).append(float(r["test_acc"]))
    out = []
    for (cond, method), accs in groups.items():
        base = groups.get((cond, "supervised"))
        if method == "supervised" or not base:
            continue
        (m, sd), (bm, bsd) = mean_std(accs), mean_std(base)
        gain = m - bm
        out.append({"condition": cond[0], "level": cond[1], "label_noise": cond[1] if cond[0] == "label noise" else 0.0,
                    "method": method, "gain": gain,
                    "beyond_spread": beats_baseline(gain, sd, len(accs), bsd, len(base))})
    return sorted(out, key=lambda g: (g["condition"], g["level"], g["method"]))


def _method(r: dict) -> str:
    """A trial's method label: the grid's method name, or a method mapping's name and mode (RKD-D/-A rows)."""
    if r.get("distill.method.name"):
        return str(r["distill.method.name"])
    m = r.get("distill.method") or {}
    return "-".join(str(x) for x in (m.get("name", "base"), m.get("mode")) if x) if isinstance(m, dict) else str(m)


def _condition(r: dict) -> tuple[str, float]:
    """A trial's data condition: label noise or class imbalance (their studies), else none."""
    for key, what in (("data.label_noise.rate", "label noise"), ("data.imbalance.ratio", "imbalance ratio")):
        if r.get(key) is not None:
            return what, float(r[key])
    return "no data condition", 0.0


def condition_text(what: str, level: float) -> str:
    """``label noise 0.2``, ``imbalance ratio 10``, or ``clean labels, balanced classes``."""
    return "clean labels, balanced classes" if what == "no data condition" else f"{what} {level:g}"


def merge(rows: list[dict], study_dir: Path, previous: list[Path]) -> tuple[list[dict], list[dict], list[dict]]:
    """Rows and teachers with an earlier run's JSON (``--merge``): its finished trials stand where this study
    folder has no finished trial of the same id, and its teachers where this folder has none of the same key.
    Why: a study's folder stays on the machine that ran it; a column run elsewhere (or after the folder was
    lost) still completes the documented table without rerunning the finished columns. Returns the rows, the
    teachers and one ``{file, wall_seconds, trials}`` record per merged file (kept in the JSON)."""
    rows, ts = list(rows), teachers(study_dir)
    records = []
    for path in previous:
        doc = json.loads(Path(path).read_text())
        done_here = {r["trial"] for r in rows if r.get("status") == "done"}
        taken = [t for t in doc.get("trials", []) if t.get("status") == "done" and t["trial"] not in done_here]
        ids = {t["trial"] for t in taken}
        rows = [r for r in rows if r["trial"] not in ids] + taken
        keys = {t["key"] for t in ts}
        ts += [t for t in doc.get("teachers", []) if t["key"] not in keys]
        records.append({"file": str(path), "wall_seconds": doc.get("wall_seconds"), "trials": len(taken)})
    return rows, ts, records


def write_docs(study_dir: Path, rows: list[dict], wall_s: Optional[float], out_stem: Path,
               teacher_rows: Optional[list[dict]] = None, merged: Optional[list[dict]] = None) -> dict:
    """``<out_stem>.json`` (trials, the summary over seeds, gains over supervised, teachers) and
    ``<out_stem>.png`` (test accuracy per method and label noise, seeds as points, teachers dashed)."""
    from bench.harness import environment, pyplot, save_figure
    from noisystudent.io import write_json
    from pipelines.study import summary

    table = summary(rows)
    doc = {"study": str(study_dir), "wall_seconds": wall_s, "environment": environment(),
           "teachers": teacher_rows if teacher_rows is not None else teachers(study_dir),
           "summary": table.to_dict(orient="records"), "gains": gains(rows),
           "trials": [{k: v for k, v in r.items() if k != "error" or v} for r in rows]}
    if merged:
        doc["merged"] = merged
    write_json(out_stem.with_suffix(".json"), doc)
    plt = pyplot()
    done = [r for r in rows if r.get("status") == "done"]
    if any(r.get("variant") for r in rows):
        _variant_figure(plt, study_dir, done, doc["teachers"], out_stem)
        return doc
    methods = list(dict.fromkeys(_method(r) for r in done))
    levels = sorted({_condition(r)[1] for r in done})
    what = _condition(done[0])[0] if done else "label noise"
    many = len(methods) > 10  # Sarfraz's 12 methods: a colour each (tab20), the legend beside the axes
    fig, ax = plt.subplots(figsize=(9.5 if many else 7, 4))
    width = 0.8 / max(len(methods), 1)
    labelled: set[str] = set()  # each method in the legend once, from the first condition it has trials in
    for i, m in enumerate(methods):
        for j, lv in enumerate(levels):
            accs = [100 * r["test_acc"] for r in done if _method(r) == m and _condition(r)[1] == lv]
            if not accs:
                continue
            x = j + (i - (len(methods) - 1) / 2) * width
            ax.bar(x, sum(accs) / len(accs), width * 0.9, color=plt.cm.tab20(i) if many else f"C{i}",
                   label=None if m in labelled else m, alpha=0.8)
            labelled.add(m)
            ax.plot([x] * len(accs), accs, "k.", ms=4)
    for j, lv in enumerate(levels):
        # a clean-label teacher is the teacher of noise level 0
        t = [100 * t["test_acc"] for t in doc["teachers"] if t["test_acc"] and
             teacher_condition(t) in ((what, lv), ("no data condition", 0.0) if lv == 0 else None)]
        if t:
            ax.hlines(t[0], j - 0.45, j + 0.45, colors="gray", linestyles="--",
                      label=None if "teacher" in labelled else
                      ("teacher (same noisy labels)" if what == "label noise" else "teacher"))
            labelled.add("teacher")
    ax.set_xticks(range(len(levels)), [condition_text(what, lv) for lv in levels], fontsize=8)
    lo = min([100 * r["test_acc"] for r in done] + [100 * t["test_acc"] for t in doc["teachers"]]) - 2
    hi = max([100 * r["test_acc"] for r in done] + [100 * t["test_acc"] for t in doc["teachers"]]) + 1
    ax.set_ylim(lo, hi)
    ax.set_ylabel("test accuracy % (bars: mean; dots: seeds)")
    ax.set_title("bench-study: ResNet-8 students on Fashion-MNIST (5,000 labels) under symmetric label noise"
                 if what == "label noise" and study_dir.name == "bench_study" else f"{study_dir.name}: test accuracy by method"
                 + (f" and {what}" if what != "no data condition" else ""))
    ax.title.set_fontsize(9)
    if many:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
    else:
        ax.legend(fontsize=8, loc="best")
    save_figure(fig, out_stem.with_suffix(".png"))
    return doc


def _variant_figure(plt, study_dir: Path, done: list[dict], teachers: list[dict], out_stem: Path) -> None:
    """A ``variants:`` study (one factor at a time, e.g. the loop's ingredients): one horizontal bar per
    variant (mean test accuracy; dots: seeds; the mean validation accuracy, on which rows are decided, written
    beside it), the teacher dashed."""
    from bench.harness import save_figure

    names = list(dict.fromkeys(r["variant"] for r in done))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.6))
    for i, name in enumerate(names):
        rs = [r for r in done if r["variant"] == name]
        accs = [100 * r["test_acc"] for r in rs]
        vals = [100 * r["val_acc"] for r in rs if r.get("val_acc") is not None]
        ax.barh(i, sum(accs) / len(accs), 0.7, color="C0" if name == "base" else "C1", alpha=0.8)
        ax.plot(accs, [i] * len(accs), "k.", ms=5)
        if vals:
            ax.text(max(accs) + 0.1, i, f"val {sum(vals) / len(vals):.1f}", va="center", fontsize=7)
    allv = [100 * r["test_acc"] for r in done] + [100 * t["test_acc"] for t in teachers if t.get("test_acc")]
    if teachers and teachers[0].get("test_acc"):
        ax.axvline(100 * teachers[0]["test_acc"], color="gray", ls="--", label="generation-0 teacher")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(min(allv) - 1.5, max(allv) + 1.5)
    ax.set_xlabel("test accuracy % after one generation (bars: mean; dots: seeds)")
    ax.set_title(f"{study_dir.name}: one ingredient changed per row", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_stem.with_suffix(".png"))


def default_stem(study: Path, quick: bool = False) -> str:
    """The JSON and figure stem when ``--out`` is not given: ``docs/bench-study`` for the default study, else
    the study file's name without its ``study_`` / ``sarfraz_`` prefixes, dashed
    (``configs/study_sarfraz_noise.yaml`` -> ``docs/bench-study-noise``, the name its documented figure has);
    ``--quick`` writes under ``bench/results/`` so a smoke never replaces a documented figure."""
    name = ""
    if Path(study) != STUDY:
        short = Path(study).stem
        for prefix in ("study_", "sarfraz_"):
            short = short.removeprefix(prefix)
        name = "-" + short.replace("_", "-")
    return f"bench/results/bench-study{name}-quick" if quick else f"docs/bench-study{name}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    ap.add_argument("--study", default=str(STUDY), help="the study file (default: %(default)s); the Sarfraz et al. "
                                                         "rows are configs/study_sarfraz_*.yaml")
    ap.add_argument("--max-trials", type=int, default=None, help="run at most this many unfinished trials now")
    ap.add_argument("--only", action="append", default=[], metavar="FIELD=VALUE",
                    help="run only the trials with this grid value (repeatable), e.g. one noise level first")
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--report-only", action="store_true",
                    help="write the JSON, figure and table from the study folder's finished trials; run nothing")
    ap.add_argument("--merge", action="append", default=[], metavar="JSON",
                    help="an earlier run's JSON (repeatable): its finished trials and teachers complete the table "
                         "where this study folder has none of the same id (a column run on another machine)")
    ap.add_argument("--out", default=None, help="JSON and figure stem (default: docs/bench-study, "
                                                "bench/results/bench-study-quick with --quick)")
    args = ap.parse_args(argv)
    missing = [m for m in args.merge if not Path(m).is_file()]
    if missing:
        ap.exit(2, f"error: --merge {missing[0]}: no such file\n")
    from noisystudent.errors import UserError
    from pipelines.study import collect, format_summary, parse_only, run_study, summary

    study = Path(args.study)
    name = "" if study == STUDY else "-" + study.stem
    study_file, study_dir = study, Path(f"runs/bench_study{name.replace('-', '_')}")
    out_stem = Path(args.out or default_stem(study, args.quick))
    if args.quick:
        spec = yaml.safe_load(study.read_text())
        spec["base"] = str(study.parent.resolve() / spec["base"])
        spec["set"] = {**spec.get("set", {}), **QUICK_SET}
        study_dir = Path(f"bench/results/study{name}")
        study_dir.mkdir(parents=True, exist_ok=True)
        study_file = study_dir / "study.yaml"
        study_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    wall = None
    if args.report_only:
        # with --merge, the earlier JSONs alone redraw the table when this machine has no study folder
        rows = collect(study_dir) if (study_dir / "study.json").is_file() or not args.merge else []
        errors = {}
        prev = out_stem.with_suffix(".json")
        wall = json.loads(prev.read_text()).get("wall_seconds") if prev.is_file() else None
    else:
        t0 = time.perf_counter()
        try:
            out = run_study(study_file, study_dir, ray_address=args.ray_address, max_trials=args.max_trials,
                            only=parse_only(args.only))
        except UserError as exc:
            ap.exit(2, f"error: {exc}\n")
        rows, errors, wall = out["rows"], out["errors"], time.perf_counter() - t0
    rows, teacher_rows, merged = merge(rows, study_dir, [Path(m) for m in args.merge])
    table = summary(rows)
    print(format_summary(table))
    for t in teacher_rows:
        what, level = teacher_condition(t)
        print(f"teacher ({t['model']}, {condition_text(what, level)}): test_acc {t['test_acc']:.4f}")
    for g in gains(rows):
        print(f"{g['method']} at {condition_text(g['condition'], g['level'])}: {100 * g['gain']:+.2f} points over supervised"
              f"{' (beyond both seed spreads)' if g['beyond_spread'] else ''}")
    for tid, err in errors.items():
        print(f"failed: {tid}: {err}")
    write_docs(study_dir, rows, wall, out_stem, teacher_rows, merged)
    wall_txt = f" in {wall:,.0f} s" if wall is not None else ""
    print(f"{len(rows)} trials{wall_txt} -> {study_dir / 'results.parquet'}, {out_stem}.json, {out_stem}.png")


if __name__ == "__main__":
    main()
