"""The pseudo-label Parquet store: schema, metadata round trip, soft targets, refusals, selection files, inspect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from noisystudent.errors import UserError
from pseudo_labels import (
    SCHEMA,
    SCHEMA_VERSION,
    LabelMetadata,
    is_complete,
    probs_to_table,
    read_labels,
    read_metadata,
    read_rejected,
    read_selection,
    read_selection_summary,
    select_pseudo_labels,
    soft_targets,
    write_selection,
    write_shard,
)
from pseudo_labels.inspect import inspect_labels

CLASSES = ["cat", "dog", "frog", "ship", "truck"]


def _probs(n: int, c: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(c, 0.5), size=n).astype(np.float32)


def _meta(**kw) -> LabelMetadata:
    base = dict(class_names=CLASSES, num_classes=5, temperature=1.0, topk=None, teachers=["gen0-teacher-abc"])
    base.update(kw)
    return LabelMetadata(**base)


def _ids(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}/{k:04d}.png" for k in range(n)]


def test_probs_to_table_columns_match_the_distribution():
    p = _probs(40)
    t = probs_to_table(_ids(40), p, None, "t")
    assert t.schema.equals(SCHEMA)
    df = t.to_pandas()
    np.testing.assert_array_equal(df["label"], p.argmax(1))
    np.testing.assert_allclose(df["confidence"], p.max(1), rtol=1e-6)
    ent = -(p.astype(np.float64) * np.log(p.astype(np.float64))).sum(1)
    np.testing.assert_allclose(df["entropy"], ent, rtol=1e-5)
    for row, probs in zip(df.itertuples(), p):
        assert len(row.topk_classes) == 5  # k = all classes when topk is None
        assert row.topk_classes[0] == row.label
        assert np.all(np.diff(row.topk_probs) <= 0), "top-k must be sorted by probability, highest first"
        np.testing.assert_allclose(row.topk_probs, probs[row.topk_classes])


def test_class_names_with_spaces_and_unicode_round_trip(tmp_path: Path):
    """Folder class names are whatever the user named the folders: they come back out of the metadata as
    written, and a reader expecting them accepts the shard."""
    names = ["ankle boot", "sandal 👡", "T-shirt"]
    meta = _meta(class_names=names, num_classes=3)
    write_shard(tmp_path / "part-00000.parquet", probs_to_table(_ids(4), _probs(4, c=3), None, "t"), meta)
    assert read_metadata(tmp_path).class_names == names
    assert len(read_labels(tmp_path, expected=meta)) == 4


@pytest.mark.parametrize("topk, k", [(2, 2), (5, 5), (99, 5), (None, 5)])
def test_topk_length(topk, k):
    t = probs_to_table(_ids(3), _probs(3), topk, "t")
    assert [len(x) for x in t["topk_classes"].to_pylist()] == [k] * 3


def test_schema_and_metadata_round_trip(tmp_path: Path):
    meta = _meta(temperature=2.5, topk=3, teachers=["a", "b"])
    write_shard(tmp_path / "part-00000.parquet", probs_to_table(_ids(10), _probs(10), 3, "a+b"), meta)
    write_shard(tmp_path / "part-00001.parquet", probs_to_table(_ids(7, "more"), _probs(7, seed=1), 3, "a+b"), meta,
                rejected=[("broken.png", "empty file")])
    # Raw file: the metadata is JSON under the 'noisystudent' key; the columns have the documented types.
    schema = pq.read_schema(tmp_path / "part-00000.parquet")
    raw = json.loads(schema.metadata[b"noisystudent"])
    assert raw == {"class_names": CLASSES, "num_classes": 5, "temperature": 2.5, "topk": 3,
                   "teachers": ["a", "b"], "schema_version": SCHEMA_VERSION}
    assert schema.remove_metadata().equals(SCHEMA)

    assert read_metadata(tmp_path) == meta
    assert read_metadata(tmp_path / "part-00001.parquet") == meta
    df = read_labels(tmp_path, expected=meta)
    assert len(df) == 17 and df["image_id"].is_unique
    assert list(df.columns) == list(SCHEMA.names)
    assert df["label"].dtype == np.int32 and df["confidence"].dtype == np.float32
    assert read_rejected(tmp_path) == [("broken.png", "empty file")]
    only = read_labels(tmp_path, columns=["image_id", "confidence"])
    assert list(only.columns) == ["image_id", "confidence"]


def test_temporaries_are_ignored_and_completion_marker(tmp_path: Path):
    write_shard(tmp_path / "part-00000.parquet", probs_to_table(_ids(4), _probs(4), None, "t"), _meta())
    (tmp_path / ".tmp-part-00001.parquet.abc").write_bytes(b"half a file")
    assert len(read_labels(tmp_path)) == 4
    assert not is_complete(tmp_path)
    (tmp_path / "_SUCCESS").write_text("")
    assert is_complete(tmp_path)


def test_soft_targets_all_classes_sum_to_one_and_equal_probs():
    p = _probs(25)
    df = probs_to_table(_ids(25), p, None, "t").to_pandas()
    soft = soft_targets(df, 5)
    assert soft.shape == (25, 5)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(soft, p / p.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_soft_targets_renormalise_topk():
    p = _probs(25, seed=3)
    df = probs_to_table(_ids(25), p, 2, "t").to_pandas()
    soft = soft_targets(df, 5)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    assert ((soft > 0).sum(1) == 2).all()
    top2 = np.sort(p, axis=1)[:, ::-1][:, :2]
    np.testing.assert_allclose(np.sort(soft, axis=1)[:, ::-1][:, :2], top2 / top2.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_array_equal(soft.argmax(1), p.argmax(1))


@pytest.mark.parametrize(
    "other, field",
    [
        (dict(class_names=["cat", "dog", "frog", "ship", "plane"]), "class_names"),
        (dict(temperature=2.0), "temperature"),
        (dict(class_names=CLASSES[:4], num_classes=4), "num_classes"),
        (dict(schema_version=SCHEMA_VERSION + 1), "schema_version"),
    ],
)
def test_mismatched_shards_are_refused_naming_shard_and_field(tmp_path: Path, other, field):
    write_shard(tmp_path / "part-00000.parquet", probs_to_table(_ids(4), _probs(4), None, "t"), _meta())
    bad = _meta(**other)
    write_shard(tmp_path / "part-00001.parquet",
                probs_to_table(_ids(3, "b"), _probs(3, c=bad.num_classes), None, "t"), bad)
    with pytest.raises(UserError, match=rf"part-00001\.parquet.*{field}"):
        read_labels(tmp_path)


def test_expected_metadata_is_checked(tmp_path: Path):
    write_shard(tmp_path / "part-00000.parquet", probs_to_table(_ids(4), _probs(4), None, "t"), _meta())
    with pytest.raises(UserError, match=r"part-00000\.parquet: class_names differs: class 4 is 'truck', expected has 'plane'"):
        read_labels(tmp_path, expected=_meta(class_names=["cat", "dog", "frog", "ship", "plane"]))
    with pytest.raises(UserError, match="temperature"):
        read_labels(tmp_path, expected=_meta(temperature=0.5))
    # teachers and top-k are per row, not part of what must match
    assert len(read_labels(tmp_path, expected=_meta(teachers=["other"], topk=2))) == 4


def test_foreign_parquet_and_empty_folder_are_refused(tmp_path: Path):
    with pytest.raises(UserError, match="no part-"):
        read_labels(tmp_path)
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "part-00000.parquet")
    with pytest.raises(UserError, match="not a noisystudent pseudo-label shard"):
        read_labels(tmp_path)
    with pytest.raises(UserError, match="not found"):
        read_labels(tmp_path / "missing")


def test_selection_round_trip_drops_hidden_labels(tmp_path: Path):
    meta = _meta()
    df = probs_to_table(_ids(30), _probs(30), None, "t").to_pandas()
    df["true_label"] = 0
    sel, summary = select_pseudo_labels(df, 5, threshold=0.3, per_class=4)
    out = tmp_path / "gen-1" / "selected"
    write_selection(out, sel, summary, meta)
    assert is_complete(out)
    back = read_selection(out, expected=meta)
    assert "true_label" not in back.columns
    assert back["weight"].dtype == np.int32
    pd.testing.assert_frame_equal(back[["image_id", "label", "weight"]],
                                  sel[["image_id", "label", "weight"]].astype({"weight": np.int32, "label": np.int32}))
    assert read_selection_summary(out) == json.loads(json.dumps(summary))
    # a rewrite replaces every shard (no stale part files survive)
    write_selection(out, sel.head(3), summary, meta, rows_per_shard=2)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert len(read_selection(out)) == 3


def test_incomplete_selection_is_refused(tmp_path: Path):
    df = probs_to_table(_ids(5), _probs(5), None, "t").to_pandas()
    sel, summary = select_pseudo_labels(df, 5)
    write_selection(tmp_path, sel, summary, _meta())
    (tmp_path / "_SUCCESS").unlink()
    with pytest.raises(UserError, match="incomplete"):
        read_selection(tmp_path)
    with pytest.raises(UserError, match="weight"):
        write_selection(tmp_path, df, summary, _meta())


def test_inspect_reports_the_numbers(tmp_path: Path):
    p = np.zeros((12, 5), np.float32)
    p[:, 0] = 0.05
    p[:7, 1] = 0.8  # 7 rows of 'dog' at confidence 0.8
    p[:7, 2:] = 0.05
    p[7:, 3] = 0.96  # 5 rows of 'ship' at confidence 0.96 (0.95 in float32 falls below the 0.95 edge)
    p[7:, 0] = 0.05
    write_shard(tmp_path / "part-00000.parquet", probs_to_table(_ids(12), p, 3, "gen0-teacher-abc"),
                _meta(topk=3), rejected=[("bad.png", "empty file")])
    report = inspect_labels(tmp_path)
    assert "rows: 12" in report
    assert "rejected images: 1" in report
    assert "num_classes: 5" in report and "topk: 3" in report and "gen0-teacher-abc" in report
    assert "topk_classes: list<" in report
    assert any(line.split()[:3] == ["1", "dog", "7"] for line in report.splitlines())
    assert any(line.split()[:3] == ["3", "ship", "5"] for line in report.splitlines())
    assert any(line.strip().startswith("[0.80, 0.85)") and line.split()[2] == "7" for line in report.splitlines())
    assert any(line.strip().startswith("[0.95, 1.00]") and line.split()[2] == "5" for line in report.splitlines())
    assert "img/0000.png: label=1 (dog) confidence=0.8000" in report
    assert "bad.png: empty file" in report
