"""The Ray Data labeling job on real PNG folders with corrupt files, real checkpoints and local Ray."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from noisystudent.checkpoint import ModelSpec, save_checkpoint
from noisystudent.data import UnlabeledFolderSource
from noisystudent.errors import UserError
from noisystudent.io import read_json
from noisystudent.models import create_model
from noisystudent.transforms import create_transform
from pseudo_labels import is_complete, label_images, read_labels, read_metadata
from conftest import write_png_folder

CLASSES = ["a", "b", "c"]
CORRUPT = {"a/zz_garbage.png": "not an image", "b/zz_empty.png": "empty", "c/zz_truncated.png": "truncated"}
CHUNK = 20  # 93 images -> 5 chunks
RUN = dict(chunk_size=CHUNK, batch_size=8, progress=False)


def _make_teacher(path: Path, seed: int, classes=CLASSES, train_on=None, steps: int = 0) -> str:
    """A resnet8 checkpoint; with ``train_on`` (a source with hidden labels) a few Adam steps make its
    labels differ between images, as a real teacher's do."""
    torch.manual_seed(seed)
    model = create_model("resnet8", num_classes=len(classes), in_chans=1)
    spec = ModelSpec(name="resnet8", num_classes=len(classes), in_chans=1, image_size=16, mean=[0.5], std=[0.5],
                     classes=list(classes))
    if train_on is not None and steps:
        tf = create_transform(16, 1, [0.5], [0.5])
        idx = [i for i in range(len(train_on)) if train_on.image_id(i) not in CORRUPT]
        x = torch.stack([tf(train_on.load(i)) for i in idx])
        y = torch.as_tensor(np.asarray(train_on.hidden_labels)[idx])
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return save_checkpoint(path, model.eval(), spec, generation=0, role="teacher")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabeled")
    write_png_folder(root, {"a": 30, "b": 30, "c": 30}, size=16, mode="L")
    good_png = (root / "a" / "img_0000.png").read_bytes()
    (root / "a" / "zz_garbage.png").write_bytes(b"this is not a png at all")
    (root / "b" / "zz_empty.png").write_bytes(b"")
    (root / "c" / "zz_truncated.png").write_bytes(good_png[: len(good_png) // 2])
    source = UnlabeledFolderSource(root, in_chans=1)
    # Pretend the true classes are known (as for Fashion-MNIST's unlabeled split) to check the accuracy.
    source.hidden_labels = np.asarray([CLASSES.index(source.image_id(i)[0]) for i in range(len(source))])
    models = tmp_path_factory.mktemp("models")
    ids = [_make_teacher(models / "t1" / "model.pt", 1, train_on=source, steps=6),
           _make_teacher(models / "t2" / "model.pt", 2, train_on=source, steps=3)]
    return {"source": source, "t1": models / "t1" / "model.pt", "t2": models / "t2" / "model.pt", "ids": ids,
            "tmp": tmp_path_factory.mktemp("labels")}


def _bare_probs(ckpt_paths: list[Path], source, indices: list[int], temperature: float = 1.0) -> np.ndarray:
    """The same teachers run by hand: clean transform, eval mode, softmax(logits / T), mean over teachers."""
    from noisystudent.checkpoint import load_checkpoint

    out = []
    for path in ckpt_paths:
        ck = load_checkpoint(path)
        model = ck.build_model("cpu")
        tf = create_transform(ck.spec.image_size, ck.spec.in_chans, ck.spec.mean, ck.spec.std)
        x = torch.stack([tf(source.load(i)) for i in indices])
        with torch.no_grad():
            out.append(torch.softmax(model(x) / temperature, dim=1).numpy())
    return np.mean(out, axis=0)


@pytest.fixture(scope="module")
def labeled(world, ray_session):
    out = world["tmp"] / "single"
    summary = label_images(world["source"], [world["t1"]], out, **RUN)
    return out, summary


def _readable(source) -> list[int]:
    return [i for i in range(len(source)) if source.image_id(i) not in CORRUPT]


def test_every_readable_image_labeled_exactly_once(world, labeled):
    out, summary = labeled
    source = world["source"]
    assert len(source) == 93
    assert is_complete(out)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-{c:05d}.parquet" for c in range(5)]
    df = read_labels(out, require_complete=True)
    assert len(df) == 90 and df["image_id"].is_unique
    assert set(df["image_id"]) == {source.image_id(i) for i in _readable(source)}
    rejected = pd.read_csv(out / "rejected.csv")
    assert sorted(rejected["image_id"]) == sorted(CORRUPT)
    assert rejected["reason"].str.len().min() > 0
    assert rejected.set_index("image_id").loc["b/zz_empty.png", "reason"] == "empty file"

    assert summary == read_json(out / "summary.json")
    assert summary["rows"] == 90 and summary["rejected"] == 3 and summary["images"] == 93
    assert sum(summary["class_histogram"]) == 90 and len(summary["class_histogram"]) == 3
    assert len(summary["confidence_histogram"]["counts"]) == 20 and sum(summary["confidence_histogram"]["counts"]) == 90
    assert summary["processed_this_run"] == 93 and summary["throughput_images_per_s"] > 0
    assert summary["teachers"] == [world["ids"][0]] and summary["topk"] == 3 and summary["temperature"] == 1.0
    meta = read_metadata(out)
    assert meta.class_names == CLASSES and meta.num_classes == 3 and meta.teachers == [world["ids"][0]]


def test_labels_equal_a_bare_torch_forward(world, labeled):
    out, summary = labeled
    source = world["source"]
    idx = _readable(source)
    probs = _bare_probs([world["t1"]], source, idx)
    df = read_labels(out).set_index("image_id").loc[[source.image_id(i) for i in idx]]
    assert len(set(probs.argmax(1))) > 1, "test teacher should not give one class to everything"
    np.testing.assert_array_equal(df["label"].to_numpy(), probs.argmax(1))
    np.testing.assert_allclose(df["confidence"].to_numpy(), probs.max(1), rtol=1e-5, atol=1e-6)
    assert (df["teacher"] == world["ids"][0]).all()
    truth = np.asarray(source.hidden_labels)[idx]
    assert summary["pseudo_label_accuracy"] == pytest.approx(float((probs.argmax(1) == truth).mean()))


def test_killed_run_is_completed_without_touching_finished_shards(world, labeled, ray_session):
    done, _ = labeled
    out = world["tmp"] / "killed"
    shutil.copytree(done, out)
    for name in ("part-00001.parquet", "part-00003.parquet", "_SUCCESS", "summary.json", "rejected.csv"):
        (out / name).unlink()
    (out / ".tmp-part-00003.parquet.x1y2").write_bytes(b"half written")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert len(kept) == 3

    summary = label_images(world["source"], [world["t1"]], out, **RUN)
    assert summary["processed_this_run"] == 2 * CHUNK
    assert not list(out.glob(".tmp-*"))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in kept} == kept
    assert len(list(out.glob("part-*.parquet"))) == 5
    df = read_labels(out, require_complete=True)
    pd.testing.assert_frame_equal(
        df.sort_values("image_id").reset_index(drop=True)[["image_id", "label", "confidence"]],
        read_labels(done).sort_values("image_id").reset_index(drop=True)[["image_id", "label", "confidence"]],
    )
    assert sorted(pd.read_csv(out / "rejected.csv")["image_id"]) == sorted(CORRUPT)

    # Complete now: a re-run returns the summary without work.
    success = (out / "_SUCCESS").stat().st_mtime_ns
    assert label_images(world["source"], [world["t1"]], out, **RUN) == summary
    assert (out / "_SUCCESS").stat().st_mtime_ns == success


def test_force_relabels_everything_and_a_killed_actor_is_retried(world, labeled, ray_session):
    """``force`` relabels every shard, on two actors; one of them dies hard mid-job and is restarted by Ray:
    the set is complete, duplicate-free and equal to an uninterrupted run's."""
    done, _ = labeled
    out = world["tmp"] / "forced"
    shutil.copytree(done, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    marker = world["tmp"] / "actor-killed"
    summary = label_images(world["source"], [world["t1"]], out, force=True, num_actors=2, kill_once_marker=str(marker),
                           **RUN)
    assert marker.exists(), "an actor was killed"
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert summary["processed_this_run"] == 93 and summary["rows"] == 90 and summary["rejected"] == 3
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)
    df = read_labels(out, require_complete=True).sort_values("image_id").reset_index(drop=True)
    ref = read_labels(done).sort_values("image_id").reset_index(drop=True)
    assert df["image_id"].is_unique and len(df) == 90
    pd.testing.assert_frame_equal(df[["image_id", "label"]], ref[["image_id", "label"]])
    np.testing.assert_allclose(df["confidence"], ref["confidence"], rtol=1e-5)


def test_other_job_in_folder_is_refused(world, labeled, tmp_path):
    done, _ = labeled
    with pytest.raises(UserError, match="teachers.*use force"):
        label_images(world["source"], [world["t2"]], done, **RUN)
    with pytest.raises(UserError, match="num_images was 93, now 31"):
        label_images(world["source"].subset(range(31)), [world["t1"]], done, **RUN)
    partial = tmp_path / "partial"
    shutil.copytree(done, partial)
    (partial / "_SUCCESS").unlink()
    with pytest.raises(UserError, match="chunk_size was 20, now 10"):
        label_images(world["source"], [world["t1"]], partial, **{**RUN, "chunk_size": 10})
    with pytest.raises(UserError, match="temperature"):
        label_images(world["source"], [world["t1"]], partial, temperature=3.0, **RUN)


def test_ensemble_needs_the_same_classes(world, tmp_path):
    other = tmp_path / "other.pt"
    _make_teacher(other, 3, classes=["a", "b", "d"])
    with pytest.raises(UserError, match="same classes"):
        label_images(world["source"], [world["t1"], other], tmp_path / "out", **RUN)
    with pytest.raises(UserError, match="temperature"):
        label_images(world["source"], [world["t1"]], tmp_path / "out", temperature=0.0, **RUN)


def test_a_labeling_actor_imports_neither_torchvision_nor_albumentations(tmp_path):
    """A fresh labeling actor (what Ray Data starts for every job) builds its teacher and input without
    torchvision or albumentations: about 2 s of each job's fixed cost on a 2-core CPU (docs/accelerator.md)."""
    import subprocess
    import sys

    ckpt = tmp_path / "t.pt"
    _make_teacher(ckpt, 0)
    code = ("import sys; import numpy as np; from noisystudent.data.array import ArraySource; "
            "from pseudo_labels.labeling import Labeler, load_teachers; from pseudo_labels.sharded import reader_for; "
            "r = reader_for(ArraySource(np.zeros((2, 16, 16), np.uint8), prefix='u'), 2); "
            f"lab = Labeler(r, load_teachers([{str(ckpt)!r}])); "
            "t = lab.process(*next(iter(r.read_partition(0, 2))))[0]; "
            "print(t.num_rows, sorted(k for k in ('torchvision', 'albumentations', 'torch._dynamo') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "2 []", out.stdout
