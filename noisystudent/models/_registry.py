"""The model registry: names -> entry points, filled at import time by ``@register_model``.

Kept apart from the architectures (timm's layout) so a model module only needs the decorator, and the
factory can list every name in an error message. Besides exact names, a module may register a *family*:
a resolver that turns a parametric name (``wrn_22_8``) into an entry point, or returns None.
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional, Sequence, TypeVar

from torch import nn

__all__ = ["register_model", "register_family", "register_lazy", "model_entrypoint", "is_model", "list_models",
           "list_families"]

EntryPoint = Callable[..., nn.Module]
Resolver = Callable[[str], Optional[EntryPoint]]
F = TypeVar("F", bound=EntryPoint)

_model_entrypoints: dict[str, EntryPoint] = {}
_families: dict[str, Resolver] = {}


def register_model(fn: F) -> F:
    """Register ``fn`` under its own ``__name__``; a second model of the same name is a programming error."""
    name = fn.__name__
    if name in _model_entrypoints and getattr(_model_entrypoints[name], "lazy_module", None) != fn.__module__:
        raise ValueError(f"model '{name}' is registered twice")
    _model_entrypoints[name] = fn  # (replacing the stand-in of register_lazy when its module is imported)
    return fn


def register_lazy(module: str, names: Sequence[str]) -> None:
    """Register ``names``, the models of ``module``, without importing it: each name's entry point imports
    ``module`` (whose ``@register_model`` then replaces the stand-ins) and builds the real model.

    Why: torchvision's families need ``import torchvision`` (1.5-3.5 s in a fresh process on a 2-core CPU);
    a process that only builds the small CIFAR models, like every labeling actor, should not pay for it."""
    for name in names:
        if name in _model_entrypoints:
            raise ValueError(f"model '{name}' is registered twice")
        _model_entrypoints[name] = _stand_in(module, name)


def _stand_in(module: str, name: str) -> EntryPoint:
    def entry(**kwargs) -> nn.Module:
        importlib.import_module(module)
        real = _model_entrypoints[name]
        if real is entry:
            raise ValueError(f"module {module} does not register model '{name}'")
        return real(**kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.lazy_module = module  # type: ignore[attr-defined]
    return entry


def register_family(description: str) -> Callable[[Resolver], Resolver]:
    """Register a resolver for parametric names; ``description`` tells users the grammar (shown in errors)."""

    def decorator(resolver: Resolver) -> Resolver:
        _families[description] = resolver
        return resolver

    return decorator


def model_entrypoint(name: str) -> EntryPoint | None:
    """The entry point building ``name``: a registered name first, then any family that accepts it."""
    if name in _model_entrypoints:
        return _model_entrypoints[name]
    for resolver in _families.values():
        entry = resolver(name)
        if entry is not None:
            return entry
    return None


def is_model(name: str) -> bool:
    """Whether :func:`create_model` accepts ``name`` (registered or parsed by a family)."""
    return model_entrypoint(name) is not None


def list_models() -> list[str]:
    """Registered names, sorted. Family names (any ``wrn_D_K``) are not enumerable and not listed."""
    return sorted(_model_entrypoints)


def list_families() -> list[str]:
    """The grammars of parametric names, as described by their modules."""
    return sorted(_families)
