"""Model checkpoints: one ``model.pt`` that rebuilds its model without the config file.

A checkpoint carries what a labeling actor or ``predict`` needs to use the model on new images: the
model name and its build options, class names, input size, channels and normalisation. It is written
atomically (temporary name + rename), and loading checks it so a truncated file or a checkpoint for a
different set of classes is refused with a message naming the file.

Checkpoints are the files people pass around (``label --teacher``, ``evaluate``, ``predict``), so they
are never unpickled with the full pickle machinery: every load goes through :func:`safe_load`, PyTorch's
weights-only unpickler, which only rebuilds tensors and plain containers. What we save is made of those
(:func:`to_plain` turns numpy scalars and arrays in metrics into Python numbers and lists). The only
extra globals allowed are numpy's scalar and dtype reconstructors, so checkpoints written by earlier
versions (whose metrics held numpy floats) still load; they rebuild a number from bytes and run no code.
"""

from __future__ import annotations

import hashlib
import io as _io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .errors import UserError
from .io import atomic_path

FORMAT_VERSION = 1


def _numpy_safe_globals() -> list:
    """numpy's scalar/dtype reconstructors: enough for numpy floats and ints in old metrics dicts."""
    import numpy as np

    globs: list = [np.dtype]
    try:  # numpy >= 1.25 / 2.x
        from numpy.core.multiarray import scalar  # noqa: F401  (deprecated alias, still what pickles name)
    except Exception:  # pragma: no cover
        scalar = None
    try:
        from numpy._core.multiarray import scalar as scalar2
    except Exception:  # pragma: no cover
        scalar2 = None
    globs += [f for f in (scalar, scalar2) if f is not None]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        globs += [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")
                  if hasattr(dtypes, n)]
    return globs


def safe_load(source, *, what: str, map_location="cpu") -> Any:
    """``torch.load`` with the weights-only unpickler (never ``weights_only=False``).

    ``source`` is a path or a file-like object; ``what`` names it in the error. A pickle that needs any
    other global (a class, a function such as ``os.system``) is refused with :class:`UserError` before
    anything in it runs.
    """
    import pickle
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy.core deprecation noise from the allow-list lookup
        globs = _numpy_safe_globals()
    try:
        with torch.serialization.safe_globals(globs):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        glob = _unsupported_global(str(exc))
        raise UserError(
            f"checkpoint {what} was refused by the safe (weights-only) loader: it holds "
            f"{glob or 'objects other than tensors and plain data'}, which could run code when loaded; "
            "load only files from sources you trust"
        ) from None
    except Exception as exc:  # truncated zip, not a torch file, ...
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"checkpoint {what} is unreadable or truncated ({type(exc).__name__}: {first})") from None


def _unsupported_global(message: str) -> str:
    import re

    m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message)
    return f"the global '{m.group(1)}'" if m else ""


def to_plain(obj: Any) -> Any:
    """Metrics and configs as plain Python (numbers, strings, lists, dicts), which the safe loader holds."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, float, str, bool)) else k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class ModelSpec:
    """Everything needed to rebuild and feed a model."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: list[float]
    std: list[float]
    classes: list[str]
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # cross-modal (docs/crossmodal.md): the data.modalities entry the model reads; image_size is then
    # [1, length] for a signal. None: plain images (every checkpoint written before modalities)
    modality: Optional[str] = None

    def build(self, inference: bool = True) -> torch.nn.Module:
        """Build the model; for inference the noise rates are zero (teachers label clean)."""
        from .models import create_model

        return create_model(
            self.name,
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            drop_rate=0.0 if inference else self.drop_rate,
            drop_path_rate=0.0 if inference else self.drop_path_rate,
        )


@dataclass
class Checkpoint:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    generation: int = 0
    role: str = "teacher"
    checkpoint_id: str = ""
    path: Optional[Path] = None

    def build_model(self, device: str | torch.device = "cpu", channels_last: bool = False) -> torch.nn.Module:
        """The model with these weights, in eval mode on ``device``; ``channels_last``: its 4-D weights in the
        NHWC memory format (:func:`noisystudent.models.to_memory_format`)."""
        from .models import to_memory_format

        model = self.spec.build(inference=True)
        model.load_state_dict(self.state_dict)
        return to_memory_format(model.to(device), channels_last).eval()


