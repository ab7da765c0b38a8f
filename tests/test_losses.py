"""Losses on hand-computed inputs: soft, hard and Hinton targets, and the student's weighted sum."""

from __future__ import annotations

import math

import pytest
import torch

from noisystudent.losses import kd_kl, pseudo_label_loss, soft_cross_entropy, student_loss

LOGITS = torch.tensor([[math.log(1.0), math.log(3.0)]])  # softmax -> [0.25, 0.75]
TARGET = torch.tensor([[0.4, 0.6]])


def test_soft_cross_entropy_by_hand():
    expected = -(0.4 * math.log(0.25) + 0.6 * math.log(0.75))
    assert soft_cross_entropy(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    assert pseudo_label_loss(LOGITS, TARGET, "soft").item() == pytest.approx(expected, rel=1e-6)


def test_hard_uses_teacher_argmax():
    assert pseudo_label_loss(LOGITS, TARGET, "hard").item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert pseudo_label_loss(LOGITS, torch.tensor([[0.9, 0.1]]), "hard").item() == pytest.approx(-math.log(0.25), rel=1e-6)


def test_hinton_by_hand():
    T = 2.0
    # student at T=2: softmax([0, log 3] / 2) = [1, sqrt 3] / (1 + sqrt 3)
    s = [1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))]
    kl = 0.4 * math.log(0.4 / s[0]) + 0.6 * math.log(0.6 / s[1])
    assert kd_kl(LOGITS, TARGET, T).item() == pytest.approx(kl * T * T, rel=1e-4, abs=1e-6)
    alpha = 0.3
    expected = alpha * -math.log(0.75) + (1 - alpha) * kl * T * T
    assert pseudo_label_loss(LOGITS, TARGET, "hinton", temperature=T, alpha=alpha).item() == pytest.approx(expected, rel=1e-4)


def test_hinton_is_zero_when_student_matches_teacher():
    probs = torch.softmax(LOGITS / 3.0, dim=1)
    assert kd_kl(LOGITS, probs, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_student_loss_weights_parts():
    labels = torch.tensor([1])
    total, parts = student_loss(LOGITS, labels, LOGITS, TARGET, mode="soft", unlabeled_weight=2.0)
    sup = -math.log(0.75)
    unsup = -(0.4 * math.log(0.25) + 0.6 * math.log(0.75))
    assert parts["loss_labeled"] == pytest.approx(sup, rel=1e-6)
    assert parts["loss_unlabeled"] == pytest.approx(unsup, rel=1e-6)
    assert total.item() == pytest.approx(sup + 2.0 * unsup, rel=1e-6)


def test_unknown_mode():
    with pytest.raises(ValueError):
        pseudo_label_loss(LOGITS, TARGET, "nope")
