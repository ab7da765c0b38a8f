"""Issue 17, memory flat in the number of images: streaming sources, exactly-once partitions, streamed
selection and per-batch targets, on real PNGs, real tar and Parquet shards, real Fashion-MNIST and local Ray."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_png_folder

from noisystudent.data.streaming import StreamSource
from noisystudent.errors import ConfigError, ImageDecodeError, UserError
from pseudo_labels import LabelMetadata, probs_to_table, read_labels, read_selection, write_shard
from pseudo_labels.select import select_pseudo_labels
from pseudo_labels.selection_io import select_folder

CORRUPT = {"a/zz_garbage.png": b"this is not a png at all", "b/zz_empty.png": b""}


# --------------------------------------------------------------------------------------------------
# streamed selection equals the in-memory reference on Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist_labels(require_fmnist, tmp_path_factory):
    """Pseudo-labels of 59,000 real Fashion-MNIST images by a nearest-centroid teacher (numpy, seconds),
    probabilities rounded so that many confidences tie, written as 23 uneven shards."""
    from noisystudent.data import FASHION_MNIST_CLASSES, load_fashion_mnist

    images, labels = load_fashion_mnist(require_fmnist, "train")
    rng = np.random.default_rng(0)
    labeled = np.concatenate([rng.choice(np.flatnonzero(labels == c), 100, replace=False) for c in range(10)])
    rest = np.setdiff1d(np.arange(len(labels)), labeled)
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    centroids = np.stack([x[labeled[labels[labeled] == c]].mean(0) for c in range(10)])
    xr = x[rest]
    d = (xr ** 2).sum(1, keepdims=True) - 2 * xr @ centroids.T + (centroids ** 2).sum(1)[None]
    logits = -d / 4.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = np.round(p / p.sum(1, keepdims=True), 3)
    ids = [f"train-{i:05d}" for i in rest]
    truth = dict(zip(ids, labels[rest].astype(np.int64)))
    meta = LabelMetadata(class_names=list(FASHION_MNIST_CLASSES), num_classes=10, topk=3, teachers=["centroids"])
    out = tmp_path_factory.mktemp("fmnist-labels")
    cuts = np.sort(rng.choice(np.arange(1, len(rest)), 22, replace=False))
    for s, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(rest)])):
        write_shard(out / f"part-{s:05d}.parquet", probs_to_table(ids[a:b], p[a:b], 3, "centroids"), meta)
    (out / "_SUCCESS").write_text("")
    return out, truth


@pytest.mark.parametrize("threshold, per_class", [(0.0, 0), (0.6, 4000), (0.3, None), (0.9, 0), (0.0, 700)])
def test_streamed_selection_equals_in_memory_on_fashion_mnist(fmnist_labels, tmp_path, threshold, per_class):
    labels_dir, truth = fmnist_labels
    df = read_labels(labels_dir)
    df["true_label"] = df["image_id"].map(truth)
    ref, ref_summary = select_pseudo_labels(df, 10, threshold=threshold, per_class=per_class)

    def lookup(ids):
        return np.asarray([truth.get(i, -1) for i in ids], dtype=np.int64)

    summary = select_folder(labels_dir, tmp_path / "sel", threshold=threshold, per_class=per_class, truth=lookup,
                            rows_per_shard=7000)
    got = read_selection(tmp_path / "sel")
    assert dict(zip(got["image_id"], got["weight"])) == dict(zip(ref["image_id"], ref["weight"]))
    assert len(got) == len(ref) and got["image_id"].is_unique
    if per_class is not None:
        assert (ref["weight"] > 1).any() or per_class != 4000, "K = 4000 should duplicate some class"
        got = got.sort_values(["label", "confidence", "image_id"], ascending=[True, False, True], kind="mergesort")
        pd.testing.assert_frame_equal(got[["image_id", "label", "weight"]].reset_index(drop=True),
                                      ref[["image_id", "label", "weight"]].astype({"weight": "int32"}).reset_index(drop=True))
    assert summary.keys() - {"max_confidence"} == ref_summary.keys()
    for key, value in ref_summary.items():
        assert summary[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert summary["max_confidence"] == pytest.approx(float(df["confidence"].max()))


# --------------------------------------------------------------------------------------------------
# the same images through every streaming format


@pytest.fixture(scope="module")
def image_world(tmp_path_factory):
    """A folder of 3 x 12 PNGs plus corrupt files, and the same files as 3 WebDataset tars, 2 Parquet-bytes
    files and 4 manifest shards."""
    base = tmp_path_factory.mktemp("images")
    root = write_png_folder(base / "folder", {"a": 12, "b": 12, "c": 12}, size=16, mode="L")
    for name, data in CORRUPT.items():
        (root / name).write_bytes(data)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    wds = base / "wds"
    wds.mkdir()
    for s in range(3):
        with tarfile.open(wds / f"shard-{s:03d}.tar", "w") as tar:
            for rel in files[s::3]:
                tar.add(root / rel, arcname=rel)
                meta = f'{{"source": "{rel}"}}'.encode()  # a WebDataset companion member, ignored
                info = tarfile.TarInfo(rel.rsplit(".", 1)[0] + ".json")
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta))
    pqdir = base / "parquet"
    pqdir.mkdir()
    for s in range(2):
        part = files[s::2]
        pq.write_table(pa.table({"image_id": part, "image": [(root / r).read_bytes() for r in part]}),
                       pqdir / f"part-{s}.parquet")
    mdir = base / "manifests"
    mdir.mkdir()
    for s in range(4):
        rows = [str(root / r) for r in files[s::4]]
        if s % 2:
            pd.DataFrame({"path": rows}).to_csv(mdir / f"m-{s}.csv", index=False)
        else:
            pq.write_table(pa.table({"path": rows}), mdir / f"m-{s}.parquet")
    return {"root": root, "files": files, "wds": wds, "parquet": pqdir, "manifests": mdir}


def _read_all(src: StreamSource) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    good, bad = {}, {}
    for p in range(src.num_partitions):
        for ids, raws in src.read_partition(p, 5):
            for i, raw in zip(ids, raws):
                try:
                    good[i] = src.decode(i, raw)
                except ImageDecodeError as exc:
                    bad[i] = exc.reason
    return good, bad


@pytest.mark.parametrize("fmt", ["webdataset", "parquet_bytes", "manifest_shards"])
def test_every_format_reads_the_same_images_as_the_folder(image_world, fmt):
    w = image_world
    folder = StreamSource("folder_partitions", w["root"], in_chans=1)
    assert folder.partitions == ["a", "b", "c"]
    ref_good, ref_bad = _read_all(folder)
    assert sorted(ref_bad) == sorted(CORRUPT) and len(ref_good) == 36
    location = {"webdataset": w["wds"], "parquet_bytes": w["parquet"], "manifest_shards": w["manifests"]}[fmt]
    src = StreamSource(fmt, location, in_chans=1)
    good, bad = _read_all(src)
    if fmt == "manifest_shards":  # ids are the paths as the manifest writes them
        good = {str(Path(k).relative_to(w["root"])): v for k, v in good.items()}
        bad = {str(Path(k).relative_to(w["root"])): v for k, v in bad.items()}
    assert good.keys() == ref_good.keys()
    for k in good:
        np.testing.assert_array_equal(good[k], ref_good[k])
    assert sorted(bad) == sorted(CORRUPT), "corrupt samples are listed, not fatal"


def test_truncated_tar_and_bad_settings_are_reported(image_world, tmp_path):
    good_tar = image_world["wds"] / "shard-000.tar"
    data = good_tar.read_bytes()
    with tarfile.open(good_tar) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".png") and m.size > 100][5]
    (tmp_path / "cut.tar").write_bytes(data[: member.offset_data + member.size // 2])  # cut inside an image
    src = StreamSource("webdataset", tmp_path, in_chans=1)
    good, bad = _read_all(src)
    assert len(good) >= 5 and member.name not in good
    assert any(k.endswith("#rest") or k == member.name for k in bad), bad
    with pytest.raises(ConfigError, match="data.unlabeled_format"):
        StreamSource("tfrecord", tmp_path)
    with pytest.raises(UserError, match="data.unlabeled_bytes_column"):
        _read_all(StreamSource("parquet_bytes", image_world["parquet"], bytes_column="jpeg"))
    with pytest.raises(UserError, match="no .tar files"):
        StreamSource("webdataset", image_world["parquet"])


# --------------------------------------------------------------------------------------------------
# exactly once across many input shards, with a kill in the middle, on real Ray


def _by_relpath(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    ids = [str(Path(i).relative_to(root)) if Path(i).is_absolute() else i for i in df["image_id"]]
    return df.assign(image_id=ids).sort_values("image_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from test_labeling import _make_teacher

    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    _make_teacher(path, 1)
    return path


@pytest.fixture(scope="module")
def manifest_labels(image_world, teacher, ray_session, tmp_path_factory):
    """The reference: the 4 manifest shards labeled without incident."""
    from pseudo_labels import label_images

    out = tmp_path_factory.mktemp("labels") / "manifest"
    summary = label_images(StreamSource("manifest_shards", image_world["manifests"], in_chans=1), [teacher], out,
                           batch_size=8, progress=False)
    return summary, _by_relpath(read_labels(out), image_world["root"])


def test_streamed_labeling_resumes_only_missing_shards(image_world, teacher, ray_session, tmp_path):
    """Across 3 WebDataset shards: the driver killed after shards 0 and 2 were written (a temporary of shard 1
    left behind) resumes by labeling shard 1 only, leaving the others untouched, with no image twice. (Every
    format decodes the same images: test_every_format_reads_the_same_images_as_the_folder.)"""
    from pseudo_labels import label_images

    w = image_world
    out = tmp_path / "wds"
    src = StreamSource("webdataset", w["wds"], in_chans=1)
    summary = label_images(src, [teacher], out, batch_size=8, progress=False)
    assert summary["shards"] == 3 and summary["rows"] == 36 and summary["rejected"] == 2
    assert sum(summary["class_histogram"]) == 36
    assert sorted(pd.read_csv(out / "rejected.csv")["image_id"]) == sorted(CORRUPT)
    ref_df = _by_relpath(read_labels(out), w["root"])

    for name in ("part-00001.parquet", "_SUCCESS", "summary.json", "rejected.csv"):
        (out / name).unlink()
    (out / ".tmp-part-00001.parquet.abcd").write_bytes(b"half written")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    again = label_images(src, [teacher], out, batch_size=8, progress=False)
    assert again["processed_this_run"] == 38 // 3 + (1 if 38 % 3 > 1 else 0) and again["rows"] == 36
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in kept} == kept
    assert not list(out.glob(".tmp-*"))
    df = _by_relpath(read_labels(out, require_complete=True), w["root"])
    assert df["image_id"].is_unique
    pd.testing.assert_frame_equal(df[["image_id", "label"]], ref_df[["image_id", "label"]])

    (out / "_SUCCESS").unlink()  # another partitioning of the same folder is refused, not mixed in
    with pytest.raises(UserError, match="another job"):
        label_images(StreamSource("parquet_bytes", w["parquet"], in_chans=1), [teacher], out, batch_size=8, progress=False)


@pytest.mark.slow
def test_actor_killed_after_writing_a_shard_leaves_no_duplicate(image_world, teacher, manifest_labels, tmp_path):
    """An actor dies right after writing a Parquet-bytes shard, before the driver hears of it; Ray restarts it
    and retries the task, which rewrites that shard under the same name: every image once. (~30 s: the restart.)"""
    from pseudo_labels import label_images

    marker = tmp_path / "killed"
    out = tmp_path / "pq"
    summary = label_images(StreamSource("parquet_bytes", image_world["parquet"], in_chans=1), [teacher], out,
                           kill_once_marker=str(marker), batch_size=8, progress=False)
    assert marker.exists()
    assert summary["shards"] == 2 and summary["rows"] == 36 and summary["rejected"] == 2
    df = _by_relpath(read_labels(out, require_complete=True), image_world["root"])
    assert df["image_id"].is_unique
    pd.testing.assert_frame_equal(df[["image_id", "label"]], manifest_labels[1][["image_id", "label"]])


# --------------------------------------------------------------------------------------------------
# students read targets per batch


def test_topk_targets_expand_to_the_dense_rows_of_soft_targets(fmnist_labels, tmp_path):
    from noisystudent.data.torch_dataset import RepeatedDataset, TopKTargets
    from pseudo_labels import soft_targets
    from pseudo_labels.selection_io import read_selection_arrow, topk_arrays

    labels_dir, _ = fmnist_labels
    select_folder(labels_dir, tmp_path / "sel", threshold=0.5, per_class=3000)
    table = read_selection_arrow(tmp_path / "sel", ["image_id", "topk_classes", "topk_probs", "weight"])
    classes, probs = topk_arrays(table)
    assert classes.shape == (table.num_rows, 3) and classes.dtype == np.int32
    dense = soft_targets(table.to_pandas(), 10)
    t = TopKTargets(classes, probs, 10)
    rows = np.random.default_rng(0).choice(len(t), 500, replace=False)
    np.testing.assert_allclose(np.stack([t.dense(i).numpy() for i in rows]), dense[rows], rtol=1e-6, atol=1e-7)
    hard = TopKTargets(classes, probs, 10, hard=True)
    assert all(int(hard.dense(i).argmax()) == int(dense[i].argmax()) and hard.dense(i).sum() == 1 for i in rows)
    assert t.nbytes == table.num_rows * 3 * 8  # vs 10 * 4 bytes a row dense

    w = table["weight"].to_numpy()
    rep = RepeatedDataset(list(range(len(w))), w)
    expanded = np.repeat(np.arange(len(w)), w)
    assert len(rep) == len(expanded) == int(w.sum())
    probe = np.random.default_rng(1).choice(len(rep), 1000, replace=False)
    assert [rep[int(j)] for j in probe] == expanded[probe].tolist()


def test_selection_targets_read_shard_by_shard_equal_the_whole_table_read(fmnist_labels, tmp_path):
    """The student's read (per shard, into arrays allocated once) gives exactly the whole-table read."""
    from pseudo_labels import read_metadata
    from pseudo_labels.selection_io import read_selection_arrow, read_selection_targets, topk_arrays
    from pseudo_labels.store import list_shards

    labels_dir, _ = fmnist_labels
    select_folder(labels_dir, tmp_path / "sel", threshold=0.3, per_class=2000)
    assert len(list_shards(tmp_path / "sel")) > 1, "the check needs several shards"
    ids, classes, probs, weights = read_selection_targets(tmp_path / "sel", read_metadata(tmp_path / "sel"))
    table = read_selection_arrow(tmp_path / "sel", ["image_id", "topk_classes", "topk_probs", "weight"])
    ref_c, ref_p = topk_arrays(table)
    assert ids.to_pylist() == table["image_id"].to_pylist()
    np.testing.assert_array_equal(classes, ref_c)
    np.testing.assert_array_equal(probs, ref_p)
    np.testing.assert_array_equal(weights, table["weight"].to_numpy())
    assert classes.dtype == np.int32 and probs.dtype == np.float32 and weights.dtype == np.int64


