"""The method registry: ``register_method`` / ``create_method`` / ``list_methods`` (timm's model registry,
for losses).

A method's parameters are a dataclass on the class (``Params``) whose defaults are its paper's; a config
names a method as a mapping ``{name: hinton, temperature: 4}``. :func:`resolve_method_config` validates it
with the same rules and messages as every other config field (unknown name or parameter, wrong type, out
of range: one line naming the field) and returns the full mapping, defaults filled in, which is what
the frozen ``config.yaml`` records.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from noisystudent import validate
from noisystudent.errors import ConfigError

_METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: make ``cls`` (a :class:`~noisystudent.distill.DistillMethod`) known by ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__name__} needs a class attribute 'name'")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"distillation method {name!r} registered twice")
    if not dataclasses.is_dataclass(getattr(cls, "Params", None)):
        raise TypeError(f"{cls.__name__}.Params must be a dataclass of the method's parameters")
    _METHODS[name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type:
    if name not in _METHODS:
        raise KeyError(name)
    return _METHODS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """The parameters of method ``name`` with their defaults."""
    return dataclasses.asdict(get_method(name).Params())


def resolve_method_config(value: Any, field: str) -> dict[str, Any]:
    """Validate ``{name: ..., <params>}`` (or a bare name) and return it with every default filled in."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(field, f"must be a mapping with a 'name' (one of {', '.join(list_methods())}), got {value!r}")
    name = value.get("name")
    if name not in _METHODS:
        raise ConfigError(f"{field}.name", f"unknown distillation method {name!r}; known: {', '.join(list_methods())}")
    cls = _METHODS[name]
    params = {k: v for k, v in value.items() if k not in ("name", "tap")}
    tap = value.get("tap")
    if tap is not None and (isinstance(tap, bool) or not isinstance(tap, int) or tap < 0):
        raise ConfigError(f"{field}.tap", f"must be an integer >= 0: the index, in the teachers list, of the teacher "
                                          f"whose stages the method taps; got {tap!r}")
    known = [f.name for f in dataclasses.fields(cls.Params)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", f"unknown parameter of method {name!r}; its parameters: "
                          f"{', '.join(known) or '(none)'}")
    built = validate.build(cls.Params, params, field)
    cls.check_params(built, field)
    # `tap` (any method): which member of an online teacher ensemble gives the teacher's stages and model
    # (noisystudent.distill.ensemble); recorded only when given, so configs without ensembles are unchanged
    return {"name": name, **dataclasses.asdict(built), **({"tap": tap} if tap is not None else {})}


def create_method(config: dict[str, Any], *, student_info: list[dict], teacher_info: Optional[list[dict]] = None,
                  num_classes: int, label_smoothing: float = 0.0, field: str = "method", student_spec=None):
    """Build the method a (resolved or raw) config names, with its extra modules sized for these models.

    ``student_info`` / ``teacher_info`` are the models' ``feature_info`` (channels and strides per stage)
    so a method can size a regressor or check that the stages it taps exist."""
    config = resolve_method_config(config, field)
    cls = _METHODS[config["name"]]
    params = cls.Params(**{k: v for k, v in config.items() if k not in ("name", "tap")})
    return cls(params, student_info=student_info, teacher_info=teacher_info, num_classes=num_classes,
               label_smoothing=label_smoothing, field=field, student_spec=student_spec)


# config sections declare their method fields as validate.kind("method"); this registry validates them
validate.register_kind("method", resolve_method_config)
