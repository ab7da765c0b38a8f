"""``create_model``: the one way the rest of the project builds a network."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from noisystudent.errors import UserError
from noisystudent.models._registry import list_families, list_models, model_entrypoint
from noisystudent.models.layers import StageIndices, feature_take_indices

__all__ = ["create_model", "model_num_params", "stage_info", "to_memory_format"]


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


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` with its 4-D weights in the channels-last (NHWC) memory format when ``channels_last``
    (in place, returned for chaining); 1-D and 2-D weights, and a model without 4-D ones, are unchanged.

    Why: oneDNN's convolutions on a CPU and cuDNN's tensor-core kernels on a GPU run fastest on NHWC data;
    a channels-last model makes every convolution take and give NHWC, converting the input once at the
    first layer. Measured on this project's 2-core CPU (docs/engine.md#memory-format): a ResNet-14 training
    step 1.31x, its inference 1.33-1.67x, WRN-16-2 1.14x, EfficientNet-B0 1.19x; the numbers are the same
    to float rounding."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def model_num_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``), for logs and model ladders."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def stage_info(
    name: str, in_chans: int = 3, image_size: int | tuple[int, int] = 32, indices: StageIndices = None
) -> list[dict[str, Any]]:
    """``feature_info`` of model ``name`` for ``image_size`` inputs, each entry with ``size``: the stage's
    ``(height, width)``; only the stages ``indices`` asks for (as in ``forward_intermediates``), all when None.

    For validating a config before any training: which stages exist, their channels, and which pairs
    share a resolution (FSP needs equal sizes; a stride of 32 leaves 1x1 maps on 28x28 images). The
    model is built on the meta device and run on a meta tensor, so no weights are initialised or
    allocated and no arithmetic runs: well under a second even for a ConvNeXt, on a machine of any size.

    Raises:
        UserError: unknown model, a bad size, an image too small for the model, or a stage index the
            model does not have (the message names the model and its stages).
    """
    sizes = (image_size, image_size) if isinstance(image_size, int) else image_size
    sizes = tuple(sizes) if isinstance(sizes, (tuple, list)) else ()
    if len(sizes) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes):
        raise UserError(f"model {name!r}: image size must be an integer >= 1 or a pair of them, got {image_size!r}")
    with torch.device("meta"):
        model = create_model(name, num_classes=1, in_chans=in_chans).eval()
    info = model.feature_info
    try:
        take = feature_take_indices(len(info), indices)
    except IndexError:
        modules = ", ".join(f"{i}: {stage['module']}" for i, stage in enumerate(info))
        raise UserError(
            f"model {name!r} has {len(info)} stages ({modules}; negative indices count from the end), "
            f"so stage indices {indices!r} do not exist"
        ) from None
    try:
        with torch.no_grad():
            _, outputs = model.forward_intermediates(torch.empty(1, in_chans, *sizes, device="meta"), take)
    except RuntimeError as err:
        raise UserError(f"model {name!r} cannot take {sizes[0]}x{sizes[1]} images: {err}") from None
    return [{**info[i], "size": (int(out.shape[-2]), int(out.shape[-1]))} for i, out in zip(take, outputs)]
