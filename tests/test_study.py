"""Studies: data conditions (label noise, class imbalance) and Ray Tune studies with resume."""

from __future__ import annotations

import numpy as np
import pytest

from noisystudent.config import config_from_dict
from noisystudent.data import create_data
from noisystudent.data.conditions import FASHION_MNIST_ASYMMETRIC, flip_labels, long_tail_counts, long_tail_keep


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6, 1.0])
def test_flip_labels_exact_share_always_changes_class(kind, rate):
    labels = np.repeat(np.arange(10), 37)
    mapping = np.asarray([FASHION_MNIST_ASYMMETRIC[c] for c in range(10)])
    noisy, pos = flip_labels(labels, rate, kind, 10, seed=3, mapping=mapping)
    assert len(pos) == round(rate * len(labels)) == int((noisy != labels).sum())
    if kind == "asymmetric":
        assert (noisy[pos] == mapping[labels[pos]]).all()
    again, pos2 = flip_labels(labels, rate, kind, 10, seed=3, mapping=mapping)
    assert (again == noisy).all() and (pos2 == pos).all()


def test_long_tail_counts_follow_the_profile():
    counts = long_tail_counts(np.full(10, 100), ratio=10)
    assert counts[0] == 100 and counts[-1] == 10
    assert (np.diff(counts) <= 0).all()
    assert np.allclose(counts, np.round(100 * 10.0 ** (-np.arange(10) / 9)))
    labels = np.repeat(np.arange(10), 100)
    keep = long_tail_keep(labels, 10, 10, seed=0)
    assert (np.bincount(labels[keep], minlength=10) == counts).all()


def _fm_cfg(root, **data):
    return config_from_dict({"data": {"root": str(root), "labels_per_class": 40, "test_limit": 200, "unlabeled_limit": 50,
                                      **data}})


def test_conditions_on_training_labels_only(require_fmnist):
    clean = create_data(_fm_cfg(require_fmnist).data)
    cfg = _fm_cfg(require_fmnist, label_noise={"rate": 0.4, "kind": "asymmetric", "seed": 1},
                  imbalance={"ratio": 4, "seed": 2}).data
    noisy = create_data(cfg)
    n_train = 36  # 40 a class, 10 % (4) held out for validation
    counts = long_tail_counts(np.full(10, n_train), 4)
    rows = noisy.conditions["rows"]
    assert (np.bincount(rows["label_clean"], minlength=10) == counts).all()
    assert len(noisy.labeled) == counts.sum()
    flipped = np.asarray(rows["flipped"])
    assert flipped.sum() == round(0.4 * counts.sum())
    assert ((np.asarray(rows["label"]) != np.asarray(rows["label_clean"])) == flipped).all()
    # test and validation untouched: same images, same labels
    assert clean.test.image_ids() == noisy.test.image_ids() and (clean.test.labels == noisy.test.labels).all()
    assert clean.val.image_ids() == noisy.val.image_ids() and (clean.val.labels == noisy.val.labels).all()
    # the clean labels are the true ones of the kept images
    truth = dict(zip(clean.labeled.image_ids(), clean.labeled.labels.tolist()))
    assert [truth[i] for i in rows["image_id"]] == rows["label_clean"]
    assert clean.conditions is None


def test_noise_rate_validated():
    from noisystudent.errors import UserError

    with pytest.raises(UserError, match="data.label_noise.rate"):
        config_from_dict({"data": {"label_noise": {"rate": 1.5}}})
    with pytest.raises(UserError, match="data.imbalance.ratio"):
        config_from_dict({"data": {"imbalance": {"ratio": 0.5}}})
