"""Studies: a grid of config overrides run as Ray Tune trials, each an ordinary distillation job.

A study file (YAML)::

    base: distill.yaml            # an experiment config: a path (relative to the study file) or a mapping
    set: {student.train.epochs: 2}  # optional: dotted fields every trial changes in the base
    grid:                         # every combination is a trial; keys are dotted config fields
      distill.method.name: [supervised, hinton]
      data.label_noise.rate: [0.0, 0.4]
      seed: [0, 1]
    variants:                     # optional: rows that each change a few fields (one factor at a time),
      - {student.ratio: 1}        # crossed with the grid (e.g. seeds); the base itself is a row too
      - {pseudo_labels.threshold: 0.0, pseudo_labels.per_class: null}
    random:                       # optional: num_samples draws of one value per field, seeded
      num_samples: 2
      seed: 0
      choices: {student.train.lr: [0.05, 0.1]}
    resources: {cpu: 1, gpu: 0}   # per trial; trials run in parallel up to what the cluster has
    max_concurrent: null          # cap on parallel trials (null: as many as resources allow)
    max_failures: 1               # retries of a failed trial before it is listed as failed
    teacher: null                 # a checkpoint every trial distills from; null: one teacher per data condition
    kind: distill                 # distill: a trial is one distillation job; loop: a trial is the Noisy Student
                                  # loop (student.generations generations) from its data condition's teacher

The study folder::

    DIR/study.json                the study as run (grid, trials and their overrides)
    DIR/teachers/<key>/           one run folder per data condition (``noisystudent teacher``'s step)
    DIR/trials/<id>/              one run folder per trial (``noisystudent distill``'s step)
    DIR/tune/                     Ray Tune's experiment folders (logs; not needed to resume)
    DIR/results.parquet           one row per trial; DIR/errors.json the trials that failed
    DIR/report/index.html         summary over seeds (best in bold), heatmap.png, failed trials

``kind: loop`` studies the loop's own ingredients (threshold, balancing, ratio, soft/hard, the rung's
method and init, steps): the teacher of each data condition labels its unlabeled images once, in the
driver, and every trial starts from a run folder holding that teacher and those generation-1 labels
(hard links), then runs select -> student -> evaluate -> promote for each generation as ``noisystudent
run`` does (later generations label inside the trial, which needs a CPU left beside the trial's own:
``pseudo_labels.num_actors: 1`` and ``max_concurrent: 1`` on 2 cores). Fields the labeling job reads
(``pseudo_labels.temperature``, ``topk``) cannot vary across the trials of one teacher.

Each ``distill`` trial is the ``distill`` step (:func:`pipelines.steps.distill`) on its own run folder, trained
in-process inside its Tune trial (``ray.workers: 0``: a trial is one Tune actor holding ``resources``;
it does not start Ray Train workers). Run folders are the source of truth: a trial whose folder says
done is not scheduled again, an unfinished one resumes from its ``last.pt``. So a killed study is
resumed by running the same command again; Tune's own experiment restore is not needed.

Setting ``<...>.method.name`` to another method drops the base method's parameters (they belong to the
old method); give ``<...>.method`` a mapping to set parameters too. List elements are addressed by index
(``student.ladder.0.name``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from noisystudent.config import read_mapping, to_dict
from noisystudent.errors import ConfigError, UserError
from noisystudent.io import read_json, write_json
from pipelines.config import ExperimentConfig, config_from_dict

from .state import RunDir
from .steps import DISTILL, TEACHER, generation_of, step_name

TEACHER_STEP = step_name(0, TEACHER)
TRIAL_STEP = DISTILL
# data fields holding paths: relative ones are resolved against the driver's working directory when the
# study is loaded, because Tune runs each trial in its own working directory
DATA_PATH_FIELDS = ("root", "labeled", "unlabeled", "test", "val")
STUDY_KEYS = {"base", "set", "name", "grid", "random", "resources", "max_concurrent", "max_failures", "teacher", "kind",
              "variants"}
LOOP_STEP = step_name(1, "label")
# pseudo_labels fields the labeling job reads: the labels every loop trial of a teacher shares depend on them
LABEL_FIELDS = ("temperature", "topk")


@dataclass
class Trial:
    id: str
    overrides: dict
    cfg: dict  # the validated experiment config (to_dict), ray.workers 0, distill.teacher set when run
    teacher_key: str


@dataclass
class Study:
    name: str
    base: dict
    grid: dict
    trials: list[Trial]
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent: Optional[int] = None
    max_failures: int = 1
    teacher: Optional[str] = None
    base_cfg: dict = field(default_factory=dict)  # the validated base (to_dict), ray.workers 0
    kind: str = "distill"

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys(k for t in self.trials for k in t.overrides))


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set a dotted field in a nested mapping; integer parts index lists; ``method.name`` resets params."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(".".join(parts[: i + 1]), f"no list element {part}")
            node = node[int(part)]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(dotted, "cannot set a field inside a non-mapping")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(dotted, f"no list element {last}")
        node[int(last)] = value
    elif last == "name" and len(parts) >= 2 and parts[-2] == "method" and node.get("name") != value:
        node.clear()
        node["name"] = value
    else:
        node[last] = value


def _variant_name(overrides: dict) -> str:
    """A variant's row label: its fields and values (``base`` for the study's base)."""
    if not overrides:
        return "base"
    def short(v):
        return v.get("name", v) if isinstance(v, dict) else v

    return ", ".join(f"{k.split('.', 1)[-1] if k.count('.') else k}={short(v)}" for k, v in overrides.items())


def _digest(obj: Any, n: int = 10) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _slug(overrides: dict) -> str:
    parts = []
    for k, v in overrides.items():
        if isinstance(v, dict):
            v = "-".join(str(x) for x in [v.get("name", "")] + [f"{a}{b}" for a, b in v.items() if a != "name"])
        short = k.split(".")[-1] if k.split(".")[-1] not in ("name", "rate", "ratio") else "_".join(k.split(".")[-2:])
        parts.append(f"{short}={v}")
    s = ",".join(parts)
    return "".join(c if c.isalnum() or c in "=,._-" else "_" for c in s)[:80]


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; every trial's config is validated now, naming the trial's field."""
    path = Path(path)
    spec = read_mapping(path, "study file", "<study>")
    unknown = sorted(set(spec) - STUDY_KEYS)
    if unknown:
        raise ConfigError(f"study.{unknown[0]}", f"unknown key; known: {', '.join(sorted(STUDY_KEYS))}")
    base = spec.get("base")
    if isinstance(base, str):
        bpath = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not bpath.is_file():
            raise UserError(f"study.base: config file not found: {bpath}")
        base = yaml.safe_load(bpath.read_text(encoding="utf-8")) or {}
    if not isinstance(base, dict):
        raise ConfigError("study.base", "must be a config file path or a mapping")
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError("study.set", "must map dotted config fields to values")
    for k, v in fixed.items():
        set_dotted(base, k, v)
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError("study.grid", "must map dotted config fields to non-empty lists of values")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    variants = spec.get("variants")
    if variants is not None:
        if not isinstance(variants, list) or any(not isinstance(v, dict) for v in variants):
            raise ConfigError("study.variants", "must be a list of mappings of dotted config fields to values")
        rows = [{}] + [dict(v) for v in variants]
        # grid-major: every variant of the first seed runs before the second seed's (a partial study covers all rows)
        combos = [{"variant": _variant_name(v), **v, **c} for c in combos for v in rows]
    rnd = spec.get("random")
    if rnd:
        choices = rnd.get("choices") or {}
        if not isinstance(choices, dict) or any(not isinstance(v, list) or not v for v in choices.values()):
            raise ConfigError("study.random.choices", "must map dotted config fields to non-empty lists of values")
        rng = random.Random(int(rnd.get("seed", 0)))
        draws = [{k: rng.choice(v) for k, v in choices.items()} for _ in range(int(rnd.get("num_samples", 1)))]
        combos = [{**c, **d} for c in combos for d in draws]
    teacher = spec.get("teacher")
    kind = spec.get("kind", "distill")
    if kind not in ("distill", "loop"):
        raise ConfigError("study.kind", f"must be distill or loop, got {kind!r}")
    if kind == "loop" and teacher:
        raise ConfigError("study.teacher", "a loop study trains its teachers (one per data condition); leave it out")
    resources = {"cpu": 1, "gpu": 0, **(spec.get("resources") or {})}
    trials, seen = [], set()

    def resolve(overrides: dict) -> dict:
        data = copy.deepcopy(base)
        for k, v in overrides.items():
            if k != "variant":
                set_dotted(data, k, v)
        data.setdefault("ray", {})["workers"] = 0  # a trial trains inside its Tune actor
        if kind == "distill":
            data["student"] = {**(data.get("student") or {}), "generations": 0}
        try:
            cfg = config_from_dict(data)
        except UserError as exc:
            raise UserError(f"study trial {overrides}: {exc}") from None
        cfg.distill.teacher = None
        for name in DATA_PATH_FIELDS:  # a trial runs in its own working directory (and maybe on another node)
            value = getattr(cfg.data, name)
            if value and not Path(value).is_absolute():
                setattr(cfg.data, name, os.path.abspath(value))
        if resources.get("gpu", 0) == 0 and cfg.device == "auto":
            cfg.device = "cpu"
        return to_dict(cfg)

    base_cfg = resolve({})
    for overrides in combos:
        d = resolve(overrides)
        cfg = config_from_dict(d)
        tid = f"{_slug(overrides)}-{_digest(d, 6)}" if overrides else _digest(d, 8)
        if tid in seen:
            continue
        seen.add(tid)
        tkey = teacher_key(cfg, base.get("seed", 0))
        if kind == "loop":
            for f in LABEL_FIELDS:
                if d["pseudo_labels"][f] != base_cfg["pseudo_labels"][f]:
                    raise ConfigError(f"study.grid.pseudo_labels.{f}", "the labels of a loop study are made once per "
                                      "teacher; vary it in separate studies")
        trials.append(Trial(tid, overrides, d, tkey))
    return Study(name=str(spec.get("name") or path.stem), base=base, grid=grid, trials=trials, resources=resources,
                 max_concurrent=spec.get("max_concurrent"), max_failures=int(spec.get("max_failures", 1)),
                 teacher=str(Path(teacher).resolve()) if teacher else None, base_cfg=base_cfg, kind=kind)


