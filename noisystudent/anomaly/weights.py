"""A teacher from torchvision weights in a local file: read weights-only, mapped onto this project's model face.

STPM's teacher is usually an ImageNet-pretrained ResNet-18 (the paper's), whose weights users have as a
``.pth`` file (torchvision's download, or ``torch.save(model.state_dict(), ...)``). Nothing is downloaded
here: the file is read with :func:`~noisystudent.checkpoint.safe_load` (PyTorch's weights-only unpickler;
a file holding anything but tensors and plain containers is refused before it runs), its parameter names
are mapped onto :func:`~noisystudent.models.create_model`'s model of the same architecture (which keeps
torchvision's modules under ``features`` and its classifier as ``head.fc``), and the result is loaded
strictly, so a file for another architecture is refused naming the first key that does not fit.

A 3-channel first convolution feeds a 1-channel model by summing its weights over the input channels
(timm's rule, :func:`~noisystudent.models.layers.adapt_input_conv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..checkpoint import ModelSpec, safe_load
from ..errors import UserError

# torchvision's classifier modules -> this project's head (ResNet: fc; EfficientNet: classifier.1;
# ConvNeXt: classifier.0 = LayerNorm2d, classifier.2 = Linear)
_HEAD_RENAMES = (("fc.", "head.fc."), ("classifier.0.", "head.norm."), ("classifier.1.", "head.fc."),
                 ("classifier.2.", "head.fc."))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = safe_load(path, what=str(path))
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                          for k, v in state.items()):
        raise UserError(f"teacher.weights {path}: not a state dict (a mapping of parameter names to tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _map_keys(state: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mapped = {}
    for key, value in state.items():
        candidates = [key, f"features.{key}"] + [new + key[len(old):] for old, new in _HEAD_RENAMES if key.startswith(old)]
        target = next((c for c in candidates if c in ours), None)
        mapped[target or key] = value
    return mapped


def torchvision_teacher(path: str | Path, model: str, *, image_size: int, in_chans: int, mean: Sequence[float],
                        std: Sequence[float]) -> tuple[torch.nn.Module, ModelSpec]:
    """The model ``model`` with the weights of ``path`` and its :class:`ModelSpec` (classes ``class_0`` ...).

    Raises :class:`UserError` naming the file for an unreadable or unsafe file and for weights of another
    architecture."""
    from ..models import create_model

    path = Path(path)
    if not path.is_file():
        raise UserError(f"teacher.weights file not found: {path}")
    state = _state_dict(path)
    fc = next((state[k] for k in ("fc.weight", "classifier.1.weight", "classifier.2.weight", "head.fc.weight")
               if k in state and state[k].ndim == 2), None)
    if fc is None:
        raise UserError(f"teacher.weights {path}: no classifier weight (fc.weight or classifier.*.weight); "
                        f"is it a {model} state dict?")
    num_classes = int(fc.shape[0])
    net = create_model(model, num_classes=num_classes, in_chans=in_chans)
    ours = net.state_dict()
    mapped = _map_keys(state, ours)
    for key, value in list(mapped.items()):  # a 3-channel stem for a 1-channel model
        want = ours.get(key)
        if want is not None and value.ndim == 4 and want.ndim == 4 and value.shape[1] == 3 and want.shape[1] != 3:
            if want.shape[1] != 1:
                raise UserError(f"teacher.weights {path}: {key} takes 3 channels; teacher.in_chans must be 3 or 1")
            mapped[key] = value.sum(dim=1, keepdim=True)
    missing = [k for k in ours if k not in mapped]
    unexpected = [k for k in mapped if k not in ours]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which {model} does not"
        raise UserError(f"teacher.weights {path} does not fit teacher.model {model}: it {what} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected parameter names)")
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise UserError(f"teacher.weights {path} does not fit teacher.model {model}: "
                        f"{str(exc).strip().splitlines()[-1].strip()}") from None
    spec = ModelSpec(name=model, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                     mean=[float(v) for v in mean], std=[float(v) for v in std],
                     classes=[f"class_{i}" for i in range(num_classes)])
    return net.eval(), spec
