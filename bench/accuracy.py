"""Accuracy benchmark: supervised teacher, Noisy Student generations and the all-labels oracles, as one table.

``make bench-accuracy`` (= ``python -m bench.accuracy``) runs ``configs/fashion_mnist_full.yaml`` once per
seed (``--seeds``, default 0,1,2: the training seed; the labeled/unlabeled split stays ``data.split_seed``'s)
into ``runs/bench_accuracy/seed-<S>`` (resumable: a killed benchmark continues where it stopped), then prints
test accuracy per generation as mean ± std over the seeds, the gain over the teacher, the share of the
teacher-to-oracle gap closed and the wall minutes spent up to each generation, and writes
``bench/results/accuracy.json``, ``docs/bench-accuracy.json``, the figure ``docs/bench-accuracy.png``
(accuracy per generation, seeds as dots; the gap closed against minutes) and each seed's HTML report
(``RUN_DIR/seed-<S>/report/index.html``).

Two oracles, both the last ladder model on all 60,000 labels:
- the *budget* oracle (``oracle_epochs``, 3) inside the run, as cheap as a student generation;
- the *converged* oracle (``oracle_converged_epochs``, 30, warmup + cosine), trained once and cached in
  ``runs/cache/oracle-<model>-<epochs>ep-<digest>/`` (``make clean`` keeps it; ``make clean-runs`` deletes
  it), reused by every later benchmark with the same model, data and training settings.
The headline "gap closed" is measured against the converged oracle when it exists, else the budget one;
the table and JSON carry both. ``--oracle-only`` trains just the converged oracle (e.g. on a GPU machine).
The converged oracle is trained once, with the config's own seed, and is the reference of every seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

from bench.harness import load_average, mean_std, parse_sets, pyplot, save_figure, text_table, write_results

CONVERGED = "oracle-converged"


def _gap(acc: Optional[float], teacher: Optional[float], oracle: Optional[float]) -> Optional[float]:
    """Share of the teacher-to-oracle gap that ``acc`` closes; None when undefined (no oracle above the teacher)."""
    if acc is None or teacher is None or oracle is None or oracle <= teacher:
        return None
    return (acc - teacher) / (oracle - teacher)


def table(run_dir: Path, converged: Optional[dict] = None) -> list[dict]:
    """One row per generation, then the baselines and (when given, see :func:`pipelines.loop.converged_oracle`)
    the converged oracle. Each generation gets ``gap_closed_budget`` and ``gap_closed_converged``;
    ``gap_closed`` is the headline: against the converged oracle when there is one, else the budget oracle."""
    from pipelines.loop import status_rows
    from pipelines.state import RunDir

    run = RunDir(run_dir)
    rows = status_rows(run)
    budget_epochs = run.load_config().oracle_epochs
    if converged is not None:
        rows.append({"generation": CONVERGED, "model": converged.get("model"), "steps_done": "1/1", "done": ["train"],
                     "test_acc": converged.get("test_acc"), "pseudo_label_acc": None, "pseudo_label_acc_selected": None,
                     "seconds": converged.get("seconds"), "epochs": converged.get("epochs"), "cache_dir": converged.get("dir")})
    by = {r["generation"]: r for r in rows}
    teacher = by[0]["test_acc"]
    budget = by.get("oracle", {}).get("test_acc")
    conv = by.get(CONVERGED, {}).get("test_acc")
    out = []
    for r in rows:
        acc = r["test_acc"]
        gen = isinstance(r["generation"], int)
        row = {**r, "gain_vs_teacher": None if acc is None or teacher is None else acc - teacher,
               "gap_closed_budget": _gap(acc, teacher, budget) if gen else None,
               "gap_closed_converged": _gap(acc, teacher, conv) if gen else None}
        if r["generation"] == "oracle":
            row["epochs"] = budget_epochs
        row["gap_closed"] = row["gap_closed_converged"] if conv is not None else row["gap_closed_budget"]
        out.append(row)
    return out


def headline_oracle(rows: list[dict]) -> Optional[str]:
    """Which oracle ``gap_closed`` is measured against: ``converged``, ``budget`` or None (no oracle)."""
    names = {r["generation"] for r in rows if r["test_acc"] is not None}
    return "converged" if CONVERGED in names else "budget" if "oracle" in names else None


def _label(r: dict) -> str:
    g = r["generation"]
    if g == "oracle":
        return f"oracle, {r.get('epochs', '?')} ep (budget)"
    if g == CONVERGED:
        return f"oracle, {r.get('epochs', '?')} ep (converged)"
    return str(g)


def seed_dir(run_dir: str | Path, seed: int) -> Path:
    """Where seed ``seed``'s run of the benchmark lives: ``run_dir/seed-<seed>``."""
    return Path(run_dir) / f"seed-{seed}"


