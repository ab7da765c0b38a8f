"""``bss``: boundary supporting samples (Heo, Lee, Yun & Choi, "Knowledge Distillation with Adversarial
Samples Supporting Decision Boundary", AAAI 2019).

Softened outputs on training images say little about where the teacher's decision boundary lies, and
that boundary is what makes a classifier. BSS moves some images of each batch, by a targeted iterative
attack on the frozen teacher, until they sit on the boundary between the teacher's class and another
one, and distils the teacher's outputs there too:

loss = CE(s, y) + w_kd(e) * KL_T(t || s) + w_bss(e) * KL_T(t(x_adv) || s(x_adv))

Attack (``extra_inputs``): base samples are the labeled images the teacher classifies correctly and every
unlabeled one; ``sample_ratio`` of the batch is attacked. The target class is drawn among the teacher's
non-top classes with probability proportional to the teacher's (so usually the runner-up; ``target:
runner_up`` always takes it). Each of ``attack_steps`` steps moves an image along the input gradient of
the target-vs-original logit margin, by ``step_size`` * margin / ||gradient||, and stops moving it once the
teacher's top class has changed; images stay within the valid pixel range of the student's
normalisation. Gradients are taken with respect to the input only (``torch.autograd.grad``), through the
teacher in eval mode: its weights, gradients and BatchNorm statistics never change.

Defaults are the official code's (github.com/bhheo/BSS_distillation, ``train_BSS_distillation.py`` and
``attacks/attack_BSS.py``): T = 3; 10 attack steps of step 0.3 (L2); 64 samples attacked per batch of
256 (``sample_ratio`` 0.25); the KD weight decaying linearly from 4 to 1 over training (``max(3 (1 - e/E), 0)
+ 1``) and the BSS weight from 2 to 0 at 3/4 of training (``max(2 (1 - 4/3 e/E), 0)``), with e the 1-based
epoch; soft cross-entropy without a T^2 factor, which is the KL here plus the teacher's entropy (a
constant: same gradients, and the logged KL is 0 at the teacher). Deviation: the official code picks the
base samples where teacher and student disagree most; the student's outputs do not exist before the
step's forward, where the attack runs, so base samples are drawn at random among the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from noisystudent import validate
from noisystudent.distill._registry import register_method
from noisystudent.distill.base import DistillMethod
from noisystudent.losses import kd_kl


def kl_t(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), mean over rows, without the T^2 factor (BSS's weighting):
    the shared :func:`~noisystudent.losses.kd_kl` on the teacher's logits, its T^2 taken back out."""
    probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return kd_kl(student_logits, probs, temperature) / temperature**2


def bss_attack(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int, step_size: float,
               lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> torch.Tensor:
    """Move ``x`` toward ``model``'s decision boundary with class ``target`` (the official BSS attack);
    gradients with respect to ``x`` only, never accumulated in the model's parameters."""
    x0 = x.detach().float()
    adv = x0.clone()
    orig = None
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            out = model(adv).float()
            orig = out.argmax(1) if orig is None else orig
            s_orig, s_tgt = out.gather(1, orig[:, None]), out.gather(1, target[:, None])
            (grad,) = torch.autograd.grad((s_tgt - s_orig).sum(), adv)
        active = (out.argmax(1) == orig).float()  # an image that crossed the boundary stops there
        if not active.any():
            break
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = step_size * active * ((s_orig - s_tgt).detach().squeeze(1) + 1e-4) / norm
        adv = adv.detach() + scale.view(-1, *[1] * (x0.dim() - 1)) * grad
        if lo is not None:
            adv = torch.maximum(torch.minimum(adv, hi), lo)
    return adv.detach().to(x.dtype)


@register_method
class BSS(DistillMethod):
    name = "bss"
    teacher = "online"
    summary = "Heo et al. 2019 (BSS): distil also on adversarial samples near the teacher's decision boundary"

    @dataclass
    class Params:
        temperature: float = field(default=3.0, metadata=validate.range(0, 100, lo_open=True))
        attack_steps: int = field(default=10, metadata=validate.range(1, 1000))
        step_size: float = field(default=0.3, metadata=validate.range(0, 100, lo_open=True))
        sample_ratio: float = field(default=0.25, metadata=validate.range(0, 1, lo_open=True))
        target: Literal["sampled", "runner_up"] = "sampled"
        kd_weight_start: float = field(default=4.0, metadata=validate.range(0, 1e4))
        kd_weight_end: float = field(default=1.0, metadata=validate.range(0, 1e4))
        bss_weight: float = field(default=2.0, metadata=validate.range(0, 1e4))
        bss_until: float = field(default=0.75, metadata=validate.range(0, 1, lo_open=True))  # fraction of training

    def weights(self) -> tuple[float, float]:
        """(KD weight, BSS weight) of the current epoch, the official linear schedules."""
        p, e = self.params, (self.epoch + 1) / max(self.total_epochs, 1)
        kd = p.kd_weight_end + (p.kd_weight_start - p.kd_weight_end) * max(1.0 - e, 0.0)
        return kd, p.bss_weight * max(1.0 - e / p.bss_until, 0.0)

    def _pixel_range(self, like: torch.Tensor):
        spec = getattr(self, "student_spec", None)
        if spec is None:
            return None, None
        mean, std = (torch.tensor(v, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)
                     for v in (spec.mean, spec.std))
        return (0 - mean) / std, (1 - mean) / std

    def targets(self, t_logits: torch.Tensor) -> torch.Tensor:
        """The attack's target class per row: the runner-up, or drawn among the non-top classes by probability."""
        probs = F.softmax(t_logits.float(), dim=1)
        if self.params.target == "runner_up":
            return probs.topk(2, dim=1).indices[:, 1]
        probs = probs.scatter(1, probs.argmax(1, keepdim=True), 0.0)
        return torch.multinomial(probs.clamp_min(1e-12), 1).squeeze(1)

    @torch.no_grad()
    def extra_inputs(self, batch, teacher):
        if teacher is None or self.weights()[1] <= 0:
            return None
        model = teacher.model.eval()  # eval mode as always: BatchNorm statistics stay as they are
        x = torch.cat([v for v in (batch.x_labeled, batch.x_unlabeled) if v is not None])
        t_logits = model(x).float()
        ok = torch.ones(len(x), dtype=torch.bool, device=x.device)
        if batch.n_labeled:
            y = batch.y if batch.y.dim() == 1 else batch.y.argmax(1)
            ok[: batch.n_labeled] = t_logits[: batch.n_labeled].argmax(1) == y
        cand = ok.nonzero().squeeze(1)
        k = min(len(cand), max(1, round(self.params.sample_ratio * len(x))))
        if k == 0:
            return None
        idx = cand[torch.randperm(len(cand), device=cand.device)[:k]]
        lo, hi = self._pixel_range(x)
        return bss_attack(model, x[idx], self.targets(t_logits[idx]), self.params.attack_steps, self.params.step_size,
                          lo, hi)

    def loss(self, student, teacher, batch):
        p = self.params
        kd_w, bss_w = self.weights()
        k = student.n_extra
        t_batch, t_extra = teacher.logits[: len(teacher.logits) - k], teacher.logits[len(teacher.logits) - k :]
        ce = batch.ce(student.labeled, self.label_smoothing)
        kd = kl_t(student.batch_logits, t_batch, p.temperature)
        adv = kl_t(student.extra, t_extra, p.temperature)
        total = ce + kd_w * kd + bss_w * adv
        return total, {"loss_labeled": ce.detach(), "loss_kd": kd.detach(), "loss_bss": adv.detach()}
