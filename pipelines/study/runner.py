"""Running a study on Ray Tune: one teacher per data condition, then the unfinished trials.

Run folders are the source of truth: a job whose folder says done is not scheduled again, so running
the same study again resumes it.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

from noisystudent.errors import UserError
from noisystudent.io import write_json
from pipelines.config import config_from_dict

from ..state import RunDir
from .loop_trials import label_once, loop_result, seed_loop_trial, trial_done
from .report import write_report
from .results import collect
from .spec import TEACHER_STEP, Study, Trial, load_study, select_trials


def _teacher_cfg(study: Study, trial: Trial) -> dict:
    """The base config with the trial's data condition, teacher model and budget: every trial of one data
    condition gives the same teacher config (its run folder's frozen config never changes)."""
    d = copy.deepcopy(study.base_cfg)
    for key in ("data", "teacher", "teacher_train", "device"):
        d[key] = copy.deepcopy(trial.cfg[key])
    d["name"] = f"teacher-{trial.teacher_key}"
    return d


def _run_job(config: dict) -> None:
    """A Tune function trainable: one teacher or distill step on its run folder (resumes from it)."""
    from ray import tune

    from .. import steps

    config = config["job"]  # Tune's param space is {"job": grid_search(specs)}
    run = RunDir(config["run_dir"])
    t0 = time.perf_counter()
    try:
        cfg = run.freeze_config(config_from_dict(config["cfg"]))
        if config["stage"] == "teacher":
            m = steps.train_teacher(run, cfg, progress=False)
        elif config["stage"] == "loop":
            from ..loop import run_all

            run_all(cfg, run.root, progress=False, tracking=None)
            m = loop_result(run)
        else:
            m = steps.distill(run, cfg, progress=False)
    except UserError as exc:  # Tune copies a trial's exception; ours take a field and a message
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
    out = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out["job_seconds"] = time.perf_counter() - t0
    tune.report(out)


def _fit(study: Study, study_dir: Path, stage: str, jobs: list[dict]) -> dict[str, str]:
    """Run ``jobs`` as Tune trials; return ``{id: error}`` of those that failed after their retries."""
    from ray import tune

    if not jobs:
        return {}
    resources = {k: v for k, v in {"cpu": study.resources.get("cpu", 1), "gpu": study.resources.get("gpu", 0)}.items()}
    trainable = tune.with_resources(_run_job, resources)
    tuner = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=study.max_concurrent,
                                    trial_name_creator=lambda t: t.config["job"]["id"],
                                    trial_dirname_creator=lambda t: t.config["job"]["id"]),
        run_config=tune.RunConfig(name=f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(study_dir / "tune"),
                                  failure_config=tune.FailureConfig(max_failures=study.max_failures), verbose=0),
    )
    errors = {}
    for r in tuner.fit():
        if r.error is not None:
            errors[r.config["job"]["id"]] = str(r.error).strip().splitlines()[-1][:500] if str(r.error).strip() else repr(r.error)
    return errors


def _given_teacher(teacher: str | Path) -> str:
    """``--teacher``: checked by the checkpoint's own rules (a model.pt, or a folder holding one) before Ray starts."""
    from noisystudent.checkpoint import load_checkpoint

    try:
        load_checkpoint(teacher)
    except UserError as exc:
        raise UserError(f"--teacher {teacher}: no checkpoint there ({exc})") from None
    return str(Path(teacher).resolve())


def _write_study_json(study: Study, study_dir: Path) -> None:
    write_json(study_dir / "study.json", {"name": study.name, "kind": study.kind, "grid": study.grid,
                                          "resources": study.resources,
                                          "teacher": study.teacher, "base": study.base,
                                          "trials": [{"id": t.id, "overrides": t.overrides, "teacher_key": t.teacher_key,
                                                      "generations": t.cfg["student"]["generations"]}
                                                     for t in study.trials]})


