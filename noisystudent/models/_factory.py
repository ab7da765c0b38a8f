"""``create_model``: the one way the rest of the project builds a network."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from noisystudent.errors import UserError
from noisystudent.models._registry import list_families, list_models, model_entrypoint

__all__ = ["create_model", "model_num_params"]


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    drop_rate: Optional[float] = None,
    drop_path_rate: Optional[float] = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name`` with random weights.

    ``drop_rate`` (dropout before the classifier) and ``drop_path_rate`` (stochastic depth, the rate of the
    deepest block) left as None are not passed, so the model's default applies (0 for every model here);
    this lets callers forward optional settings without knowing which models take them (timm's rule).
    Other ``kwargs`` go to the architecture's builder. The model is returned in training mode.

    Raises:
        UserError: unknown name (the message lists the known ones), or an argument out of range.
    """
    entry = model_entrypoint(name) if isinstance(name, str) else None
    if entry is None:
        known = ", ".join(list_models())
        families = "; ".join(list_families())
        raise UserError(f"unknown model {name!r}; known models: {known}; also {families}")
    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"model {name!r}: {arg} must be an integer >= 1, got {value!r}")
    rates = {"drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    for arg, value in rates.items():
        if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
            raise UserError(f"model {name!r}: {arg} must be in [0, 1), got {value!r}")
    kwargs.update({arg: float(value) for arg, value in rates.items() if value is not None})
    return entry(num_classes=num_classes, in_chans=in_chans, **kwargs)


def model_num_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``), for logs and model ladders."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
