"""Model checkpoints: one ``model.pt`` that rebuilds its model without the config file.

A checkpoint carries what a labeling actor or ``predict`` needs to use the model on new images: the
model name and its build options, class names, input size, channels and normalisation. It is written
atomically (temporary name + rename), and loading checks it so a truncated file or a checkpoint for a
different set of classes is refused with a message naming the file.
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

    def build_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        model = self.spec.build(inference=True)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


def _state_hash(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # unwrap DDP
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


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
        "spec": spec.__dict__,
        "state_dict": state,
        "metrics": metrics or {},
        "config": config or {},
        "generation": generation,
        "role": role,
        "checkpoint_id": ckpt_id,
    }
    buf = _io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return ckpt_id


def load_checkpoint(path: str | Path, expected_classes: Optional[list[str]] = None) -> Checkpoint:
    """Load and check a checkpoint. Raises :class:`UserError` naming the file on any problem."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise UserError(f"checkpoint {path} is unreadable or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} is not a noisystudent checkpoint (format {FORMAT_VERSION})")
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
