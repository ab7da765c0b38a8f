"""A config frozen in a run folder's ``config.yaml``: written at the first call, after which a call with
a different config is refused, naming the changed fields, while the *runtime* fields (where and how it
runs) may change and are written back.

Experiment runs (:class:`pipelines.state.RunDir`) and anomaly detector runs
(:mod:`pipelines.anomaly.train`) freeze their configs through :class:`FrozenConfig`; each says which
fields are runtime ones and how its refusal reads. ``legacy`` fields were added after runs could have
been frozen: a ``config.yaml`` without one loads with the value that keeps that run doing what it did,
and a new config is compared as if it had that value too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from noisystudent.config import dump_config, to_dict
from noisystudent.io import write_text

_ABSENT = object()


def _get(d: Any, dotted: str) -> Any:
    """The value at ``dotted`` in nested dicts, ``_ABSENT`` when a key on the way is missing."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return _ABSENT
        d = d[part]
    return d


def value_at(d: Any, dotted: str) -> Any:
    """The value at ``dotted`` in nested dicts, None when missing (what a refusal message shows)."""
    v = _get(d, dotted)
    return None if v is _ABSENT else v


def strip(d: dict, fields: tuple[str, ...]) -> dict:
    """A JSON-plain copy of ``d`` without the dotted ``fields``."""
    d = json.loads(json.dumps(d))
    for dotted in fields:
        node = d
        *parents, key = dotted.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(key, None)
    return d


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted fields where nested dicts ``a`` and ``b`` differ, sorted within each level."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix]


def digest(cfg: Any, runtime: tuple[str, ...]) -> str:
    """A short hash of a config's non-runtime fields: equal digests, same experiment."""
    blob = json.dumps(strip(to_dict(cfg), runtime), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class FrozenConfig:
    """The ``config.yaml`` at ``path``: ``from_dict`` validates a mapping into the config, ``runtime`` lists
    the dotted fields that may change between calls, ``legacy`` maps fields added later to the value an
    older file stands for."""

    path: Path
    from_dict: Callable[[dict], Any]
    runtime: tuple[str, ...]
    legacy: Mapping[str, Any] = field(default_factory=dict)

    def exists(self) -> bool:
        return self.path.is_file()

    def raw(self) -> dict:
        return yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}

    def legacy_fields(self, raw: dict) -> list[str]:
        """The :attr:`legacy` fields ``raw`` does not have (it predates them)."""
        return [dotted for dotted in self.legacy if _get(raw, dotted) is _ABSENT]

    def load(self) -> Any:
        """The frozen config, with the legacy values of the fields it predates."""
        raw = self.raw()
        for dotted in self.legacy_fields(raw):
            node = raw
            *parents, key = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[key] = self.legacy[dotted]
        return self.from_dict(raw)

    def changes(self, cfg: Any) -> tuple[Any, list[str]]:
        """``(frozen config, fields of cfg that differ from it outside the runtime ones)``. ``cfg`` takes the
        frozen values of the legacy fields the file predates, so such a run keeps its behaviour."""
        old = self.load()
        for dotted in self.legacy_fields(self.raw()):
            *parents, key = dotted.split(".")
            src, dst = old, cfg
            for p in parents:
                src, dst = getattr(src, p), getattr(dst, p)
            setattr(dst, key, getattr(src, key))
        return old, diff(strip(to_dict(old), self.runtime), strip(to_dict(cfg), self.runtime))

    def write(self, cfg: Any) -> None:
        """Write ``cfg`` as the frozen config (atomically), runtime fields included."""
        write_text(self.path, dump_config(cfg))