def teacher_key(cfg: ExperimentConfig, seed: int) -> str:
    """Trials with the same data condition (and teacher model and budget) share one teacher."""
    d = to_dict(cfg)
    return _digest({"data": d["data"], "teacher": d["teacher"], "teacher_train": d["teacher_train"], "seed": seed,
                    "device": d["device"]})


def _teacher_cfg(study: Study, trial: Trial) -> dict:
    """The base config with the trial's data condition, teacher model and budget: every trial of one data
    condition gives the same teacher config (its run folder's frozen config never changes)."""
    d = copy.deepcopy(study.base_cfg)
    for key in ("data", "teacher", "teacher_train", "device"):
        d[key] = copy.deepcopy(trial.cfg[key])
    d["name"] = f"teacher-{trial.teacher_key}"
    return d


# --------------------------------------------------------------------------------------------------
# the Tune side


def _run_job(config: dict) -> None:
    """A Tune function trainable: one teacher or distill step on its run folder (resumes from it)."""
    from ray import tune

    from . import steps

    config = config["job"]  # Tune's param space is {"job": grid_search(specs)}
    run = RunDir(config["run_dir"])
    t0 = time.perf_counter()
    try:
        cfg = run.freeze_config(config_from_dict(config["cfg"]))
        if config["stage"] == "teacher":
            m = steps.train_teacher(run, cfg, progress=False)
        elif config["stage"] == "loop":
            from .loop import run_all

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