def _state_hash(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # unwrap DDP
    # contiguous: a model trained channels-last saves the same NCHW file as one trained without
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def checkpoint_id(model: torch.nn.Module, generation: int, role: str) -> str:
    """The id ``save_checkpoint`` gives these weights: ``gen<G>-<role>-<sha256[:12] of the state>``."""
    return f"gen{generation}-{role}-{_state_hash(_cpu_state(model))}"


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    spec: ModelSpec,
    *,
    metrics: Optional[dict] = None,
    config: Optional[dict] = None,
    generation: int = 0,
    role: str = "teacher",
) -> str:
    """Write ``model.pt`` atomically; return its checkpoint id (``gen<G>-<role>-<hash>``)."""
    state = _cpu_state(model)
    ckpt_id = f"gen{generation}-{role}-{_state_hash(state)}"
    payload = {
        "format_version": FORMAT_VERSION,
        "spec": to_plain(spec.__dict__),
        "state_dict": state,
        "metrics": to_plain(metrics or {}),
        "config": to_plain(config or {}),
        "generation": generation,
        "role": role,
        "checkpoint_id": ckpt_id,
    }
    buf = _io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return ckpt_id


_SPEC_TYPES: dict[str, tuple] = {
    "name": (str,), "num_classes": (int,), "in_chans": (int,), "image_size": (int, list), "mean": (list,),
    "std": (list,), "classes": (list,), "drop_rate": (int, float), "drop_path_rate": (int, float),
    "modality": (str, type(None)),
}
_REQUIRED_SPEC = ("name", "num_classes", "in_chans", "image_size", "mean", "std", "classes")


def _check_fields(path: Path, payload: dict) -> None:
    """Refuse a payload with a missing or mistyped field, naming the file and the field."""

    def bad(field: str, why: str):
        raise UserError(f"checkpoint {path}: field '{field}' {why}")

    if "spec" not in payload:
        bad("spec", "is missing")
    if not isinstance(payload["spec"], dict):
        bad("spec", f"must be a mapping, got {type(payload['spec']).__name__}")
    spec = payload["spec"]
    for key in _REQUIRED_SPEC:
        if key not in spec:
            bad(f"spec.{key}", "is missing")
    for key, value in spec.items():
        if key not in _SPEC_TYPES:
            bad(f"spec.{key}", "is not a known field")
        if isinstance(value, bool) or not isinstance(value, _SPEC_TYPES[key]):
            bad(f"spec.{key}", f"must be {' or '.join(t.__name__ for t in _SPEC_TYPES[key])}, got {type(value).__name__}")
    if len(spec["classes"]) != spec["num_classes"]:
        bad("spec.classes", f"has {len(spec['classes'])} names but spec.num_classes is {spec['num_classes']}")
    if "state_dict" not in payload:
        bad("state_dict", "is missing")
    sd = payload["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        bad("state_dict", "must map parameter names to tensors")
    for key, typ in (("metrics", dict), ("config", dict), ("generation", int), ("role", str), ("checkpoint_id", str)):
        if key in payload and not isinstance(payload[key], typ):
            bad(key, f"must be {typ.__name__}, got {type(payload[key]).__name__}")


def load_checkpoint(path: str | Path, expected_classes: Optional[list[str]] = None) -> Checkpoint:
    """Load and check a checkpoint. Raises :class:`UserError` naming the file on any problem."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    payload = safe_load(path, what=str(path))
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} is not a noisystudent checkpoint (format {FORMAT_VERSION})")
    _check_fields(path, payload)
    spec = ModelSpec(**payload["spec"])
    if expected_classes is not None and list(expected_classes) != list(spec.classes):
        raise UserError(
            f"checkpoint {path} was trained on {spec.num_classes} classes {spec.classes[:5]}..., "
            f"but the data has {len(expected_classes)} classes {list(expected_classes)[:5]}..."
        )
    ckpt = Checkpoint(
        spec=spec,
        state_dict=payload["state_dict"],
        metrics=payload.get("metrics", {}),
        config=payload.get("config", {}),
        generation=payload.get("generation", 0),
        role=payload.get("role", "teacher"),
        checkpoint_id=payload.get("checkpoint_id", ""),
        path=path,
    )
    try:
        ckpt.build_model()
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not match its model {spec.name}: {str(exc).splitlines()[0]}") from None
    return ckpt