def test_streaming_config_keys_are_validated(tmp_path, image_world):
    from noisystudent.data import create_data
    from pipelines.config import config_from_dict

    with pytest.raises(ConfigError, match="data.unlabeled_format"):
        config_from_dict({"data": {"unlabeled_format": "tfrecord"}})
    with pytest.raises(ConfigError, match="data.unlabeled_format"):
        create_data(config_from_dict({"data": {"unlabeled_format": "webdataset"}}).data)
    write_png_folder(image_world["root"].parent / "labeled", {"a": 4, "b": 4, "c": 4}, size=16, mode="L")
    cfg = config_from_dict({"data": {"kind": "folder", "labeled": str(image_world["root"].parent / "labeled"),
                                     "test": str(image_world["root"].parent / "labeled"),
                                     "unlabeled": str(image_world["wds"]), "unlabeled_format": "webdataset",
                                     "unlabeled_limit": 5, "in_chans": 1}}).data
    with pytest.raises(ConfigError, match="data.unlabeled_limit"):
        create_data(cfg)
    from dataclasses import replace

    bundle = create_data(replace(cfg, unlabeled_limit=None))
    assert isinstance(bundle.unlabeled, StreamSource) and bundle.unlabeled.num_partitions == 3
    assert "3 partitions" in bundle.describe()