def run_study(study_file: str | Path, study_dir: str | Path, ray_address: Optional[str] = None,
              max_trials: Optional[int] = None, quiet: bool = True, teacher: Optional[str | Path] = None) -> dict:
    """Run (or resume) a study; return ``{"rows": [...], "errors": {...}}``.

    ``max_trials`` runs at most that many of the unfinished trials this time (a partial study, resumed by
    the next call). ``teacher`` (a checkpoint or a run's model folder) overrides the study file's
    ``teacher:``: every trial distills from it and no teacher stage runs."""
    from .ray_runtime import init_ray

    study = load_study(study_file)
    if teacher is not None:
        from noisystudent.checkpoint import load_checkpoint

        try:  # the checkpoint's own rules (a model.pt, or a folder holding one; a real checkpoint) before Ray starts
            load_checkpoint(teacher)
        except UserError as exc:
            raise UserError(f"--teacher {teacher}: no checkpoint there ({exc})") from None
        study.teacher = str(Path(teacher).resolve())
    study_dir = Path(study_dir).resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    write_json(study_dir / "study.json", {"name": study.name, "kind": study.kind, "grid": study.grid,
                                          "resources": study.resources,
                                          "teacher": study.teacher, "base": study.base,
                                          "trials": [{"id": t.id, "overrides": t.overrides, "teacher_key": t.teacher_key,
                                                      "generations": t.cfg["student"]["generations"]}
                                                     for t in study.trials]})
    init_ray(ray_address, quiet=quiet)
    errors: dict[str, str] = {}

    # stage 1: one teacher per data condition (skipped with a given teacher)
    teacher_of: dict[str, str] = {}
    if study.teacher:
        teacher_of = {t.teacher_key: study.teacher for t in study.trials}
    else:
        jobs, seen = [], set()
        for t in study.trials:
            tdir = study_dir / "teachers" / t.teacher_key
            teacher_of[t.teacher_key] = str(RunDir(tdir).teacher_dir())
            if t.teacher_key in seen or RunDir(tdir).is_done(TEACHER_STEP):
                continue
            seen.add(t.teacher_key)
            jobs.append({"id": f"teacher-{t.teacher_key}", "stage": "teacher", "run_dir": str(tdir),
                         "cfg": _teacher_cfg(study, t)})
        terr = _fit(study, study_dir, "teachers", jobs)
        errors.update(terr)

    if study.kind == "loop":  # stage 1b: each teacher labels its unlabeled images once, for every trial
        for key in sorted({t.teacher_key for t in study.trials} - {k[len("teacher-"):] for k in errors}):
            label_once(study_dir / "teachers" / key, quiet=quiet)

    # stage 2: the trials whose run folder is not finished
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
    if max_trials is not None:
        jobs = jobs[:max_trials]
    errors.update(_fit(study, study_dir, "trials", jobs))
    write_json(study_dir / "errors.json", errors)
    rows = collect(study_dir)
    write_report(study_dir, rows)
    return {"rows": rows, "errors": errors}


