"""Weighted ensembles of teachers: the weights rule, and an online ensemble that runs on the student's batch.

One rule for every place teachers combine (the labeling job, ``distill.teachers``, a rung's ``teachers``):
weights are non-negative, not all zero, one per teacher, and are normalised to sum to 1; none given means
equal weights. The ensemble's prediction is the weighted mixture of the teachers' probabilities,
``p = sum_k w_k softmax(z_k / T)``, at the temperature the consumer uses (the labeling job's
``pseudo_labels.temperature``, a response method's own ``temperature``), not a softmax of mixed logits.

:class:`EnsembleTeacher` is what the engine hands a method when several teachers run online. Its
:class:`~noisystudent.distill.base.Outputs` carry every member's logits (``members``), and
``Outputs.probs(T)`` gives the mixture; ``logits`` is ``log p`` at T = 1 so argmax-based uses (fidelity)
see the ensemble's decision. A feature method taps one member (``method.tap``, an index into the teachers
list): the stage outputs are that member's, since stage maps of different architectures cannot be averaged;
without ``tap`` a method that reads stages (or the teacher model itself, as BSS does) is a config error.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from noisystudent.distill.base import Outputs
from noisystudent.errors import ConfigError


def normalize_weights(weights: Optional[Sequence[float]], n: int, field: str) -> list[float]:
    """``weights`` (one per teacher, or None for equal ones) scaled to sum to 1; :class:`ConfigError` on
    ``field`` for a wrong count, a negative or non-finite weight, or all zeros."""
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ConfigError(field, f"needs one weight per teacher ({n}), got {len(w)}")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ConfigError(field, f"weights must be finite and >= 0, got {list(weights)}")
    total = sum(w)
    if total <= 0:
        raise ConfigError(field, "weights must not all be 0")
    return [x / total for x in w]


def mixture(member_logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float = 1.0) -> torch.Tensor:
    """``sum_k w_k softmax(z_k / T)`` in float32."""
    out = None
    for z, w in zip(member_logits, weights):
        p = torch.softmax(z.float() / temperature, dim=-1) * w
        out = p if out is None else out + p
    return out


class EnsembleTeacher:
    """Several :class:`~noisystudent.distill.teacher.OnlineTeacher` members with weights, called like one.

    ``tap``: the member whose stages and model a method may read (``method.tap``); None: the method may
    read only outputs, and asking for stages or the model is a :class:`ConfigError` on ``field``."""

    def __init__(self, members: list, weights: Sequence[float], tap: Optional[int] = None, field: str = "method"):
        if tap is not None and not 0 <= tap < len(members):
            raise ConfigError(f"{field}.tap", f"names teacher {tap}, but there are {len(members)} (0..{len(members) - 1})")
        self.members = list(members)
        self.weights = list(weights)
        self.tap = tap
        self.field = field
        self._stages: tuple[int, ...] = ()

    def _tapped(self, what: str):
        if self.tap is None:
            raise ConfigError(f"{self.field}.tap", f"the method reads the teacher's {what}, and {len(self.members)} "
                              f"teachers run online: name the one it taps (0..{len(self.members) - 1})")
        return self.members[self.tap]

    @property
    def stages(self) -> tuple[int, ...]:
        return self._stages

    @stages.setter
    def stages(self, stages) -> None:
        stages = tuple(stages)
        if stages:
            self._tapped("stages").stages = stages
        self._stages = stages

    @property
    def model(self):
        """The tapped member's model (BSS attacks it)."""
        return self._tapped("model").model

    @property
    def checkpoint(self):
        """The tapped member's checkpoint, else the first's (its spec sizes the teaching views)."""
        return self.members[self.tap if self.tap is not None else 0].checkpoint

    @property
    def spec(self):
        return self.checkpoint.spec

    @property
    def feature_info(self) -> list[dict]:
        return self.members[self.tap if self.tap is not None else 0].feature_info

    def __call__(self, x: torch.Tensor, n_labeled: int, stages: Optional[tuple[int, ...]] = None) -> Outputs:
        stages = self._stages if stages is None else tuple(stages)
        outs = [m(x, n_labeled, stages=stages if k == self.tap else ()) for k, m in enumerate(self.members)]
        logits = [o.logits for o in outs]
        mixed = torch.log(mixture(logits, self.weights).clamp_min(1e-12))
        feats = outs[self.tap].features if self.tap is not None else []
        return Outputs(logits=mixed, features=feats, n_labeled=n_labeled, members=list(zip(self.weights, logits)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return mixture([m.model.eval()(x) for m in self.members], self.weights).argmax(1)

    def build_model(self, device=None) -> nn.Module:
        """The ensemble as one eval-mode model giving ``log p`` (what fidelity compares the student with)."""
        return _MixtureModel([m.model for m in self.members], self.weights).to(device or "cpu").eval()


class _MixtureModel(nn.Module):
    def __init__(self, models: list[nn.Module], weights: Sequence[float]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.weights = list(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(mixture([m(x) for m in self.models], self.weights).clamp_min(1e-12))


def load_ensemble(teachers: Sequence[tuple[str, float]], spec, device: torch.device, tap: Optional[int],
                  field: str, channels_last: bool = False) -> EnsembleTeacher:
    """Every teacher frozen and weights-only loaded (:class:`OnlineTeacher`), checked against the student's
    classes and channels and against each other's input size (one teaching view serves them all)."""
    from noisystudent.checkpoint import load_checkpoint
    from noisystudent.distill.teacher import OnlineTeacher
    from noisystudent.errors import UserError

    members = []
    for path, _ in teachers:
        ckpt = load_checkpoint(path, expected_classes=spec.classes)
        if ckpt.spec.in_chans != spec.in_chans:
            raise UserError(f"teacher {path} takes {ckpt.spec.in_chans}-channel images, the student {spec.in_chans}-channel ones")
        if members and ckpt.spec.image_size != members[0].checkpoint.spec.image_size:
            raise UserError(f"teacher {path} takes {ckpt.spec.image_size} px images, teacher {teachers[0][0]} "
                            f"{members[0].checkpoint.spec.image_size} px: an online ensemble shares one view size")
        members.append(OnlineTeacher(ckpt, device, channels_last=channels_last))
    return EnsembleTeacher(members, [w for _, w in teachers], tap=tap, field=field)