def test_student_reads_the_selection_of_a_streaming_source(image_world, tmp_path):
    """pseudo_set's path for streaming sources: the selected ids of manifest shards / folder partitions open as
    files (ids in one Arrow array); WebDataset and Parquet-bytes selections are refused naming the field."""
    from noisystudent.engine import PseudoLabeledSet
    from pipelines.steps import selected_source
    from pseudo_labels.selection_io import read_selection_arrow, topk_arrays

    w = image_world
    for fmt, location in (("manifest_shards", w["manifests"]), ("folder_partitions", w["root"])):
        src = StreamSource(fmt, location, in_chans=1)
        ids = [i for p in range(src.num_partitions) for batch, _ in src.read_partition(p, 100) for i in batch]
        probs = np.random.default_rng(0).dirichlet(np.ones(3), size=len(ids)).astype(np.float32)
        labels = tmp_path / fmt / "labels"
        labels.mkdir(parents=True)
        write_shard(labels / "part-00000.parquet", probs_to_table(ids, probs, 2, "t"),
                    LabelMetadata(class_names=["a", "b", "c"], num_classes=3, topk=2))
        select_folder(labels, tmp_path / fmt / "sel", threshold=0.0, per_class=20)
        table = read_selection_arrow(tmp_path / fmt / "sel", ["image_id", "topk_classes", "topk_probs", "weight"])
        images = selected_source(src, table["image_id"], 1)
        classes, p = topk_arrays(table)
        pseudo = PseudoLabeledSet(images, weights=table["weight"].to_numpy(), topk_classes=classes, topk_probs=p,
                                  num_classes=3)
        assert len(images) == table.num_rows and int(pseudo.weights.sum()) == 60
        readable = [i for i in range(len(images)) if images.image_id(i).split("/")[-1] not in
                    {Path(c).name for c in CORRUPT}]
        assert all(images.load(i).shape == (16, 16, 1) for i in readable)
        assert pseudo.dataset_targets().dense(0).sum() == pytest.approx(1.0)
    with pytest.raises(UserError, match="data.unlabeled_format"):
        selected_source(StreamSource("webdataset", w["wds"], in_chans=1), pa.array(["a/img_0000.png"]), 1)


def test_webdataset_members_are_grouped_into_samples_by_key(tmp_path):
    """WebDataset: consecutive members with one key (the path up to the file name's first dot) are one
    sample, its first image member the image; companions and image-less samples add no image."""
    from noisystudent.data.streaming import sample_key, tar_samples

    assert sample_key("a/img_0001.seg.png") == ("a/img_0001", "seg.png") and sample_key("x.cls") == ("x", "cls")
    assert sample_key("a/.hidden.png") is None and sample_key("README") is None
    members = [("a/s1.png", b"p1"), ("a/s1.cls", b"3"), ("a/s1.seg.png", b"mask"),  # one sample, its first image
               ("a/s2.json", b"{}"),                                               # no image: no sample
               ("b/s3.json", b"{}"), ("b/s3.jpg", b"p3")]                          # image after a companion
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert list(tar_samples(str(tmp_path / "shard.tar"))) == [("a/s1.png", b"p1"), ("b/s3.jpg", b"p3")]
