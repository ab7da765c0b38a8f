"""The Noisy Student loop: teacher, then generations 1..N of label -> select -> student -> evaluate -> promote."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Optional

from noisystudent.config import ALL_LABELS_PER_CLASS, non_default
from pipelines.config import ExperimentConfig

from . import steps
from .state import RunDir
from .steps import BASELINE_ROLES, baseline_step, generation_of, step_name


def run_generation(run: RunDir, cfg: ExperimentConfig, g: int, progress: bool = True) -> dict:
    """One generation: every step of :data:`pipelines.steps.GENERATION` in order; finished steps are
    skipped, an unfinished one resumes. Labels made by the same teacher checkpoint for an earlier
    generation are reused, not made again (:mod:`pipelines.repeat`)."""
    from .repeat import reuse_labels, same_teacher_generation

    h = same_teacher_generation(run, g)
    if h is not None and reuse_labels(run, g, h):
        steps.log(f"[gen {g}] labels: the same teacher labeled generation {h}; its labels are reused")
    results = {step.name: steps.execute(step, steps.StepContext(run, cfg, g, progress=progress))
               for step in steps.GENERATION}
    return {**results["evaluate"], **steps.promotion_fields(results["promote"])}


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


def _stops_before(run: RunDir, cfg: ExperimentConfig, g: int) -> bool:
    """Whether generation ``g`` would only repeat an earlier one (:func:`pipelines.repeat.repeated_generation`);
    if so, say why (a log line, a PromotionWarning, ``stopped`` in ``state.json``)."""
    import warnings

    from noisystudent.errors import PromotionWarning

    from .repeat import repeated_generation, stop_message

    h = repeated_generation(run, cfg, g) if not run.is_done(step_name(g, steps.STUDENT.name)) else None
    if h is None:
        return False
    msg = stop_message(run, cfg, g, h)
    steps.log(f"[gen {g}] {msg}")
    warnings.warn(msg, PromotionWarning, stacklevel=3)
    st = run.state()
    st["stopped"] = {"generation": g, "repeats": h, "reason": msg}
    run._write_state(st)
    return True


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
        if _stops_before(run, cfg, g):
            break
        rows.append(run_generation(run, cfg, g, progress=progress))
        _track(run, tracking)
    if baselines:
        steps.train_baseline(run, cfg, "supervised", None, progress=progress)
        steps.train_baseline(run, cfg, "oracle", ALL_LABELS_PER_CLASS.get(cfg.data.kind), progress=progress,
                             epochs=cfg.oracle_epochs)
    _track(run, tracking)
    st = run.state()
    st["last_run_seconds"] = round(time.perf_counter() - t0, 1)
    run._write_state(st)
    return rows


def _status_row(run: RunDir, cfg: ExperimentConfig, g: int, st: dict) -> dict:
    """Generation ``g``'s row of :func:`status_rows`."""
    from noisystudent.io import read_json

    names = [s.name for s in steps.steps_for(g)]
    done = [s for s in names if step_name(g, s) in st]
    acc = None
    mfile = run.model_dir(g) / "metrics.json"
    model_step = steps.TEACHER_STEP if g == 0 else steps.STUDENT
    if model_step.key(g) in st and mfile.is_file():
        acc = read_json(mfile).get("test_acc")
    gm = run.gen(g) / "metrics.json"
    gen_metrics = read_json(gm) if (g > 0 and gm.is_file()) else {}
    val_acc = read_json(mfile).get("val_acc") if acc is not None else None
    promo = run.state().get("promotions", {}).get(str(g)) if g > 0 else None
    return {
        "generation": g,
        "model": cfg.teacher.name if g == 0 else cfg.student_model(g).name,
        "steps_done": f"{len(done)}/{len(names)}",
        "done": done,
        "test_acc": acc,
        "val_acc": val_acc,
        "pseudo_label_acc": gen_metrics.get("pseudo_label_acc"),
        "pseudo_label_acc_selected": gen_metrics.get("pseudo_label_acc_selected"),
        "seconds": round(sum(st[step_name(g, s)]["seconds"] for s in done), 1),
        # which model taught this generation (gen-K/teacher|student) and whether its student teaches the next
        "taught_by": steps.taught_by(run, g)["taught_by"] if g > 0 and run.teacher_of(g).is_file() else None,
        "promoted": promo["promoted"] if promo else None,
        "decision": promo["reason"] if promo else None,
    }


