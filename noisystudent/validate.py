"""The field validators every config section and method uses: one set of rules and messages.

A config section is a dataclass; :func:`build` turns a YAML mapping into it: every key must be known,
every value must have the declared type (``Literal`` for a choice among fixed values, ``Optional`` for
null, lists, nested sections), and numbers must lie in the range a field declares with :func:`range`.
An error raises :class:`~noisystudent.errors.ConfigError` naming the dotted field
(``student.ladder[1].drop_path_rate``), which the CLI prints as one line with exit code 2.

Why hand-written and not a schema library: the stack is fixed by the user (no pydantic) and the rules are
few. Why field *kinds* (:func:`kind`, :func:`register_kind`): a value whose rules live elsewhere (a
distillation method, validated by the method registry) is validated by the module that owns those rules,
which registers itself here, so that this module and the config sections import nothing of it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal

from .errors import ConfigError

_KINDS: dict[str, Callable[[Any, str], Any]] = {}


def range(lo=None, hi=None, lo_open: bool = False, hi_open: bool = False) -> dict:  # noqa: A001 (validate.range)
    """Field metadata: the number must lie in ``[lo, hi]`` (``lo_open``/``hi_open``: the bound excluded;
    None: unbounded). Use as ``field(default=..., metadata=validate.range(0, 1))``."""
    return {"range": (lo, hi, lo_open, hi_open)}


def kind(name: str) -> dict:
    """Field metadata: the value is validated by the converter registered as ``name`` (:func:`register_kind`)."""
    return {"kind": name}


def register_kind(name: str, convert: Callable[[Any, str], Any]) -> None:
    """Validate fields of kind ``name`` with ``convert(value, dotted_field)``, which returns the value
    to store or raises :class:`ConfigError` naming the field."""
    _KINDS[name] = convert


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_range(value, bounds: tuple, name: str) -> None:
    """Raise :class:`ConfigError` on ``name`` when ``value`` lies outside ``bounds`` (see :func:`range`)."""
    lo, hi, lo_open, hi_open = bounds
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(name, f"must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ConfigError(name, f"must be {'<' if hi_open else '<='} {hi}, got {value!r}")


def _by_kind(value: Any, name: str, kind_name: str) -> Any:
    if kind_name not in _KINDS:
        raise RuntimeError(f"field {name} is validated by the {kind_name!r} kind, which nothing registered "
                           "(import the module that owns it, e.g. noisystudent.distill for 'method')")
    return _KINDS[kind_name](value, name)


def _scalar(value: Any, tp: Any, name: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"must be a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
    return value


def convert(value: Any, tp: Any, name: str, meta: dict) -> Any:
    """``value`` checked against type ``tp`` and the field metadata ``meta``, converted (an int for a
    float field becomes a float, a mapping for a section its dataclass); :class:`ConfigError` naming ``name``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return convert(value, [a for a in args if a is not type(None)][0], name, meta)
    if value is None:
        raise ConfigError(name, f"must be {_type_name(tp)}, got null")
    if "kind" in meta:
        return _by_kind(value, name, meta["kind"])
    if origin is Literal:
        if value not in args:
            raise ConfigError(name, f"must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"must be a list, got {type(value).__name__} {value!r}")
        (item_tp,) = args
        return [convert(v, item_tp, f"{name}[{i}]", {}) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, name)
    value = _scalar(value, tp, name)
    if "range" in meta:
        check_range(value, meta["range"], name)
    return value


def build(cls: type, data: Any, prefix: str) -> Any:
    """An instance of dataclass ``cls`` from mapping ``data`` (or an instance, re-validated), every field
    checked; ``prefix`` is the section's dotted name in messages (``""`` for the root)."""
    if isinstance(data, cls):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(where, f"unknown key; known keys here: {', '.join(fields)}")
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        kwargs[key] = convert(value, hints[key], name, dict(fields[key].metadata))
    return cls(**kwargs)
