"""The Noisy Student loop: teacher, then generations 1..N of label -> select -> student -> evaluate -> promote."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from noisystudent.config import ExperimentConfig

from . import steps
from .state import RunDir, step_name


def run_generation(run: RunDir, cfg: ExperimentConfig, g: int, progress: bool = True) -> dict:
    """One generation; finished steps are skipped, an unfinished one resumes."""
    steps.label(run, cfg, g, progress=progress)
    steps.select(run, cfg, g)
    steps.train_student(run, cfg, g, progress=progress)
    out = steps.evaluate_generation(run, cfg, g)
    steps.promote(run, g)
    return out


def _track(run: RunDir, backend: Optional[str]) -> None:
    """Refresh the experiment-tracking logs from the run's artifacts; a tracking failure never stops a run."""
    if not backend:
        return
    import warnings

    from .tracking import log_run

    try:
        log_run(run.root, backend=backend)
    except Exception as exc:  # noqa: BLE001 - tracking is a side channel
        warnings.warn(f"{backend} tracking failed: {exc}", stacklevel=2)


def run_all(cfg: ExperimentConfig, run_dir: str | Path, generations: Optional[int] = None, progress: bool = True,
            baselines: bool = False, tracking: Optional[str] = "tensorboard") -> list[dict]:
    """Run (or resume) the whole loop; return one summary row per generation (0 = the teacher)."""
    run = RunDir(run_dir)
    cfg = run.freeze_config(cfg)
    n = cfg.student.generations if generations is None else generations
    t0 = time.perf_counter()
    rows = []
    teacher = steps.train_teacher(run, cfg, progress=progress)
    rows.append({"generation": 0, "model": cfg.teacher.name, "test_acc": teacher.get("test_acc")})
    _track(run, tracking)
    for g in range(1, n + 1):
        rows.append(run_generation(run, cfg, g, progress=progress))
        _track(run, tracking)
    if baselines:
        steps.train_baseline(run, cfg, "supervised", None, progress=progress)
        steps.train_baseline(run, cfg, "oracle", 6000 if cfg.data.kind == "fashion_mnist" else None, progress=progress,
                             epochs=cfg.oracle_epochs)
    _track(run, tracking)
    st = run.state()
    st["last_run_seconds"] = round(time.perf_counter() - t0, 1)
    run._write_state(st)
    return rows


def status_rows(run: RunDir) -> list[dict]:
    """One row per generation: model, steps done, test accuracy, pseudo-label accuracy, seconds."""
    from noisystudent.io import read_json

    cfg = run.load_config()
    st = run.state().get("steps", {})
    rows = []
    n = max([cfg.student.generations] + [int(s.split("/")[0][4:]) for s in st if s.startswith("gen-")])
    for g in range(0, n + 1):
        names = ["teacher"] if g == 0 else list(("label", "select", "student", "evaluate", "promote"))
        done = [s for s in names if step_name(g, s) in st]
        acc = None
        mfile = run.model_dir(g) / "metrics.json"
        if step_name(g, names[0] if g == 0 else "student") in st and mfile.is_file():
            acc = read_json(mfile).get("test_acc")
        gm = run.gen(g) / "metrics.json"
        gen_metrics = read_json(gm) if (g > 0 and gm.is_file()) else {}
        rows.append({
            "generation": g,
            "model": cfg.teacher.name if g == 0 else cfg.student_model(g).name,
            "steps_done": f"{len(done)}/{len(names)}",
            "done": done,
            "test_acc": acc,
            "pseudo_label_acc": gen_metrics.get("pseudo_label_acc"),
            "pseudo_label_acc_selected": gen_metrics.get("pseudo_label_acc_selected"),
            "seconds": round(sum(st[step_name(g, s)]["seconds"] for s in done), 1),
        })
    for role in ("supervised", "oracle"):
        info = st.get(f"baselines/{role}")
        if info:
            rows.append({"generation": role, "model": info.get("model"), "steps_done": "1/1", "done": ["train"],
                         "test_acc": info.get("test_acc"), "pseudo_label_acc": None, "pseudo_label_acc_selected": None,
                         "seconds": info.get("seconds")})
    return rows
