"""Accuracy benchmark: supervised teacher, Noisy Student generations and the all-labels oracle, as one table.

``make bench-accuracy`` (= ``python -m bench.accuracy``) runs ``configs/fashion_mnist_full.yaml`` into
``runs/bench_accuracy`` (resumable: a killed benchmark continues where it stopped), then prints test
accuracy per generation, the gain over the teacher and the share of the teacher-to-oracle gap closed,
and writes ``bench/results/accuracy.json`` and the run's HTML report (accuracy per generation with the
baselines plotted, pseudo-label quality, curves) to ``RUN_DIR/report/index.html``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path



def table(run_dir: Path) -> list[dict]:
    from pipelines.loop import status_rows
    from pipelines.state import RunDir

    rows = status_rows(RunDir(run_dir))
    by = {r["generation"]: r for r in rows}
    teacher = by[0]["test_acc"]
    oracle = by.get("oracle", {}).get("test_acc")
    out = []
    for r in rows:
        acc = r["test_acc"]
        gap = None
        if acc is not None and oracle is not None and teacher is not None and oracle > teacher and isinstance(r["generation"], int):
            gap = (acc - teacher) / (oracle - teacher)
        out.append({**r, "gain_vs_teacher": None if acc is None or teacher is None else acc - teacher, "gap_closed": gap})
    return out


def print_table(rows: list[dict]) -> str:
    def f(v, pct=False):
        if v is None:
            return "-"
        return f"{100 * v:+.2f} pts" if pct else (f"{v:.4f}" if isinstance(v, float) else str(v))

    head = ["generation", "model", "test_acc", "vs teacher", "gap closed", "pseudo-label acc (all / selected)", "seconds"]
    body = [[str(r["generation"]), str(r["model"]), f(r["test_acc"]), f(r["gain_vs_teacher"], pct=True),
             "-" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.0f}%",
             f"{f(r['pseudo_label_acc'])} / {f(r['pseudo_label_acc_selected'])}",
             "-" if r["seconds"] is None else f"{r['seconds']:.0f}"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head] + body]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fashion_mnist_full.yaml")
    ap.add_argument("--run-dir", default="runs/bench_accuracy")
    ap.add_argument("--table-only", action="store_true", help="print the table of an existing run")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    t0 = time.perf_counter()
    if not args.table_only:
        from noisystudent.config import load_config
        from pipelines.loop import run_all

        run_all(load_config(args.config), run_dir, baselines=True)
    rows = table(run_dir)
    text = print_table(rows)
    print(text)
    accs = [r["test_acc"] for r in rows if isinstance(r["generation"], int)]
    if len(accs) > 1:
        print(f"\nlast student vs teacher: {100 * (accs[-1] - accs[0]):+.2f} points; "
              f"every generation at least as good as the one before: {all(b >= a for a, b in zip(accs, accs[1:]))}")
    print(f"wall time of this call: {time.perf_counter() - t0:.0f} s ({args.run_dir})")
    from noisystudent.io import write_json
    from pipelines.report import build_report

    out = Path("bench/results/accuracy.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"config": args.config, "run_dir": str(run_dir), "rows": rows})
    print(f"report: {build_report(run_dir)}")


if __name__ == "__main__":
    main()