# --------------------------------------------------------------------------------------------------
# loop trials


def label_once(teacher_dir: Path, quiet: bool = True) -> None:
    """Generation 1's labels in the teacher's run folder (``gen-1/labels``), made once for every loop trial."""
    from . import steps

    run = RunDir(teacher_dir)
    if not run.is_done(LOOP_STEP):
        steps.label(run, run.load_config(), 1, progress=not quiet)


def seed_loop_trial(teacher_dir: Path, run: RunDir) -> None:
    """Start a loop trial's run folder from the teacher's: its model and generation-1 labels (hard links, a
    copy where there are none) with their state entries. The trial's own config freezes on its first step."""
    from noisystudent.io import link_folder

    if run.is_done(LOOP_STEP):
        return
    src = RunDir(teacher_dir)
    for folder in (src.teacher_dir(), src.labels_dir(1)):  # the model, not a leftover last.pt
        link_folder(folder, run.root / folder.relative_to(src.root),
                    keep=lambda f: not f.name.endswith(".pt") or f.name == "model.pt")
    st = run.state()
    for step in (TEACHER_STEP, LOOP_STEP):
        st.setdefault("steps", {})[step] = {**src.step_info(step), "seeded_from": str(src.root)}
    run._write_state(st)


def trial_done(run: RunDir, kind: str, cfg: dict) -> bool:
    if kind == "loop":
        n = int(cfg["student"]["generations"])
        return run.state_path.is_file() and (n == 0 or run.is_done(step_name(n, "promote")) or "stopped" in run.state())
    return run.is_done(TRIAL_STEP)


def loop_result(run: RunDir) -> dict:
    """A loop trial's figures: the last finished generation's test/validation accuracy and fidelity, every
    generation's test accuracy (``gen<g>_test_acc``), the teacher's, and how many students were promoted."""
    from .loop import status_rows

    rows = [r for r in status_rows(run) if isinstance(r["generation"], int)]
    done = [r for r in rows if r["test_acc"] is not None]
    last = done[-1]
    m = read_json(run.model_dir(last["generation"]) / "metrics.json")
    out = {"test_acc": last["test_acc"], "val_acc": last.get("val_acc"), "fidelity": m.get("test_fidelity"),
           "teacher_test_acc": rows[0]["test_acc"], "generations_done": last["generation"],
           "promoted": sum(r.get("promoted") == "student" for r in rows[1:])}
    out.update({f"gen{r['generation']}_test_acc": r["test_acc"] for r in done})
    return out


