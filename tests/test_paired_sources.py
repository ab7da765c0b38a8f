"""Paired sources: a manifest (image_id + one column per modality) and parallel folder trees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from noisystudent.data import SkippedImagesWarning
from noisystudent.data.paired import Modality, view_of
from noisystudent.data.paired_readers import paired_folders, paired_manifest
from noisystudent.errors import ConfigError

MODS = {"rgb": Modality("image", 3), "sig": Modality("signal", 2)}


def _rgb(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


def _sig(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.stack([np.arange(16, dtype=np.uint8) + value, np.full(16, value, np.uint8)])
    Image.fromarray(rows, mode="L").save(path)


def _manifest(tmp_path, n=6, drop_sig=(), corrupt=()):
    rows = []
    for k in range(n):
        _rgb(tmp_path / "rgb" / f"{k}.png", 10 * k)
        _sig(tmp_path / "sig" / f"{k}.png", k)
        if k in corrupt:
            (tmp_path / "sig" / f"{k}.png").write_bytes(b"not a png")
        rows.append({"image_id": f"item{k}", "rgb": f"rgb/{k}.png", "sig": "" if k in drop_sig else f"sig/{k}.png",
                     "label": ["a", "b"][k % 2]})
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_manifest_reads_each_modality_by_view(tmp_path):
    src = paired_manifest(_manifest(tmp_path), MODS, "rgb")
    assert len(src) == 6 and src.classes == ["a", "b"] and src.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert src.load(3).shape == (12, 12, 3) and src.in_chans == 3
    sig = src.view("sig")
    assert sig.in_chans == 2 and sig.image_ids() == src.image_ids()
    arr = sig.load(3)  # (1, length, channels): row 0 of the file is channel 0
    assert arr.shape == (1, 16, 2) and arr[0, :, 0].tolist() == list(range(3, 19)) and set(arr[0, :, 1]) == {3}
    part = sig.subset([4, 1])
    assert part.image_ids() == ["item4", "item1"] and part.view("rgb").load(0)[0, 0, 0] == 40
    assert view_of(src, "sig").modality == "sig" and view_of(src, None) is src


def test_item_missing_a_modality_or_unreadable_is_listed_and_skipped(tmp_path):
    with pytest.warns(SkippedImagesWarning, match="item1"):
        src = paired_manifest(_manifest(tmp_path, drop_sig=(1,), corrupt=(4,)), MODS, "sig")
    assert src.image_ids() == ["item0", "item2", "item3", "item5"]
    reasons = dict(src.skipped)
    assert reasons["item1"] == "missing modality sig" and reasons["item4"].startswith("sig:")


def test_disagreeing_counts_are_a_config_error_when_asked(tmp_path):
    with pytest.raises(ConfigError, match=r"^config field 'data.modalities'.*disagree in count \(rgb 6, sig 5"):
        paired_manifest(_manifest(tmp_path, drop_sig=(2,)), MODS, "rgb", missing="error")


def test_manifest_without_a_declared_modality_names_it(tmp_path):
    path = _manifest(tmp_path)
    with pytest.raises(ConfigError, match="data.modalities.depth"):
        paired_manifest(path, {**MODS, "depth": Modality("image", 1)}, "rgb")


def test_parallel_trees_pair_by_relative_path_without_extension(tmp_path):
    for k, cls in enumerate(["a", "b", "a"]):
        _rgb(tmp_path / "rgb" / cls / f"{k}.png", k)
        _sig(tmp_path / "sig" / cls / f"{k}.png", k)
    _rgb(tmp_path / "rgb" / "b" / "only_rgb.png", 9)  # no signal: skipped
    with pytest.warns(SkippedImagesWarning, match="only_rgb"):
        src = paired_folders(tmp_path, MODS, "sig", labeled=True)
    assert src.image_ids() == ["a/0", "a/2", "b/1"] and src.labels.tolist() == [0, 0, 1]
    assert src.load(2).shape == (1, 16, 2) and src.view("rgb").load(2)[0, 0, 0] == 1


def _shards(tmp_path, n=6, drop_sig=()):
    """Two Parquet shards of a paired manifest (image_id, rgb, sig)."""
    _manifest(tmp_path, n=n)
    rows = [{"image_id": f"item{k}", "rgb": f"rgb/{k}.png", "sig": "" if k in drop_sig else f"sig/{k}.png"} for k in range(n)]
    for s in range(2):
        pd.DataFrame(rows[s::2]).to_parquet(tmp_path / f"shard-{s}.parquet")
    return str(tmp_path / "shard-*.parquet")


def test_sharded_paired_manifest_streams_the_viewed_column_keyed_by_image_id(tmp_path):
    from noisystudent.data.paired_stream import PairedStreamSource
    from noisystudent.data.streaming import selected_files
    from noisystudent.errors import ImageDecodeError

    src = PairedStreamSource(_shards(tmp_path, drop_sig=(2,)), MODS, "rgb")
    ids, raws = next(src.read_partition(0, 10))
    assert ids == ["item0", "item2", "item4"] and raws[1].endswith("rgb/2.png")
    assert src.decode(ids[0], raws[0]).shape == (12, 12, 3)
    sig = view_of(src, "sig")
    ids, raws = next(sig.read_partition(0, 10))
    assert isinstance(raws[1], ImageDecodeError) and "missing modality sig" in raws[1].reason
    assert sig.decode(ids[0], raws[0]).shape == (1, 16, 2)
    chosen = selected_files(sig, ["item5", "item0"])  # what the student reads: every modality, in selection order
    assert chosen.image_ids() == ["item5", "item0"] and chosen.modality == "sig"
    assert chosen.view("rgb").load(0)[0, 0, 0] == 50 and chosen.load(1).shape == (1, 16, 2)


def test_streamed_labeling_reads_the_teachers_modality(tmp_path, ray_session):
    from noisystudent.checkpoint import ModelSpec, save_checkpoint
    from noisystudent.data.paired_stream import PairedStreamSource
    from pseudo_labels import label_images, read_labels

    spec = ModelSpec("resnet8", 2, 3, 12, [0.5] * 3, [0.5] * 3, ["a", "b"], modality="rgb")
    save_checkpoint(tmp_path / "t.pt", spec.build(inference=False), spec)
    src = view_of(PairedStreamSource(_shards(tmp_path, drop_sig=(2,)), MODS, "sig"), "rgb")
    summary = label_images(src, [str(tmp_path / "t.pt")], tmp_path / "labels", batch_size=4, progress=False)
    labels = read_labels(tmp_path / "labels")
    assert summary["rows"] == 6 and sorted(labels["image_id"]) == [f"item{k}" for k in range(6)]  # item2 has its rgb
