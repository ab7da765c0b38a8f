"""A study's results: one row per trial read from the run folders, and the summary over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from noisystudent.errors import UserError
from noisystudent.io import read_json

from ..state import RunDir
from ..steps import generation_of
from .loop_trials import loop_result, trial_done
from .spec import TRIAL_STEP

def collect(study_dir: str | Path) -> list[dict]:
    """One row per trial of ``study.json``: grid fields, seed, status, test accuracy, fidelity, seconds;
    written to ``results.parquet``."""
    import pandas as pd

    from noisystudent.io import atomic_path

    study_dir = Path(study_dir)
    if not (study_dir / "study.json").is_file():
        raise UserError(f"{study_dir} is not a study folder (no study.json)")
    meta = read_json(study_dir / "study.json")
    errors = read_json(study_dir / "errors.json") if (study_dir / "errors.json").is_file() else {}
    rows = []
    kind = meta.get("kind", "distill")
    for t in meta["trials"]:
        run = RunDir(study_dir / "trials" / t["id"])
        info = run.step_info(TRIAL_STEP) if run.state_path.is_file() else None
        row = {"trial": t["id"], **{k: v for k, v in t["overrides"].items()}}
        if kind == "loop":
            done = trial_done(run, kind, {"student": {"generations": t.get("generations", 1)}}) and run.exists()
            err = errors.get(t["id"])
            if done and not err:
                r = loop_result(run)
                row.update(status="done", seconds=sum(v.get("seconds", 0) for k, v in run.state()["steps"].items()
                                                      if (generation_of(k) or 0) > 0), error=None,
                           **{k: r.get(k) for k in ("test_acc", "fidelity", "teacher_test_acc", "val_acc", "promoted")},
                           **{k: v for k, v in r.items() if k.startswith("gen")})
            else:
                row.update(status="failed" if err else "pending", test_acc=None, fidelity=None, teacher_test_acc=None,
                           seconds=None, error=err)
            rows.append(row)
            continue
        if info is not None:
            m = read_json(run.distill_dir() / "metrics.json")
            row.update(status="done", test_acc=m.get("test_acc"), fidelity=m.get("test_fidelity"),
                       teacher_test_acc=m.get("teacher_test_acc"), seconds=info.get("seconds"), error=None)
        else:
            err = errors.get(t["id"])
            row.update(status="failed" if err else ("running" if (run.distill_dir() / "last.pt").exists() else "pending"),
                       test_acc=None, fidelity=None, teacher_test_acc=None, seconds=None, error=err)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in df.columns:  # grid values of mixed types (0 and 0.4) must share one Parquet type
        if df[col].dtype == object and col not in ("trial", "status", "error"):
            df[col] = df[col].map(lambda v: v if v is None else str(v) if not isinstance(v, (int, float)) else v)
    with atomic_path(study_dir / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    return rows


def stats_of(table) -> list[str]:
    """The statistics a summary table carries, in column order: ``val_acc`` (loop trials), ``test_acc``,
    ``fidelity``; each as ``<name>_mean`` and ``<name>_std``, beside ``seeds``."""
    return (["val_acc"] if "val_acc_mean" in table.columns else []) + ["test_acc", "fidelity"]


def group_keys(table) -> list[str]:
    """A summary table's grouping columns: everything but its statistics and ``seeds``."""
    stats = {f"{c}_{k}" for c in stats_of(table) for k in ("mean", "std")} | {"seeds"}
    return [c for c in table.columns if c not in stats]


def mean_std(m, s) -> str:
    """``0.8124 ± 0.0001``; the mean alone with one seed; ``-`` when there is none."""
    if m is None or m != m:
        return "-"
    return f"{m:.4f} ± {s:.4f}" if s == s else f"{m:.4f}"


def summary(rows: list[dict], seed_fields: Optional[list[str]] = None):
    """Finished trials aggregated over seeds: mean and std of test accuracy and fidelity (and of validation
    accuracy when every trial has it: loop trials) per combination of the other grid fields (a pandas DataFrame)."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if r.get("status") == "done"])
    if df.empty:
        return df
    reserved = {"trial", "status", "test_acc", "fidelity", "teacher_test_acc", "seconds", "error", "val_acc",
                "promoted", "generations_done"} | {c for c in df.columns if c.startswith("gen") and c.endswith("_test_acc")}
    fields = [c for c in df.columns if c not in reserved]
    seeds = seed_fields if seed_fields is not None else [c for c in fields if c.split(".")[-1] == "seed"]
    keys = [c for c in fields if c not in seeds]
    if "variant" in keys:  # one row per variant (its own fields are in its name) and grid value
        keys = ["variant"] + [c for c in keys if c != "variant" and df[c].notna().all()]
    for col in keys:
        df[col] = df[col].astype(str)
    stats = ["test_acc", "fidelity"]
    if "val_acc" in df.columns and df["val_acc"].notna().all():  # loop trials: rows are decided on validation
        stats = ["val_acc"] + stats
    agg = {**{c: ["mean", "std"] for c in stats}, "trial": "count"}
    g = df.groupby(keys, dropna=False).agg(agg) if keys else df.assign(_all="all").groupby("_all").agg(agg)
    g.columns = [f"{c}_{k}" for c in stats for k in ("mean", "std")] + ["seeds"]
    return g.reset_index()


def format_summary(table) -> str:
    if table.empty:
        return "no finished trials"
    keys, stats = group_keys(table), stats_of(table)
    head = keys + stats + ["seeds"]
    body = [[str(r[k]) for k in keys] + [mean_std(r[f"{c}_mean"], r[f"{c}_std"]) for c in stats] + [str(r["seeds"])]
            for _, r in table.iterrows()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head] + body)


def status(study_dir: str | Path) -> dict:
    """Progress of a study folder: counts by status, the failed trials with their error, and the rows."""
    rows = collect(study_dir)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"trials": len(rows), "counts": counts, "failed": {r["trial"]: r["error"] for r in rows if r["status"] == "failed"},
            "rows": rows}