def status_rows(run: RunDir) -> list[dict]:
    """One row per generation (the steps of :func:`pipelines.steps.steps_for`): model, steps done, test
    accuracy, pseudo-label accuracy, seconds; then one per finished baseline."""
    cfg = run.load_config()
    st = run.state().get("steps", {})
    present = [g for g in map(generation_of, st) if g is not None]
    rows = [_status_row(run, cfg, g, st) for g in range(0, max([cfg.student.generations] + present) + 1)]
    for role in BASELINE_ROLES:
        info = st.get(baseline_step(role))
        if info:
            rows.append({"generation": role, "model": info.get("model"), "steps_done": "1/1", "done": ["train"],
                         "test_acc": info.get("test_acc"), "pseudo_label_acc": None, "pseudo_label_acc_selected": None,
                         "seconds": info.get("seconds")})
    return rows


# --------------------------------------------------------------------------------------------------
# the converged oracle: cached outside every run (``make clean`` keeps runs/), since it does not change
# between runs of a benchmark and costs an hour or two on 2 cores

ORACLE_CACHE = Path("runs/cache")
ORACLE_STEP = baseline_step("oracle")


def converged_oracle_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config of ``cfg``'s converged all-labels oracle: the last ladder model on every labeled training
    image (Fashion-MNIST: all 60,000), trained ``oracle_converged_epochs`` with ``teacher_train``'s
    optimizer and warmup + cosine schedule. Fields that do not shape this model stay at their defaults, so
    any run of the same benchmark finds the same oracle."""
    from noisystudent.config import TrainConfig, to_dict
    from pipelines.config import StudentConfig, config_from_dict

    model = dataclasses.replace(cfg.student.ladder[-1], init=None)  # from scratch, whatever the rung's init
    epochs = cfg.oracle_converged_epochs
    data = dataclasses.replace(cfg.data, unlabeled_limit=None,
                               labels_per_class=ALL_LABELS_PER_CLASS.get(cfg.data.kind, cfg.data.labels_per_class))
    train = dataclasses.replace(cfg.teacher_train, epochs=epochs, num_workers=TrainConfig().num_workers)
    oracle = ExperimentConfig(name=f"oracle-{model.name}-{epochs}ep", seed=cfg.seed, device=cfg.device, data=data,
                              teacher=model, teacher_train=train, student=StudentConfig(generations=0, ladder=[model]),
                              ray=cfg.ray, oracle_epochs=epochs, oracle_converged_epochs=epochs)
    return config_from_dict(to_dict(oracle))  # validated and normalised as a reloaded config.yaml will be


def converged_oracle_dir(cfg: ExperimentConfig, cache_root: str | Path = ORACLE_CACHE) -> Path:
    """``cache_root/oracle-<model>-<epochs>ep-<digest>``: the digest covers the model, the data split, the
    training settings and the seed (not the device, Ray, or where the Fashion-MNIST files lie)."""
    oracle = converged_oracle_config(cfg)
    data = non_default(oracle.data)
    if oracle.data.kind in ALL_LABELS_PER_CLASS:
        data.pop("root", None)
    blob = json.dumps({"model": non_default(oracle.teacher), "data": data, "train": non_default(oracle.teacher_train),
                       "seed": oracle.seed}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return Path(cache_root) / f"oracle-{oracle.teacher.name}-{oracle.teacher_train.epochs}ep-{digest}"


def converged_oracle(cache_dir: str | Path) -> Optional[dict]:
    """The finished converged oracle in ``cache_dir``: model, epochs, test accuracy, seconds, folder; None
    when it has not finished training."""
    from noisystudent.io import read_json

    run = RunDir(cache_dir)
    info = run.step_info(ORACLE_STEP)
    if info is None:
        return None
    m = read_json(run.baseline_dir("oracle") / "metrics.json")
    return {"model": m.get("model", info.get("model")), "epochs": m.get("epochs"), "test_acc": m.get("test_acc"),
            "seconds": info.get("seconds"), "dir": str(run.root)}


def train_converged_oracle(cfg: ExperimentConfig, cache_root: str | Path = ORACLE_CACHE, progress: bool = True,
                           force: bool = False, loader_workers: Optional[int] = None) -> dict:
    """Train (or resume, or reuse) ``cfg``'s converged oracle in :func:`converged_oracle_dir`; return
    :func:`converged_oracle`. A finished one is reused without loading any data."""
    run = RunDir(converged_oracle_dir(cfg, cache_root))
    if force or not run.is_done(ORACLE_STEP):
        oracle = run.freeze_config(converged_oracle_config(cfg))
        steps.train_baseline(run, oracle, "oracle", None, progress=progress, force=force,
                             epochs=oracle.teacher_train.epochs, loader_workers=loader_workers)
    return converged_oracle(run.root)