def _run_teachers(study: Study, study_dir: Path, errors: dict[str, str]) -> dict[str, str]:
    """Stage 1: one teacher per data condition (none with a given teacher); return ``{teacher_key: model folder}``.
    Failed teachers go into ``errors`` as ``teacher-<key>``."""
    if study.teacher:
        return {t.teacher_key: study.teacher for t in study.trials}
    teacher_of: dict[str, str] = {}
    jobs, seen = [], set()
    for t in study.trials:
        tdir = study_dir / "teachers" / t.teacher_key
        teacher_of[t.teacher_key] = str(RunDir(tdir).teacher_dir())
        if t.teacher_key in seen or RunDir(tdir).is_done(TEACHER_STEP):
            continue
        seen.add(t.teacher_key)
        jobs.append({"id": f"teacher-{t.teacher_key}", "stage": "teacher", "run_dir": str(tdir),
                     "cfg": _teacher_cfg(study, t)})
    errors.update(_fit(study, study_dir, "teachers", jobs))
    return teacher_of


def _trial_jobs(study: Study, study_dir: Path, errors: dict[str, str], teacher_of: dict[str, str]) -> list[dict]:
    """Stage 2's jobs: the trials whose run folder is not finished (a loop trial's folder seeded from its
    teacher's); a trial whose teacher failed goes into ``errors`` instead."""
    jobs = []
    for t in study.trials:
        run = RunDir(study_dir / "trials" / t.id)
        if trial_done(run, study.kind, t.cfg):
            continue
        if f"teacher-{t.teacher_key}" in errors:
            errors[t.id] = f"its teacher failed: {errors[f'teacher-{t.teacher_key}']}"
            continue
        cfg = copy.deepcopy(t.cfg)
        if study.kind == "loop":
            seed_loop_trial(study_dir / "teachers" / t.teacher_key, run)
            jobs.append({"id": t.id, "stage": "loop", "run_dir": str(run.root), "cfg": cfg})
            continue
        cfg["distill"]["teacher"] = teacher_of[t.teacher_key]
        jobs.append({"id": t.id, "stage": "trial", "run_dir": str(run.root), "cfg": cfg})
    return jobs


def run_study(study_file: str | Path, study_dir: str | Path, ray_address: Optional[str] = None,
              max_trials: Optional[int] = None, quiet: bool = True, teacher: Optional[str | Path] = None,
              only: Optional[dict] = None) -> dict:
    """Run (or resume) a study; return ``{"rows": [...], "errors": {...}}``.

    ``max_trials`` runs at most that many of the unfinished trials this time (a partial study, resumed by
    the next call). ``only`` (``{grid field: value}``) runs only the trials with those grid values, and only
    their teachers (:func:`~pipelines.study.spec.select_trials`): a column of a large study first. ``teacher`` (a checkpoint or a run's model folder) overrides the study file's
    ``teacher:``: every trial distills from it and no teacher stage runs."""
    from ..ray_runtime import init_ray

    study = load_study(study_file)
    if teacher is not None:
        study.teacher = _given_teacher(teacher)
    chosen = select_trials(study, only)  # a bad --only fails before anything is written
    study_dir = Path(study_dir).resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    _write_study_json(study, study_dir)  # the whole study, whatever runs now
    study.trials = chosen
    init_ray(ray_address, quiet=quiet)
    errors: dict[str, str] = {}
    teacher_of = _run_teachers(study, study_dir, errors)
    if study.kind == "loop":  # stage 1b: each teacher labels its unlabeled images once, for every trial
        for key in sorted({t.teacher_key for t in study.trials} - {k[len("teacher-"):] for k in errors}):
            label_once(study_dir / "teachers" / key, quiet=quiet)
    jobs = _trial_jobs(study, study_dir, errors, teacher_of)
    if max_trials is not None:
        jobs = jobs[:max_trials]
    errors.update(_fit(study, study_dir, "trials", jobs))
    write_json(study_dir / "errors.json", errors)
    rows = collect(study_dir)
    write_report(study_dir, rows)
    return {"rows": rows, "errors": errors}
