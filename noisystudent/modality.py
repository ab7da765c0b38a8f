"""Input modalities: the per-modality settings of paired data (``data.modalities``).

Cross-modal distillation (Gupta et al., "Cross Modal Distillation for Supervision Transfer", CVPR 2016)
pairs two views of one item, a source modality the teacher was trained on (RGB images) and a target
modality the student reads (depth, an edge map, a sensor signal), through unlabeled paired data. Each
modality has its own input settings, since a depth map and a photo share neither channels nor statistics:

- ``kind``: ``image`` (an image file, resized to ``size`` x ``size``) or ``signal`` (a multi-channel 1-D
  signal of length ``size``, stored as a grayscale image whose rows are the channels: ``channels`` x ``size``
  pixels; it reaches the model as ``(channels, 1, size)`` so 2-D heads and feature losses need no special case);
- ``channels``: 1 or 3 for an image, 1..64 for a signal; ``mean``/``std``: one value per channel, on the
  0..1 scale (pixel / 255); ``noise``: the training noise of inputs of this modality (null: the model's).

``teacher.modality`` and ``student.modality`` name the modality each model reads. A model's
:class:`~noisystudent.checkpoint.ModelSpec` records its modality and input shape, so any later user of the
checkpoint (the labeling job, promotion's comparison, ``evaluate``) reads it its own modality.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from . import validate
from .errors import ConfigError

__all__ = ["ModalityConfig", "check_modality_name", "input_shape", "convert_modalities"]


@dataclass
class ModalityConfig:
    """The input settings of one modality (see the module docstring)."""

    kind: Literal["image", "signal"] = "image"
    channels: int = field(default=1, metadata=validate.range(1, 64))
    size: int = field(default=28, metadata=validate.range(1, 4096))
    mean: Optional[list[float]] = None  # null: 0.5 per channel
    std: Optional[list[float]] = None  # null: 0.5 per channel
    noise: Optional[Any] = None  # a NoiseConfig mapping; null: the model's noise (see convert_modalities)

    @property
    def stats(self) -> tuple[list[float], list[float]]:
        n = self.channels
        return list(self.mean or [0.5] * n), list(self.std or [0.5] * n)


def input_shape(m: ModalityConfig) -> int | list[int]:
    """The ``image_size`` a :class:`~noisystudent.checkpoint.ModelSpec` of this modality carries: the side of a
    square image, or ``[1, length]`` for a signal (what :func:`noisystudent.transforms.create_transform` reads)."""
    return m.size if m.kind == "image" else [1, m.size]


def _check(m: ModalityConfig, where: str) -> ModalityConfig:
    from .config import NoiseConfig

    if m.kind == "image" and m.channels not in (1, 3):
        raise ConfigError(f"{where}.channels", f"an image modality has 1 or 3 channels, got {m.channels}")
    if m.kind == "image" and m.size < 8:
        raise ConfigError(f"{where}.size", f"an image modality is at least 8 pixels a side, got {m.size}")
    for key in ("mean", "std"):
        values = getattr(m, key)
        if values is not None and len(values) != m.channels:
            raise ConfigError(f"{where}.{key}", f"needs {m.channels} value(s) for channels={m.channels}, got {len(values)}")
    if m.std is not None and any(s <= 0 for s in m.std):
        raise ConfigError(f"{where}.std", "values must be > 0")
    if m.noise is not None:
        m.noise = validate.build(NoiseConfig, m.noise, f"{where}.noise")
        if m.kind == "signal" and m.noise.randaugment_n:
            raise ConfigError(f"{where}.noise.randaugment_n", "RandAugment is made of image operations; a signal "
                              "modality takes 0 (its noise: crop_padding shifts, hflip reverses time, random_erasing)")
    return m


def convert_modalities(value: Any, name: str) -> dict[str, ModalityConfig]:
    """The ``modalities`` field kind: a mapping of modality names to :class:`ModalityConfig`, each checked."""
    if not isinstance(value, dict) or not value:
        raise ConfigError(name, f"must be a mapping of modality names to their settings, got {value!r}")
    out = {}
    for key, spec in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"{name}.{key}", "a modality name is a plain identifier (it is a manifest column and a folder)")
        if isinstance(spec, ModalityConfig):
            spec = dataclasses.asdict(spec)
        out[key] = _check(validate.build(ModalityConfig, spec if spec is not None else {}, f"{name}.{key}"), f"{name}.{key}")
    return out


def check_modality_name(modality: Optional[str], modalities: Optional[dict], where: str) -> None:
    """``where`` (``teacher.modality``) names a declared modality, and is set exactly when modalities are."""
    if modalities is None:
        if modality is not None:
            raise ConfigError(where, f"names modality {modality!r} but data.modalities declares none (data.kind: paired)")
        return
    if modality is None:
        raise ConfigError(where, f"is required with paired data; one of {', '.join(modalities)}")
    if modality not in modalities:
        raise ConfigError(where, f"modality {modality!r} is not declared in data.modalities "
                                 f"(declared: {', '.join(modalities)})")


validate.register_kind("modalities", convert_modalities)
