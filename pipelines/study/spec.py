"""The study file: read, validate and expand into trials, each with its validated experiment config.

Every trial's config is validated when the study is loaded (naming the trial and its field), so a
study with a bad combination fails before Ray starts.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from noisystudent.config import read_mapping, to_dict
from noisystudent.errors import ConfigError, UserError
from pipelines.config import ExperimentConfig, config_from_dict

from ..steps import DISTILL, TEACHER, step_name

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


def _grid_value(overrides: dict, key: str) -> tuple[bool, Any]:
    """``(found, value)`` of ``key`` in a trial's overrides: a grid field itself, or a field inside a mapping
    value of one (``distill.method.mode`` inside ``distill.method: {name: rkd, mode: distance}``)."""
    if key in overrides:
        return True, overrides[key]
    for field_, value in overrides.items():
        if key.startswith(field_ + ".") and isinstance(value, dict):
            node: Any = value
            for part in key[len(field_) + 1:].split("."):
                if not isinstance(node, dict) or part not in node:
                    return True, None
                node = node[part]
            return True, node
    return False, None


def parse_only(items) -> dict[str, Any]:
    """``--only FIELD=VALUE`` items as ``{field: value}`` (values read as YAML: ``0.2`` is a number); a
    malformed item is a :class:`UserError` naming it."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise UserError(f"--only: expected FIELD=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
    return out


def select_trials(study: "Study", only: Optional[dict[str, Any]]) -> list[Trial]:
    """The trials whose grid values match every ``{field: value}`` of ``only`` (all when empty): one column
    of a large study run first, the rest left pending for a later run (trial ids do not change). A field that
    is not one of the study's grid fields, or a value that no trial has, is a :class:`UserError` naming it."""
    if not only:
        return list(study.trials)
    chosen = list(study.trials)
    for key, want in only.items():
        if not any(_grid_value(t.overrides, key)[0] for t in study.trials):
            raise UserError(f"--only {key}: not a grid field of study {study.name!r} (its fields: "
                            f"{', '.join(study.fields) or 'none'})")
        values = [_grid_value(t.overrides, key)[1] for t in study.trials]
        if not any(_same(v, want) for v in values):
            seen = ", ".join(dict.fromkeys(str(v) for v in values))
            raise UserError(f"--only {key}={want}: no trial has this value (values: {seen})")
        chosen = [t for t in chosen if _same(_grid_value(t.overrides, key)[1], want)]
    return chosen


def _same(value: Any, want: Any) -> bool:
    """A grid value equals a ``--only`` value: numbers by value (``10`` = ``10.0``), the rest as written."""
    if isinstance(value, (int, float)) and isinstance(want, (int, float)) and not isinstance(value, bool):
        return float(value) == float(want)
    return value == want or str(value) == str(want)


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


def _read_base(spec: dict, path: Path) -> dict:
    """``base:`` (a config file relative to the study file, or a mapping) with ``set:`` applied."""
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
    return base


def _combinations(spec: dict) -> tuple[dict, list[dict]]:
    """``(grid, overrides of every trial)``: the grid's product, crossed with ``variants`` and ``random`` draws."""
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
    return grid, combos


def _kind_and_teacher(spec: dict) -> tuple[str, Optional[str]]:
    teacher = spec.get("teacher")
    kind = spec.get("kind", "distill")
    if kind not in ("distill", "loop"):
        raise ConfigError("study.kind", f"must be distill or loop, got {kind!r}")
    if kind == "loop" and teacher:
        raise ConfigError("study.teacher", "a loop study trains its teachers (one per data condition); leave it out")
    return kind, teacher


def _resolve(base: dict, overrides: dict, kind: str, resources: dict) -> dict:
    """One trial's validated config (``to_dict``): the base with ``overrides``, trained inside its Tune actor,
    with data paths made absolute on the driver and ``device: auto`` as cpu when trials get no GPU."""
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


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; every trial's config is validated now, naming the trial's field."""
    path = Path(path)
    spec = read_mapping(path, "study file", "<study>")
    unknown = sorted(set(spec) - STUDY_KEYS)
    if unknown:
        raise ConfigError(f"study.{unknown[0]}", f"unknown key; known: {', '.join(sorted(STUDY_KEYS))}")
    base = _read_base(spec, path)
    grid, combos = _combinations(spec)
    kind, teacher = _kind_and_teacher(spec)
    resources = {"cpu": 1, "gpu": 0, **(spec.get("resources") or {})}
    trials, seen = [], set()
    base_cfg = _resolve(base, {}, kind, resources)
    for overrides in combos:
        d = _resolve(base, overrides, kind, resources)
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
