"""Selection arithmetic: confidence threshold and the paper's per-class balancing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from noisystudent.errors import UserError
from pseudo_labels.select import balance_weights, select_pseudo_labels


def _frame(sizes: list[int], seed: int = 0) -> pd.DataFrame:
    """Rows per class ``sizes[c]`` with distinct random confidences and ids ``c<class>-<j>``."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, n in enumerate(sizes):
        conf = rng.permutation(np.linspace(0.3, 0.99, n)) if n else []
        rows += [{"image_id": f"c{c}-{j:03d}", "label": c, "confidence": float(conf[j])} for j in range(n)]
    df = pd.DataFrame(rows, columns=["image_id", "label", "confidence"])
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # order must not matter


def _weights(sel: pd.DataFrame) -> dict[str, int]:
    return dict(zip(sel["image_id"], sel["weight"]))


def test_skewed_classes_balanced_to_k():
    df = _frame([50, 5, 0])
    sel, s = select_pseudo_labels(df, num_classes=3, per_class=10)
    top10 = set(df[df.label == 0].nlargest(10, "confidence")["image_id"])
    assert set(sel[sel.label == 0]["image_id"]) == top10
    assert (sel[sel.label == 0]["weight"] == 1).all()
    c1 = sel[sel.label == 1]
    assert len(c1) == 5 and c1["weight"].sum() == 10 and (c1["weight"] == 2).all()
    assert (sel.label == 2).sum() == 0
    assert s["K"] == 10
    assert s["per_class_before"] == [50, 5, 0]
    assert s["per_class_after"] == [10, 10, 0]
    assert s["per_class_unique_after"] == [10, 5, 0]
    assert s["empty_classes"] == [2]
    assert s["rows_selected"] == 15 and s["weighted_rows_selected"] == 20


def test_remainder_copies_go_to_the_most_confident():
    df = _frame([3, 20])
    sel, _ = select_pseudo_labels(df, num_classes=2, per_class=10)
    c0 = sel[sel.label == 0]
    # 10 = 3 * 3 + 1: every row 3 copies, the most confident one a fourth
    assert c0["weight"].tolist() == [4, 3, 3]
    assert c0["confidence"].is_monotonic_decreasing
    np.testing.assert_array_equal(balance_weights(3, 10), [4, 3, 3])
    np.testing.assert_array_equal(balance_weights(5, 3), [1, 1, 1, 0, 0])
    assert balance_weights(0, 4).size == 0


def test_auto_k_is_rows_over_classes():
    df = _frame([30, 6, 3, 1])  # 40 rows / 4 classes -> K = 10
    sel, s = select_pseudo_labels(df, num_classes=4, per_class=0)
    assert s["K"] == 10 and s["per_class_mode"] == "auto"
    assert s["per_class_after"] == [10, 10, 10, 10]
    assert _weights(sel[sel.label == 3]) == {"c3-000": 10}


def test_ties_broken_by_image_id():
    df = pd.DataFrame({"image_id": ["b", "a", "d", "c"], "label": [0, 0, 0, 0], "confidence": [0.9] * 4})
    sel, _ = select_pseudo_labels(df, num_classes=1, per_class=2)
    assert sel["image_id"].tolist() == ["a", "b"]
    sel, _ = select_pseudo_labels(df, num_classes=1, per_class=6)
    assert _weights(sel) == {"a": 2, "b": 2, "c": 1, "d": 1}


def test_threshold_then_balance():
    df = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(8)],
        "label": [0, 0, 0, 0, 1, 1, 1, 1],
        "confidence": [0.95, 0.9, 0.5, 0.49, 0.99, 0.2, 0.1, 0.5],
    })
    sel, s = select_pseudo_labels(df, num_classes=2, threshold=0.5)
    assert s["rows_in"] == 8 and s["rows_after_threshold"] == 5  # 0.5 itself is kept
    assert set(sel["image_id"]) == {"i0", "i1", "i2", "i4", "i7"}
    assert (sel["weight"] == 1).all() and s["K"] is None
    sel, s = select_pseudo_labels(df, num_classes=2, threshold=0.5, per_class=0)  # K = 5 // 2 = 2
    assert s["K"] == 2
    assert _weights(sel) == {"i0": 1, "i1": 1, "i4": 1, "i7": 1}


def test_accuracy_reported_with_true_labels():
    df = pd.DataFrame({
        "image_id": ["a", "b", "c", "d"],
        "label": [0, 0, 1, 1],
        "confidence": [0.9, 0.4, 0.8, 0.3],
        "true_label": [0, 1, 1, -1],  # -1: unknown, not counted
    })
    sel, s = select_pseudo_labels(df, num_classes=2, threshold=0.35, per_class=2)
    assert s["accuracy_all"] == pytest.approx(2 / 3)
    assert s["accuracy_after_threshold"] == pytest.approx(2 / 3)  # a, b, c
    assert s["accuracy_selected"] == pytest.approx(2 / 3)
    # c (correct) is duplicated to weight 2: weighted accuracy (1 + 0 + 2) / 4
    assert s["accuracy_selected_weighted"] == pytest.approx(3 / 4)
    assert "true_label" in sel.columns  # kept for reports; write_selection drops it


def test_deterministic_for_any_row_order():
    a, _ = select_pseudo_labels(_frame([40, 7, 12], seed=1), 3, threshold=0.4, per_class=0)
    b, _ = select_pseudo_labels(_frame([40, 7, 12], seed=1).iloc[::-1], 3, threshold=0.4, per_class=0)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("kw, match", [
    (dict(threshold=1.5), "threshold"),
    (dict(per_class=-1), "per_class"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(UserError, match=match):
        select_pseudo_labels(_frame([3, 3]), 2, **kw)


def test_labels_outside_classes_refused():
    with pytest.raises(UserError, match="outside"):
        select_pseudo_labels(_frame([3, 3, 3]), 2)
