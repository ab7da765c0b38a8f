"""The one way a command turns a config (a file, or a run folder's frozen one) and its flags into a
validated config: every flag becomes a dotted override, and the overridden mapping goes through the
config's validator, so ``--workers -1`` and ``--set ray.workers=-1`` fail alike (exit 2, naming the field).

Flags win over the file; a flag that was not given (None) is not an override.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import click
import yaml

if TYPE_CHECKING:
    from pipelines.anomaly.config import AnomalyConfig
    from pipelines.config import ExperimentConfig
    from pipelines.state import RunDir

# the Ray flags (``--ray-address``, ``--workers``, ``--gpus-per-worker``) and the config field each sets
RAY_FLAGS = {"ray_address": "ray.address", "workers": "ray.workers", "gpus_per_worker": "ray.gpus_per_worker"}


def parse_sets(values: tuple[str, ...]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as ``{dotted key: YAML value}``; click's usage error (exit 2) when malformed."""
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise click.BadParameter(f"value of {key} is not valid YAML: {raw!r}", param_hint="--set") from None
    return out


def overrides(sets: tuple[str, ...] = (), fields: Optional[dict[str, Any]] = None, **ray_flags: Any) -> dict[str, Any]:
    """The dotted overrides of ``--set`` items, then the Ray flags (named as in :data:`RAY_FLAGS`), then
    ``fields`` (other flags by dotted field); later ones win, flags not given are left out."""
    unknown = set(ray_flags) - set(RAY_FLAGS)
    if unknown:
        raise TypeError(f"not a Ray flag: {sorted(unknown)}")
    given = {RAY_FLAGS[k]: v for k, v in ray_flags.items()}
    given.update(fields or {})
    flags = {k: v for k, v in given.items() if v is not None}
    # a flag that sets a whole mapping (``--method hinton`` is ``distill.method: {name: hinton}``) is refined by
    # --set items below it (``--set distill.method.alpha=0.5``), applied after it so they are not wiped out;
    # a key the flag itself gives still wins
    out, refine = {}, {}
    for k, v in parse_sets(sets).items():
        parent = _below(k, flags)
        if parent is None:
            out[k] = v
        elif isinstance(flags[parent], dict) and k[len(parent) + 1:].split(".")[0] not in flags[parent]:
            refine[k] = v
    out.update(flags)
    out.update(refine)
    return out


def _below(key: str, flags: dict[str, Any]) -> Optional[str]:
    """The flag's dotted key that ``key`` lies below (``distill.method`` for ``distill.method.alpha``), if any."""
    return next((f for f in flags if key.startswith(f + ".")), None)


def load_experiment(config: str, sets: tuple[str, ...] = (), fields: Optional[dict[str, Any]] = None,
                    **ray_flags: Any) -> "ExperimentConfig":
    """The experiment file ``config`` with ``--set`` items and flags applied, validated."""
    from pipelines.config import load_config

    return load_config(config, overrides(sets, fields, **ray_flags))


def run_experiment(run: "RunDir", **ray_flags: Any) -> "ExperimentConfig":
    """The frozen config of the run folder ``run`` with the (runtime) Ray flags applied, validated."""
    from noisystudent.config import apply_overrides, to_dict
    from pipelines.config import config_from_dict

    cfg = run.load_config()
    changes = overrides(**ray_flags)
    return config_from_dict(apply_overrides(to_dict(cfg), changes)) if changes else cfg


def load_anomaly_experiment(config: str, sets: tuple[str, ...] = (), **ray_flags: Any) -> "AnomalyConfig":
    """An anomaly config file with ``--set`` items and the Ray flags applied, validated."""
    from pipelines.anomaly.config import load_anomaly_config

    return load_anomaly_config(config, overrides(sets, **ray_flags))