# --------------------------------------------------------------------------------------------------
# results


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


def summary(rows: list[dict], seed_fields: Optional[list[str]] = None):
    """Finished trials aggregated over seeds: mean and std of test accuracy and fidelity per combination of
    the other grid fields (a pandas DataFrame)."""
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
    agg = {"test_acc": ["mean", "std"], "fidelity": ["mean", "std"], "trial": "count"}
    g = df.groupby(keys, dropna=False).agg(agg) if keys else df.assign(_all="all").groupby("_all").agg(agg)
    g.columns = ["test_acc_mean", "test_acc_std", "fidelity_mean", "fidelity_std", "seeds"]
    return g.reset_index()


def format_summary(table) -> str:
    if table.empty:
        return "no finished trials"

    def pm(m, s):
        if m is None or m != m:
            return "-"
        return f"{m:.4f} ± {s:.4f}" if s == s else f"{m:.4f}"

    keys = [c for c in table.columns if c not in ("test_acc_mean", "test_acc_std", "fidelity_mean", "fidelity_std", "seeds")]
    head = keys + ["test_acc", "fidelity", "seeds"]
    body = [[str(r[k]) for k in keys] + [pm(r["test_acc_mean"], r["test_acc_std"]), pm(r["fidelity_mean"], r["fidelity_std"]),
                                         str(r["seeds"])] for _, r in table.iterrows()]
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


def write_report(study_dir: str | Path, rows: list[dict]) -> Path:
    """``DIR/report/index.html``: the summary over seeds (best mean per column in bold), a heatmap of mean
    test accuracy over the first two grid fields (``heatmap.png``), the failed trials and every trial."""
    import html

    import pandas as pd

    from noisystudent.io import atomic_path, write_text

    out = Path(study_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = summary(rows)
    parts = ["<html><head><meta charset='utf-8'><title>study</title><style>td,th{padding:2px 8px;text-align:left}"
             "</style></head><body><h1>Study</h1>"]
    if not table.empty:
        keys = [c for c in table.columns if c not in ("test_acc_mean", "test_acc_std", "fidelity_mean", "fidelity_std", "seeds")]
        best = {c: table[f"{c}_mean"].max() for c in ("test_acc", "fidelity")}
        parts.append("<h2>Mean ± std over seeds</h2><table><tr>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
                     + "<th>test_acc</th><th>fidelity</th><th>seeds</th></tr>")
        for _, r in table.iterrows():
            cells = [html.escape(str(r[k])) for k in keys]
            for c in ("test_acc", "fidelity"):
                m, s = r[f"{c}_mean"], r[f"{c}_std"]
                txt = "-" if m != m else (f"{m:.4f} ± {s:.4f}" if s == s else f"{m:.4f}")
                cells.append(f"<b>{txt}</b>" if m == best[c] else txt)
            cells.append(str(r["seeds"]))
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        if len(keys) >= 2:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            piv = table.pivot_table(index=keys[0], columns=keys[1], values="test_acc_mean")
            fig, ax = plt.subplots(figsize=(1.2 * piv.shape[1] + 3, 0.5 * piv.shape[0] + 2))
            im = ax.imshow(piv.values, cmap="viridis")
            ax.set_xticks(range(piv.shape[1]), [str(c) for c in piv.columns])
            ax.set_yticks(range(piv.shape[0]), [str(i) for i in piv.index])
            ax.set_xlabel(keys[1])
            ax.set_ylabel(keys[0])
            for i in range(piv.shape[0]):
                for j in range(piv.shape[1]):
                    v = piv.values[i, j]
                    if v == v:
                        ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w")
            fig.colorbar(im, label="test accuracy (mean over seeds)")
            fig.tight_layout()
            with atomic_path(out / "heatmap.png") as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)
            parts.append("<h2>Test accuracy</h2><img src='heatmap.png'>")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        parts.append("<h2>Failed trials</h2><ul>" + "".join(f"<li>{html.escape(r['trial'])}: {html.escape(str(r['error']))}</li>"
                                                          for r in failed) + "</ul>")
    parts.append("<h2>Trials</h2>" + pd.DataFrame(rows).to_html(index=False, na_rep="-") + "</body></html>")
    write_text(out / "index.html", "\n".join(parts))
    return out / "index.html"
