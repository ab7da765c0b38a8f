"""Weighted ensembles of teachers: the weights rule, and an online ensemble that runs on the student's batch.

One rule for every place teachers combine (the labeling job, ``distill.teachers``, a rung's ``teachers``):
weights are non-negative, not all zero, one per teacher, and are normalised to sum to 1; none given means
equal weights. The ensemble's prediction is the weighted mixture of the teachers' probabilities,
``p = sum_k w_k softmax(z_k / T)``, at the temperature the consumer uses (the labeling job's
``pseudo_labels.temperature``, a response method's own ``temperature``), not a softmax of mixed logits.

:class:`EnsembleTeacher` is what the engine hands a method when several teachers run online. Its
:class:`~noisystudent.distill.base.Outputs` carry every member's logits (``members``), and
``Outputs.probs(T)`` gives the mixture; ``logits`` is ``log p`` at T = 1 so argmax-based uses (fidelity)
see the ensemble's decision. Feature methods tap one member (``tap``): their stage outputs are that
member's, since stage maps of different architectures cannot be averaged.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

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

    ``tap``: the member whose stage outputs a feature method receives (None: no stages asked)."""

    def __init__(self, members: list, weights: Sequence[float], tap: Optional[int] = None):
        self.members = list(members)
        self.weights = list(weights)
        self.tap = tap
        self.stages = members[tap].stages if tap is not None else ()
        self.checkpoint = members[tap if tap is not None else 0].checkpoint

    @property
    def model(self):
        """The tapped member's model (what a method that reads ``teacher.model`` attacks or inspects)."""
        return self.members[self.tap if self.tap is not None else 0].model

    @property
    def feature_info(self) -> list[dict]:
        return self.members[self.tap if self.tap is not None else 0].feature_info

    def __call__(self, x: torch.Tensor, n_labeled: int, stages: Optional[tuple[int, ...]] = None) -> Outputs:
        outs = []
        for k, member in enumerate(self.members):
            asked = (self.stages if stages is None else stages) if k == self.tap else ()
            outs.append(member(x, n_labeled, stages=asked))
        logits = [o.logits for o in outs]
        mixed = torch.log(mixture(logits, self.weights).clamp_min(1e-12))
        feats = outs[self.tap].features if self.tap is not None else []
        return Outputs(logits=mixed, features=feats, n_labeled=n_labeled, members=list(zip(self.weights, logits)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return mixture([m.model.eval()(x) for m in self.members], self.weights).argmax(1)
