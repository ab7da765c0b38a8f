"""``dml``: deep mutual learning (Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018).

No fixed teacher: a cohort of K >= 2 students (the job's student and ``peers``, the same or other
models) trains together from scratch; each minimises its cross-entropy on the labels plus the mean KL
divergence from every other member's prediction to its own (the others' outputs taken as constants, as
in the paper's alternating updates; with one optimizer over the whole cohort each member's gradient comes
from its own terms only). Sarfraz et al. (ICPR 2020) find DML among the strongest methods for the
smallest students (ResNet-8) and the strongest under heavy label noise.

The peers are submodules of the method, so the engine trains, checkpoints, resumes and synchronises
them (DDP) with the student without knowing they exist. At the end every member is evaluated and
written (``members/<label>/model.pt``); ``export`` picks the one the job exports as ``model.pt``:
``best_val`` (highest validation accuracy; the student when there is no validation data: the test set
never decides), ``student``, or ``peer1`` ... ``peerK-1``.

Defaults: temperature 1 and weight 1 (the paper's plain KL); one peer of the student's own model.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import nn

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod
from noisystudent.errors import ConfigError
from noisystudent.losses import kd_kl


@register_method
class DML(DistillMethod):
    name = "dml"
    summary = "Zhang et al. 2018: a cohort of students, each CE + KL to the others' predictions"
    teacher = "none"

    @dataclass
    class Params:
        # models of the other cohort members; "same" is the student's own model
        peers: list[str] = field(default_factory=lambda: ["same"])
        temperature: float = field(default=1.0, metadata=validate.range(0, 100, lo_open=True))
        kl_weight: float = field(default=1.0, metadata=validate.range(0, 1000))
        # which member the job exports as model.pt: best_val, student, or peer1 ... peerK-1
        export: str = "best_val"

    @classmethod
    def check_params(cls, params, field: str) -> None:
        if not params.peers:
            raise ConfigError(f"{field}.peers", "needs at least one peer model (a cohort is K >= 2 students)")
        from noisystudent.models import is_model

        for i, name in enumerate(params.peers):
            if name != "same" and not is_model(name):
                raise ConfigError(f"{field}.peers[{i}]", f"unknown model {name!r}")
        choices = ["best_val", "student"] + [f"peer{i + 1}" for i in range(len(params.peers))]
        if params.export not in choices:
            raise ConfigError(f"{field}.export", f"must be one of {', '.join(choices)}; got {params.export!r}")

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        if self.student_spec is None:
            raise ValueError("dml builds its peers from the student's ModelSpec: pass student_spec")
        self.peer_names = [self.student_spec.name if n == "same" else n for n in params.peers]
        self.peers = nn.ModuleList(dataclasses.replace(self.student_spec, name=n).build(inference=False)
                                   for n in self.peer_names)

    def members(self):
        return [(f"peer{i + 1}", m, n) for i, (m, n) in enumerate(zip(self.peers, self.peer_names))]

    def loss(self, student, teacher, batch):
        p, T = self.params, self.params.temperature
        n = len(student.logits) - student.n_extra
        x = batch.inputs[:n]
        cohort = [student.logits[:n]] + [peer(x) for peer in self.peers]
        probs = [F.softmax(lg.detach().float() / T, dim=-1) for lg in cohort]
        total, parts = 0.0, {}
        for k, logits in enumerate(cohort):
            ce = batch.ce(logits[: batch.n_labeled], self.label_smoothing)
            kl = sum(kd_kl(logits, probs[j], T) for j in range(len(cohort)) if j != k) / (len(cohort) - 1)
            total = total + ce + p.kl_weight * kl
            if k == 0:
                parts.update(loss_labeled=ce.detach(), loss_kd=kl.detach())
            else:
                parts[f"loss_peer{k}"] = (ce + p.kl_weight * kl).detach()
        return total, parts

    def export_model(self, student, spec, member_metrics=None):
        choice = self.params.export
        if choice == "best_val":
            vals = [m.get("val_acc") for m in (member_metrics or [])]
            if not vals or any(v is None for v in vals):
                warnings.warn("dml export best_val: the job has no validation data, so the student is exported "
                              "(the test set never decides)", stacklevel=2)
                return student, spec
            best = max(range(len(vals)), key=lambda i: (vals[i], -i))  # ties: the earlier member
            choice = "student" if best == 0 else f"peer{best}"
        if choice == "student":
            return student, spec
        k = int(choice[4:]) - 1
        return self.peers[k], dataclasses.replace(spec, name=self.peer_names[k])