def seeds_found(run_dir: str | Path) -> list[int]:
    """The seeds with a run folder under ``run_dir`` (for ``--table-only``), in order."""
    found = []
    for d in Path(run_dir).glob("seed-*"):
        try:
            found.append(int(d.name.split("-", 1)[1]))
        except ValueError:
            continue
    return sorted(found)


def aggregate(per_seed: dict[int, list[dict]]) -> list[dict]:
    """One row per generation and baseline over the seeds' :func:`table` rows: test accuracy, gain over the
    teacher and gap closed (converged and budget) as mean and std, each seed's accuracy, and for the
    generations the wall minutes spent from the teacher up to and including that generation (mean over
    seeds: what the gap closed costs)."""
    order: list = []
    for rows in per_seed.values():
        for r in rows:
            if r["generation"] not in order:
                order.append(r["generation"])
    out = []
    for g in order:
        got = {s: next((r for r in rows if r["generation"] == g), None) for s, rows in per_seed.items()}
        got = {s: r for s, r in got.items() if r is not None and r["test_acc"] is not None}
        if not got:
            continue
        first = next(iter(got.values()))
        row = {"generation": g, "model": first["model"], "seeds": sorted(got),
               "test_acc_by_seed": {str(s): r["test_acc"] for s, r in sorted(got.items())}}
        for key in ("test_acc", "val_acc", "gain_vs_teacher", "gap_closed", "gap_closed_budget", "gap_closed_converged",
                    "pseudo_label_acc", "pseudo_label_acc_selected", "seconds"):
            row[key], row[f"{key}_std"] = mean_std([r.get(key) for r in got.values()])
        if isinstance(g, int):
            spent = []
            for s in got:
                gens = [r for r in per_seed[s] if isinstance(r["generation"], int) and r["generation"] <= g]
                spent.append(sum(r["seconds"] or 0.0 for r in gens) / 60)
            row["minutes_so_far"], row["minutes_so_far_std"] = mean_std(spent)
            row["promoted"] = [r.get("promoted") for r in got.values()]
        if g == CONVERGED:
            row["epochs"], row["cache_dir"] = first.get("epochs"), first.get("cache_dir")
        elif g == "oracle":
            row["epochs"] = first.get("epochs")
        out.append(row)
    return out


def monotone_in_mean(rows: list[dict]) -> bool:
    """Every generation at or above the one before, in the mean over seeds."""
    accs = [r["test_acc"] for r in rows if isinstance(r["generation"], int)]
    return all(b >= a for a, b in zip(accs, accs[1:]))


