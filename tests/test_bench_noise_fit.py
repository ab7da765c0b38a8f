"""bench.noise_fit: how much of a label-noise run's flipped labels its model learned, read from the run folder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from bench.noise_fit import fit_of, format_table, summarise
from conftest import DISTILL_DATA, distill_config
from pipelines.state import RunDir
from pipelines.steps.data import record_conditions


def _noisy_run(root, rate):
    from noisystudent.data import create_data

    cfg = distill_config(data={**DISTILL_DATA, "label_noise": {"rate": rate, "seed": 3}})
    run = RunDir(root)
    run.root.mkdir(parents=True)
    run.freeze_config(cfg)
    data = create_data(cfg.data)
    record_conditions(run, data)
    return run, data


def test_fit_of_splits_the_flipped_labels_into_memorised_and_corrected(distill_world, tmp_path):
    """A teacher trained on the clean labels, scored on a run whose labels were half flipped: on the flipped
    images it predicts the true class (corrected) far more often than the wrong training label (memorised),
    and the shares are those of its own predictions, counted by hand here."""
    from noisystudent.checkpoint import load_checkpoint
    from noisystudent.evaluate import predict_probs
    from noisystudent.transforms import create_transform

    _cfg, _data, teacher, _pl = distill_world
    run, data = _noisy_run(tmp_path / "run", 0.5)
    fit = fit_of(teacher, run.root)
    table = pd.read_parquet(run.root / "data_conditions.parquet")
    assert fit["images"] == len(table) == len(data.labeled) and fit["flipped"] == int(table["flipped"].sum()) > 0
    ck = load_checkpoint(teacher)
    s = ck.spec
    _idx, probs = predict_probs(ck.build_model(), data.labeled, create_transform(s.image_size, s.in_chans, s.mean, s.std, None),
                                progress=False)
    pred, flipped = probs.argmax(1), table["flipped"].to_numpy(bool)
    assert fit["corrected"] == pytest.approx((pred[flipped] == table["label_clean"].to_numpy()[flipped]).mean())
    assert fit["memorised"] == pytest.approx((pred[flipped] == table["label"].to_numpy()[flipped]).mean())
    assert fit["corrected"] > fit["memorised"] and fit["memorised"] + fit["corrected"] <= 1.0
    # a run without flipped labels has nothing to split; a conditions file from other data is refused
    clean, _ = _noisy_run(tmp_path / "clean", 0.0)
    assert fit_of(teacher, clean.root) is None
    other, _ = _noisy_run(tmp_path / "other", 0.5)
    t = pd.read_parquet(other.root / "data_conditions.parquet")
    t["label"] = np.roll(t["label"].to_numpy(), 1)
    t.to_parquet(other.root / "data_conditions.parquet", index=False)
    with pytest.raises(RuntimeError, match="does not match"):
        fit_of(teacher, other.root)


def test_summary_is_per_method_and_noise_level_with_teachers_first():
    rows = [{"role": "student", "method": m, "seed": s, "label_noise": r, "flipped": 10 * int(10 * r),
             "memorised": 0.1 * s, "corrected": 0.5, "clean_fit": 0.9}
            for r in (0.2, 0.6) for m in ("supervised", "teacher") for s in (0, 1)]
    table = summarise(rows)
    assert [(r["label_noise"], r["method"]) for r in table] == [(0.2, "teacher"), (0.2, "supervised"),
                                                                (0.6, "teacher"), (0.6, "supervised")]
    assert table[0]["memorised_mean"] == pytest.approx(0.05) and table[0]["n"] == 2
    text = format_table(table)
    assert "memorised %" in text and "5.0 ± 7.1" in text and text.splitlines()[1].split()[:2] == ["0.2", "teacher"]
