"""Accuracy benchmark: supervised teacher, Noisy Student generations and the all-labels oracles, as one table.

``make bench-accuracy`` (= ``python -m bench.accuracy``) runs ``configs/fashion_mnist_full.yaml`` into
``runs/bench_accuracy`` (resumable: a killed benchmark continues where it stopped), then prints test
accuracy per generation, the gain over the teacher and the share of the teacher-to-oracle gap closed,
and writes ``bench/results/accuracy.json`` and the run's HTML report (accuracy per generation with the
baselines plotted, pseudo-label quality, curves) to ``RUN_DIR/report/index.html``.

Two oracles, both the last ladder model on all 60,000 labels:
- the *budget* oracle (``oracle_epochs``, 3) inside the run, as cheap as a student generation;
- the *converged* oracle (``oracle_converged_epochs``, 30, warmup + cosine), trained once and cached in
  ``runs/cache/oracle-<model>-<epochs>ep-<digest>/`` (``make clean`` keeps it; ``make clean-runs`` deletes
  it), reused by every later benchmark with the same model, data and training settings.
The headline "gap closed" is measured against the converged oracle when it exists, else the budget one;
the table and JSON carry both. ``--oracle-only`` trains just the converged oracle (e.g. on a GPU machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

from bench.harness import parse_sets, text_table

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


def print_table(rows: list[dict]) -> str:
    def f(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    def pct(v):
        return "-" if v is None else f"{100 * v:.0f}%"

    budget = next((r for r in rows if r["generation"] == "oracle"), {})
    conv = next((r for r in rows if r["generation"] == CONVERGED), {})
    head = ["generation", "model", "test_acc", "vs teacher", f"gap closed (converged oracle, {conv.get('epochs', '-')} ep)",
            f"gap closed (budget oracle, {budget.get('epochs', '-')} ep)", "pseudo-label acc (all / selected)", "seconds"]
    body = [[_label(r), str(r["model"]), f(r["test_acc"]),
             "-" if r["gain_vs_teacher"] is None else f"{100 * r['gain_vs_teacher']:+.2f} pts",
             pct(r.get("gap_closed_converged")), pct(r.get("gap_closed_budget")),
             f"{f(r['pseudo_label_acc'])} / {f(r['pseudo_label_acc_selected'])}",
             "-" if r["seconds"] is None else f"{r['seconds']:,.0f}"] for r in rows]
    lines = text_table(head, body)
    which = headline_oracle(rows)
    if which == "converged":
        lines.append(f"\nheadline: gap closed against the converged oracle ({f(conv['test_acc'])}, {conv.get('epochs')} epochs, "
                     f"cached in {conv.get('cache_dir')})")
    elif which == "budget":
        lines.append(f"\nheadline: gap closed against the budget oracle ({f(budget['test_acc'])}, {budget.get('epochs')} epochs); "
                     "no converged oracle yet (python -m bench.accuracy --oracle-only)")
    return "\n".join(lines)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fashion_mnist_full.yaml")
    ap.add_argument("--run-dir", default="runs/bench_accuracy")
    ap.add_argument("--cache-dir", default="runs/cache", help="where converged oracles are cached (default: runs/cache)")
    ap.add_argument("--table-only", action="store_true", help="print the table of an existing run (and cached oracle)")
    ap.add_argument("--oracle-only", action="store_true",
                    help="train (or resume) only the converged oracle into the cache, e.g. on a GPU machine")
    ap.add_argument("--no-converged-oracle", action="store_true", help="skip training the converged oracle")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (repeatable), e.g. --set ray.workers=0 --set device=cuda")
    ap.add_argument("--loader-workers", type=int, default=None,
                    help="data-loader processes for the converged oracle (not part of its cache key)")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    t0 = time.perf_counter()

    from noisystudent.errors import UserError
    from pipelines.config import load_config
    from pipelines.loop import converged_oracle, converged_oracle_dir, run_all, train_converged_oracle
    from pipelines.state import RunDir

    try:
        if args.table_only:
            cfg = RunDir(run_dir).load_config()
        else:
            cfg = load_config(args.config, parse_sets(args.sets))
        if args.oracle_only:
            m = train_converged_oracle(cfg, args.cache_dir, loader_workers=args.loader_workers)
            print(f"converged oracle: {m['model']}, {m['epochs']} epochs, test accuracy {m['test_acc']:.4f}, "
                  f"{m['seconds']:,.0f} s -> {m['dir']}")
            return
        if not args.table_only:
            run_all(cfg, run_dir, baselines=True)
            if not args.no_converged_oracle:
                train_converged_oracle(cfg, args.cache_dir, loader_workers=args.loader_workers)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    conv = converged_oracle(converged_oracle_dir(cfg, args.cache_dir))
    rows = table(run_dir, conv)
    print(print_table(rows))
    accs = [r["test_acc"] for r in rows if isinstance(r["generation"], int)]
    if len(accs) > 1:
        print(f"\nlast student vs teacher: {100 * (accs[-1] - accs[0]):+.2f} points; "
              f"every generation at least as good as the one before: {all(b >= a for a, b in zip(accs, accs[1:]))}")
    print(f"wall time of this call: {time.perf_counter() - t0:.0f} s ({args.run_dir})")
    from noisystudent.io import write_json
    from pipelines.report import build_report

    out = Path("bench/results/accuracy.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"config": args.config, "run_dir": str(run_dir), "headline_oracle": headline_oracle(rows),
                     "converged_oracle": conv, "rows": rows})
    print(f"report: {build_report(run_dir)}")


if __name__ == "__main__":
    main()
