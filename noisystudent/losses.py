"""Functional losses for supervised, self-training and distillation targets: the one home of the
cross-entropies and the KL that the distillation methods (``distill/methods/``) and the Noisy Student
loss share.

All take raw student logits. Targets for pseudo-labeled images are probability rows (soft labels from
the teacher, already sharpened or softened by the labeling temperature) or class indices (hard labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against a probability distribution per row, optionally weighted per row (mean over rows)."""
    loss = -(target_probs * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    if weight is not None:
        return (loss * weight).sum() / weight.sum().clamp_min(1e-12)
    return loss.mean()


def kd_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015) distillation term: T^2 * KL(teacher_T || student_T), mean over rows, in fp32.

    ``teacher_probs`` are the teacher's probabilities at temperature T (the labeling job stores them so;
    an online method softens its teacher's logits first); the T^2 factor keeps gradient size independent
    of T. No rows: 0 (still in the graph).
    """
    if student_logits.numel() == 0:
        return student_logits.sum() * 0
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p, teacher_probs.float(), reduction="batchmean") * temperature**2


def pseudo_label_loss(
    logits: torch.Tensor,
    target_probs: torch.Tensor,
    mode: str,
    temperature: float = 1.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """The loss on pseudo-labeled images for ``mode`` in ``soft``, ``hard`` or ``hinton``.

    - ``soft``: cross-entropy against the teacher distribution (the paper's soft pseudo-labels).
    - ``hard``: cross-entropy against the teacher argmax.
    - ``hinton``: ``alpha * hard CE + (1 - alpha) * T^2 KL`` (ground truth is not known for these images,
      so the teacher argmax stands in for it, as in the distillation literature's unlabeled setting).
    """
    if mode == "soft":
        return soft_cross_entropy(logits, target_probs)
    hard = target_probs.argmax(dim=-1)
    if mode == "hard":
        return F.cross_entropy(logits, hard)
    if mode == "hinton":
        return alpha * F.cross_entropy(logits, hard) + (1 - alpha) * kd_kl(logits, target_probs, temperature)
    raise ValueError(f"unknown pseudo-label loss {mode!r}")


def student_loss(
    labeled_logits: torch.Tensor,
    labels: torch.Tensor,
    unlabeled_logits: torch.Tensor,
    target_probs: torch.Tensor,
    mode: str = "soft",
    temperature: float = 1.0,
    alpha: float = 0.5,
    unlabeled_weight: float = 1.0,
    label_smoothing: float = 0.0,
    as_tensors: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Noisy Student loss: CE on labeled + ``unlabeled_weight`` * pseudo-label loss, each a mean over its batch.

    Returns the total and its parts for logging: floats, or detached 0-d tensors with ``as_tensors``
    (the engine's choice: no device sync per step on a GPU).
    """
    sup = F.cross_entropy(labeled_logits, labels, label_smoothing=label_smoothing) if labels.numel() else labeled_logits.sum() * 0
    if unlabeled_logits.numel():
        unsup = pseudo_label_loss(unlabeled_logits, target_probs, mode, temperature, alpha)
    else:
        unsup = sup * 0
    total = sup + unlabeled_weight * unsup
    if as_tensors:
        return total, {"loss_labeled": sup.detach(), "loss_unlabeled": unsup.detach()}
    return total, {"loss_labeled": float(sup.detach()), "loss_unlabeled": float(unsup.detach())}