def print_seeds_table(rows: list[dict]) -> str:
    """The benchmark's table over seeds (mean ± std; each seed's accuracy beside it)."""
    def ms(r, key, scale=1.0, digits=4, sign=False):
        m, sd = r.get(key), r.get(f"{key}_std")
        if m is None:
            return "-"
        f = f"{{:{'+' if sign else ''}.{digits}f}}"
        return f"{f.format(scale * m)} ± {scale * sd:.{digits}f}"

    n = max((len(r["seeds"]) for r in rows), default=0)
    conv = next((r for r in rows if r["generation"] == CONVERGED), {})
    budget = next((r for r in rows if r["generation"] == "oracle"), {})
    head = ["generation", "model", f"test acc (mean ± std, {n} seeds)", "each seed", "vs teacher (pts)",
            f"gap closed (converged oracle, {conv.get('epochs', '-')} ep)",
            f"gap closed (budget oracle, {budget.get('epochs', '-')} ep)", "pseudo-labels kept: acc", "minutes so far"]
    body = []
    for r in rows:
        gen = isinstance(r["generation"], int)
        body.append([_label(r), str(r["model"]), ms(r, "test_acc"),
                     " / ".join(f"{v:.4f}" for v in r["test_acc_by_seed"].values()),
                     ms(r, "gain_vs_teacher", 100, 2, True),
                     ms(r, "gap_closed_converged", 100, 0) + " %" if gen and r.get("gap_closed_converged") is not None else "-",
                     ms(r, "gap_closed_budget", 100, 0) + " %" if gen and r.get("gap_closed_budget") is not None else "-",
                     "-" if r.get("pseudo_label_acc_selected") is None else f"{r['pseudo_label_acc_selected']:.4f}",
                     ms(r, "minutes_so_far", 1, 1) if gen else ("-" if r.get("seconds") is None else f"{r['seconds'] / 60:.1f}")])
    lines = text_table(head, body)
    if conv:
        lines.append(f"\nheadline: gap closed against the converged oracle ({conv['test_acc']:.4f}, {conv.get('epochs')} "
                     f"epochs, cached in {conv.get('cache_dir')}); minutes: wall time on this machine, teacher included")
    elif budget:
        lines.append("\nheadline: gap closed against the budget oracle; no converged oracle yet "
                     "(python -m bench.accuracy --oracle-only)")
    gens = [r for r in rows if isinstance(r["generation"], int)]
    if len(gens) > 1:
        lines.append(f"last generation vs teacher: {100 * (gens[-1]['test_acc'] - gens[0]['test_acc']):+.2f} points (mean); "
                     f"every generation at least as good as the one before in the mean: {monotone_in_mean(rows)}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """Left: test accuracy per generation, each seed a dot, the mean a line, the supervised baseline and
    the oracles as horizontal lines. Right: the share of the gap to the headline oracle closed, against
    the wall minutes spent up to each generation (mean over seeds, std as bars)."""
    plt = pyplot()
    gens = [r for r in rows if isinstance(r["generation"], int)]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["generation"] for r in gens]
    for r in gens:
        vals = list(r["test_acc_by_seed"].values())
        ax.scatter([r["generation"]] * len(vals), [100 * v for v in vals], s=14, color="C0", alpha=0.6, zorder=3)
    ax.errorbar(xs, [100 * r["test_acc"] for r in gens], yerr=[100 * r["test_acc_std"] for r in gens], color="C0",
                marker="o", capsize=3, label=f"teacher and students (mean, {max(len(r['seeds']) for r in gens)} seeds)")
    styles = {"supervised": ("C3", ":"), "oracle": ("C2", "--"), CONVERGED: ("black", "--")}
    for r in rows:
        if r["generation"] in styles:
            color, ls = styles[r["generation"]]
            ax.axhline(100 * r["test_acc"], color=color, ls=ls, lw=1.2, label=f"{_label(r)}: {100 * r['test_acc']:.2f}")
    ax.set_xticks(xs, ["teacher" if g == 0 else f"gen {g}" for g in xs])
    ax.set_ylabel("test accuracy % (10,000 images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    key = "gap_closed_converged" if any(r["generation"] == CONVERGED for r in rows) else "gap_closed_budget"
    pts = [r for r in gens if r.get(key) is not None]
    if pts:
        bx.errorbar([r["minutes_so_far"] for r in pts], [100 * r[key] for r in pts], yerr=[100 * r[f"{key}_std"] for r in pts],
                    xerr=[r["minutes_so_far_std"] for r in pts], marker="o", capsize=3, color="C0")
        for r in pts:
            bx.annotate("teacher" if r["generation"] == 0 else f"gen {r['generation']}", (r["minutes_so_far"], 100 * r[key]),
                        textcoords="offset points", xytext=(4, -10), fontsize=8)
        bx.axhline(70, color="C1", ls=":", lw=1, label="70 % (the goal)")
        bx.legend(fontsize=7, loc="lower right")
    bx.set_xlabel("wall minutes on this machine, teacher included")
    bx.set_ylabel(f"% of the gap to the {'converged' if key == 'gap_closed_converged' else 'budget'} oracle closed")
    bx.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fashion_mnist_full.yaml")
    ap.add_argument("--run-dir", default="runs/bench_accuracy", help="one folder per seed inside it: seed-<S>")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (default 0,1,2); the split stays "
                                                      "data.split_seed's")
    ap.add_argument("--cache-dir", default="runs/cache", help="where converged oracles are cached (default: runs/cache)")
    ap.add_argument("--table-only", action="store_true", help="print the table of the seeds already run (and cached oracle)")
    ap.add_argument("--oracle-only", action="store_true",
                    help="train (or resume) only the converged oracle into the cache, e.g. on a GPU machine")
    ap.add_argument("--no-converged-oracle", action="store_true", help="skip training the converged oracle")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (repeatable), e.g. --set ray.workers=0 --set device=cuda")
    ap.add_argument("--loader-workers", type=int, default=None,
                    help="data-loader processes for the converged oracle (not part of its cache key)")
    ap.add_argument("--out", default="docs/bench-accuracy.json", help="the JSON beside the figure (default: %(default)s)")
    ap.add_argument("--figure", default="docs/bench-accuracy.png", help="the figure (default: %(default)s)")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    t0 = time.perf_counter()

    from noisystudent.errors import UserError
    from pipelines.config import load_config
    from pipelines.loop import converged_oracle, converged_oracle_dir, run_all, train_converged_oracle
    from pipelines.state import RunDir

    sets = parse_sets(args.sets)
    try:
        seeds = seeds_found(run_dir) if args.table_only else [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds: expected integers separated by commas, got {args.seeds!r}") from None
    if not seeds:
        raise SystemExit(f"error: --seeds: no seed given" if not args.table_only else f"error: no seed-<S> run in {run_dir}")
    try:
        if args.table_only:
            cfg = RunDir(seed_dir(run_dir, seeds[0])).load_config()
            base = load_config(args.config, sets) if Path(args.config).is_file() else cfg
        else:
            base = load_config(args.config, sets)  # the config's own seed: the one converged oracle of every seed
        if args.oracle_only:
            m = train_converged_oracle(base, args.cache_dir, loader_workers=args.loader_workers)
            print(f"converged oracle: {m['model']}, {m['epochs']} epochs, test accuracy {m['test_acc']:.4f}, "
                  f"{m['seconds']:,.0f} s -> {m['dir']}")
            return {"converged_oracle": m}
        if not args.table_only:
            for seed in seeds:
                print(f"== seed {seed} ({seeds.index(seed) + 1}/{len(seeds)}) -> {seed_dir(run_dir, seed)}", flush=True)
                run_all(load_config(args.config, {**sets, "seed": seed}), seed_dir(run_dir, seed), baselines=True)
            if not args.no_converged_oracle:
                train_converged_oracle(base, args.cache_dir, loader_workers=args.loader_workers)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    conv = converged_oracle(converged_oracle_dir(base, args.cache_dir))
    per_seed = {s: table(seed_dir(run_dir, s), conv) for s in seeds if (seed_dir(run_dir, s) / "state.json").is_file()}
    rows = aggregate(per_seed)
    text = print_seeds_table(rows)
    print(text)
    load = load_average()
    print(f"wall time of this call: {time.perf_counter() - t0:.0f} s ({args.run_dir}); load average {load[0]:.1f}")
    from pipelines.report import build_report

    payload = {"config": args.config, "run_dir": str(run_dir), "seeds": sorted(per_seed), "headline_oracle": headline_oracle(rows),
               "converged_oracle": conv, "rows": rows, "per_seed": {str(s): r for s, r in per_seed.items()},
               "monotone_in_mean": monotone_in_mean(rows), "load_average": load, "table": text}
    write_results(Path("bench/results/accuracy.json"), payload)
    if args.out:
        write_results(Path(args.out), payload)
    if args.figure and rows:
        print(f"figure: {plot(rows, Path(args.figure), f'bench-accuracy: {Path(args.config).name}, seeds {sorted(per_seed)}')}")
    for s in per_seed:
        print(f"report (seed {s}): {build_report(seed_dir(run_dir, s))}")
    return payload


if __name__ == "__main__":
    main()
