"""STPM anomaly detection: loss and maps, a detector trained through the engine (killed and resumed), scoring
folders on Ray Data with corrupt files and killed jobs, the report, the config and torchvision weights.

Tiny world: 16x16 grey images of a bright disk on a dark background are "normal"; the teacher is a
ResNet-8 trained for a few steps to tell disks from squares and stripes; the detector trains 8 epochs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from noisystudent.anomaly import (
    Detector,
    add_defect,
    auroc,
    choose_threshold,
    combine_maps,
    decode_map,
    encode_map,
    pixel_auroc,
    roc_curve,
    score_source,
)
from noisystudent.checkpoint import ModelSpec, save_checkpoint
from noisystudent.cli import main
from noisystudent.data.array import ArraySource
from noisystudent.distill.methods.stpm import stpm_loss, stpm_stage_maps
from noisystudent.errors import ConfigError, UserError
from noisystudent.models import create_model
from pipelines.anomaly.config import anomaly_config_from_dict, load_anomaly_config
from pipelines.anomaly.score import read_scores, score_images
from pipelines.anomaly.train import load_detector, train_detector

# the detector trains 40 steps on purpose (seconds); the engine's small-budget warning is expected
pytestmark = pytest.mark.filterwarnings("ignore:the student of generation 0 will run")
ROOT = Path(__file__).resolve().parents[1]
S = 16
EPOCHS = 8
CORRUPT = {"good/zz_garbage.png": b"not a png at all", "defect/zz_empty.png": b""}
_YY, _XX = np.mgrid[:S, :S]


def shapes(rng: np.random.Generator, n: int, kind: int = 0) -> np.ndarray:
    """n images: 0 a bright disk (normal), 1 a bright square, 2 bright stripes; on dark noise, jittered."""
    out = np.zeros((n, S, S), np.uint8)
    for i in range(n):
        img = rng.integers(0, 40, (S, S))
        cx, cy, r = S / 2 + rng.uniform(-1.5, 1.5), S / 2 + rng.uniform(-1.5, 1.5), rng.uniform(4.5, 5.5)
        if kind == 0:
            m = (_XX - cx) ** 2 + (_YY - cy) ** 2 <= r * r
        elif kind == 1:
            m = (abs(_XX - cx) <= r * 0.8) & (abs(_YY - cy) <= r * 0.8)
        else:
            m = ((_YY // 2) % 2 == 0) & (abs(_XX - cx) <= r)
        img[m] = 170 + rng.integers(0, 40, m.sum())
        out[i] = img
    return out


def write_pngs(folder: Path, images: np.ndarray, prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f"{prefix}_{i:04d}.png")


def make_teacher(path: Path, steps: int = 40) -> None:
    """A ResNet-8 classifier checkpoint of this project: disks vs squares vs stripes, a few Adam steps."""
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=3, in_chans=1)
    x = np.concatenate([shapes(rng, 64, k) for k in range(3)])
    xt = (torch.tensor(x, dtype=torch.float32)[:, None] / 255 - 0.3) / 0.3
    yt = torch.arange(3).repeat_interleave(64)
    opt = torch.optim.Adam(net.parameters(), 0.01)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (48,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
        opt.step()
    spec = ModelSpec(name="resnet8", num_classes=3, in_chans=1, image_size=S, mean=[0.3], std=[0.3],
                     classes=["disk", "square", "stripes"])
    save_checkpoint(path, net.eval(), spec)


def config_dict(root: Path, **over) -> dict:
    cfg = {"name": "disks", "device": "cpu",
           "data": {"kind": "folder", "train": str(root / "train"), "val_fraction": 0.2},
           "teacher": {"checkpoint": str(root / "teacher.pt")},
           "train": {"epochs": EPOCHS, "batch_size": 32, "lr": 0.4, "min_steps": 0},
           "threshold": {"fpr": 0.05},
           "score": {"batch_size": 8, "chunk_size": 8}}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A detector trained through the CLI after a first call that failed in epoch 3 (the resume path)."""
    root = tmp_path_factory.mktemp("anomaly")
    write_pngs(root / "train", shapes(np.random.default_rng(0), 200))
    make_teacher(root / "teacher.pt")
    (root / "config.yaml").write_text(yaml.safe_dump(config_dict(root)))
    run = root / "run"
    with pytest.raises(RuntimeError, match="injected failure"):
        train_detector(anomaly_config_from_dict(config_dict(root)), run, progress=False, fail_at_epoch=2)
    assert (run / "student" / "last.pt").is_file() and not (run / "detector.json").exists()
    res = CliRunner().invoke(main, ["anomaly", "train", str(root / "config.yaml"), "--run-dir", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    # a test folder with ground truth: good/ (clean disks) and defect/ (scratched disks), plus corrupt files
    clean = shapes(np.random.default_rng(5), 12)
    rng = np.random.default_rng(7)
    scratched, masks = [], {}
    for i, c in enumerate(clean):
        img, mask, _ = add_defect(c, rng, kind="scratch")
        scratched.append(img)
        masks[f"defect/img_{i:04d}.png"] = mask
    write_pngs(root / "test" / "good", clean)
    write_pngs(root / "test" / "defect", np.stack(scratched))
    for name, blob in CORRUPT.items():
        (root / "test" / name).write_bytes(blob)
    good_png = (root / "test" / "good" / "img_0000.png").read_bytes()
    (root / "test" / "defect" / "zz_truncated.png").write_bytes(good_png[: len(good_png) // 2])
    return {"root": root, "run": run, "clean": clean, "scratched": np.stack(scratched), "masks": masks}


# --------------------------------------------------------------------------------------------------
# the loss, the maps, the threshold and the metrics (no training)


def test_stpm_loss_and_maps_are_the_papers():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 8, 6, 6, generator=g), torch.randn(2, 16, 3, 3, generator=g)]
    t = [torch.randn(2, 8, 6, 6, generator=g), torch.randn(2, 16, 3, 3, generator=g)]
    maps = stpm_stage_maps(s, t)
    # by hand at one location: 1/2 || t/|t| - s/|s| ||^2 over the channels
    a, b = t[0][1, :, 2, 4], s[0][1, :, 2, 4]
    ref = 0.5 * ((a / a.norm() - b / b.norm()) ** 2).sum()
    assert maps[0].shape == (2, 6, 6) and maps[1].shape == (2, 3, 3)
    assert torch.allclose(maps[0][1, 2, 4], ref, atol=1e-6)
    assert float(stpm_loss(s, t)) == pytest.approx(float(maps[0].mean() + maps[1].mean()), rel=1e-6)
    assert float(stpm_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert 0 <= float(min(m.min() for m in maps)) and float(max(m.max() for m in maps)) <= 2 + 1e-6
    prod, tot = combine_maps(maps, (12, 12), "product"), combine_maps(maps, (12, 12), "sum")
    up = [torch.nn.functional.interpolate(m[:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
          for m in maps]
    assert torch.allclose(prod, up[0] * up[1]) and torch.allclose(tot, up[0] + up[1])


def test_threshold_map_codec_and_auroc():
    scores = np.arange(1, 101, dtype=float)
    assert choose_threshold(scores, 0.05) == 95.0 and (scores > 95.0).mean() == 0.05
    assert choose_threshold(scores, 0.0) == 100.0 and choose_threshold(scores[:10], 0.05) == 10.0
    m = np.random.default_rng(0).random((16, 16)).astype(np.float32) ** 12  # spans many decades, as products do
    assert np.array_equal(decode_map(encode_map(m), (16, 16)), m)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # with ties
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y == 1] for b in s[y == 0]]
    assert auroc(y, s) == pytest.approx(np.mean(pairs), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    assert auroc(np.ones(3), [1, 2, 3]) is None
    masks = np.zeros((2, 4, 4)); masks[0, :2, :2] = 1
    assert pixel_auroc(masks * 5 + 1, masks) == 1.0


def test_synthetic_defects_have_masks_that_mark_a_visible_change():
    rng = np.random.default_rng(0)
    clean = shapes(rng, 6)
    donors = shapes(rng, 6, kind=1)
    for kind in ("scratch", "blotch", "patch"):
        for k, c in enumerate(clean):
            img, mask, got = add_defect(c, rng, kind=kind, donor=donors[k])
            on = mask > 0
            assert got == kind and on.any() and img.shape == c.shape
            assert np.array_equal(img[~on], c[~on]), "a defect changes only its mask"
            assert np.abs(img[on].astype(int) - c[on]).mean() >= 20


# --------------------------------------------------------------------------------------------------
# training and the detector


def test_training_lowers_the_loss_and_a_killed_run_resumed(world):
    run = world["run"]
    hist = pd.read_csv(run / "student" / "history.csv")
    assert hist["epoch"].tolist() == list(range(1, EPOCHS + 1)), "the resumed run continued, it did not restart"
    assert (run / "student" / ".failed-once-2").exists(), "the first call was killed in epoch 3"
    assert hist["loss_stpm"].iloc[-1] < 0.5 * hist["loss_stpm"].iloc[0], hist[["epoch", "loss_stpm"]]
    assert (np.diff(hist["train_loss"].to_numpy()) < 0).sum() >= EPOCHS - 2
    rec = yaml.safe_load((run / "detector.json").read_text())
    assert rec["method"] == "stpm" and rec["stages"] == [0, 1, 2] and rec["combine"] == "product"
    assert rec["val_images"] == 40 and rec["val_fpr"] <= 0.05 and rec["threshold"] > 0
    val = pd.read_csv(run / "val_scores.csv")
    assert rec["threshold"] == choose_threshold(val["score"].to_numpy(), 0.05)
    assert not (run / "student" / "last.pt").exists() and (run / "teacher.pt").is_file()


def test_a_synthetic_defect_scores_higher_than_its_clean_image(world):
    rec, teacher, student = load_detector(world["run"])
    det = Detector(teacher, student, rec["stages"], rec["combine"])
    clean = score_source(det, ArraySource(world["clean"]), with_maps=True)
    bad = score_source(det, ArraySource(world["scratched"]), with_maps=True)
    assert (bad["score"] > clean["score"]).mean() >= 0.75, (bad["score"], clean["score"])
    assert np.median(bad["score"] / clean["score"]) > 1.05
    squares = score_source(det, ArraySource(shapes(np.random.default_rng(9), 12, kind=1)))
    assert auroc(np.r_[np.zeros(12), np.ones(12)], np.r_[clean["score"], squares["score"]]) > 0.9


def test_config_errors_name_the_field_and_the_run_refuses_a_changed_config(world, tmp_path):
    root = world["root"]
    for bad, field in [({"teacher": {}}, "teacher.checkpoint"),
                       ({"teacher": {"checkpoint": "a.pt", "weights": "b.pth"}}, "teacher.weights"),
                       ({"teacher": {"weights": "b.pth"}}, "teacher.model"),
                       ({"stpm": {"stagez": [0]}}, "stpm.stagez"),
                       ({"stpm": {"combine": "max"}}, "stpm.combine"),
                       ({"train": {"lr": 0}}, "train.lr"),
                       ({"data": {"kind": "fashion_mnist", "normal_class": "Shoe"}}, "data.normal_class"),
                       ({"data": {"train": "x", "val_fraction": 0.0}}, "data.val_fraction")]:
        cfg = config_dict(root)
        for k, v in bad.items():
            cfg[k] = {**cfg.get(k, {}), **v} if k != "teacher" else v
        with pytest.raises(ConfigError, match=rf"'{field}'"):
            anomaly_config_from_dict(cfg)
    for name in ("fashion_mnist_sneaker.yaml", "folder_resnet18.yaml"):
        assert load_anomaly_config(ROOT / "configs" / "anomaly" / name).stpm.stages == [0, 1, 2]

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    student_mtime = (run / "student" / "model.pt").stat().st_mtime_ns
    with pytest.raises(UserError, match=r"config field 'stpm.stages' differs from the one frozen .*\(was \[0, 1, 2\], now \[0, 1\]\)"):
        train_detector(anomaly_config_from_dict(config_dict(root, stpm={"stages": [0, 1]})), run, progress=False)
    # a new FPR target: the threshold is set again from the stored validation scores, nothing is retrained
    rec = train_detector(anomaly_config_from_dict(config_dict(root, threshold={"fpr": 0.5})), run, progress=False)
    assert rec["threshold_fpr_target"] == 0.5 and rec["val_fpr"] <= 0.5
    assert rec["threshold"] < load_detector(world["run"])[0]["threshold"]
    assert (run / "student" / "model.pt").stat().st_mtime_ns == student_mtime
    res = CliRunner().invoke(main, ["anomaly", "train", str(root / "config.yaml"), "--run-dir", str(tmp_path / "r2"),
                                    "--set", "train.epochs=0"])
    assert res.exit_code == 2 and "train.epochs" in res.output
    res = CliRunner().invoke(main, ["anomaly", "score", str(tmp_path / "nothing"), str(root / "test"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no trained detector" in res.output


def test_torchvision_weights_from_a_local_file(tmp_path):
    import torchvision.models as tvm

    from noisystudent.anomaly.weights import torchvision_teacher

    torch.manual_seed(0)
    ref = tvm.resnet18(weights=None).eval()
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    net, spec = torchvision_teacher(tmp_path / "resnet18.pth", "resnet18", image_size=64, in_chans=3,
                                    mean=[0.5] * 3, std=[0.5] * 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    assert spec.num_classes == 1000 and [s["num_chs"] for s in net.feature_info] == [64, 128, 256, 512]
    with pytest.raises(UserError, match="does not fit teacher.model efficientnet_b0"):
        torchvision_teacher(tmp_path / "resnet18.pth", "efficientnet_b0", image_size=64, in_chans=3, mean=[0.5] * 3,
                            std=[0.5] * 3)
    torch.save({"fc.weight": torch.zeros(2, 2), "evil": shutil.rmtree}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="refused by the safe"):
        torchvision_teacher(tmp_path / "evil.pth", "resnet18", image_size=64, in_chans=3, mean=[0.5] * 3, std=[0.5] * 3)


# --------------------------------------------------------------------------------------------------
# scoring on Ray Data


@pytest.fixture(scope="module")
def scored(world, ray_session):
    """The test folder scored through the CLI (chunks of 8: 27 images -> 4 shards), report included."""
    out = world["root"] / "scores"
    res = CliRunner().invoke(main, ["anomaly", "score", str(world["run"]), str(world["root"] / "test"), "-o", str(out),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_scoring_a_folder_lists_corrupt_files_and_scores_the_rest(world, scored):
    out, output = scored
    assert "scored 24 images (3 unreadable" in output and "report:" in output
    df = read_scores(out, maps=True)
    assert len(df) == 24 and df["image_id"].is_unique
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-{c:05d}.parquet" for c in range(4)]
    rejected = pd.read_csv(out / "rejected.csv")
    assert sorted(rejected["image_id"]) == sorted([*CORRUPT, "defect/zz_truncated.png"])
    assert rejected.set_index("image_id").loc["defect/zz_empty.png", "reason"] == "empty file"
    rec = load_detector(world["run"])[0]
    maps = np.stack([decode_map(b, (S, S)) for b in df["map"]])
    np.testing.assert_allclose(maps.reshape(len(df), -1).max(1), df["score"], rtol=1e-6)
    assert (df["flagged"] == (df["score"] > rec["threshold"])).all()
    # the same numbers as the detector in this process
    rec, teacher, student = load_detector(world["run"])
    local = score_source(Detector(teacher, student, rec["stages"], rec["combine"]), ArraySource(world["scratched"]))
    got = df.set_index("image_id").loc[[f"defect/img_{i:04d}.png" for i in range(12)], "score"].to_numpy()
    np.testing.assert_allclose(got, local["score"], rtol=1e-4)
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["scored"] == 24 and summary["rejected"] == 3 and summary["image_auroc"] > 0.6
    assert set(summary["image_auroc_per_group"]) == {"defect"} and (out / "_SUCCESS").is_file()
    html = (out / "report" / "index.html").read_text()
    assert all(s in html for s in ("Score histogram", "ROC curves", "Images and anomaly maps", "zz_garbage.png"))
    assert (out / "report" / "maps.png").stat().st_size > 1000


def test_report_with_masks_has_pixel_auroc(world, scored, tmp_path):
    out, _ = scored
    masks = tmp_path / "masks"
    for image_id, m in world["masks"].items():
        (masks / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(m * 255).save(masks / image_id.replace(".png", "_mask.png"))
    res = CliRunner().invoke(main, ["anomaly", "report", str(out), "--masks", str(masks), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "rep" / "index.html").read_text()
    assert 'data-row="pixel AUROC"' in html
    row = html.split('data-row="pixel AUROC"')[1].split("</tr>")[0]
    assert 0.0 <= float(row.split('data-key="value" class="num">')[1].split("<")[0]) <= 1.0
    assert (tmp_path / "rep" / "roc.png").is_file() and (tmp_path / "rep" / "maps.png").is_file()


def test_killed_score_resumes_without_duplicates(world, scored, tmp_path):
    done, _ = scored
    run, source_dir = world["run"], world["root"] / "test"
    from pipelines.anomaly.score import images_source

    source = images_source([source_dir], 1)
    # a driver killed after two of four shards: the others are missing, one half-written temporary is left
    out = tmp_path / "killed"
    shutil.copytree(done, out)
    for name in ("part-00001.parquet", "part-00003.parquet", "_SUCCESS", "summary.json", "rejected.csv"):
        (out / name).unlink()
    shutil.rmtree(out / "report")
    (out / ".tmp-part-00003.parquet.x1y2").write_bytes(b"half written")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    summary = score_images(run, source, out, progress=False)
    assert summary["processed_this_run"] == 8 + 3 and not list(out.glob(".tmp-*"))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in kept} == kept
    df, ref = read_scores(out).sort_values("image_id"), read_scores(done).sort_values("image_id")
    assert df["image_id"].is_unique and df["image_id"].tolist() == ref["image_id"].tolist()
    np.testing.assert_allclose(df["score"], ref["score"], rtol=1e-6)
    assert score_images(run, source, out, progress=False) == summary  # finished: returned without work

    # scores of another detector (a new threshold) are never mixed into the folder
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    train_detector(anomaly_config_from_dict(config_dict(world["root"], threshold={"fpr": 0.5})), other, progress=False)
    with pytest.raises(UserError, match="holds scores of another job: threshold was .*use force to rescore"):
        score_images(other, source, out, progress=False)


def test_the_scoring_actor_without_maps_stores_scores_only(world):
    """The Ray Data callable class run in this process on one batch: ``save_maps`` off leaves the map column
    empty and the scores as the detector's."""
    from pipelines.anomaly.score import AnomalyScorer
    from pseudo_labels.chunks import IndexChunks

    rec, teacher, student = load_detector(world["run"])
    reader = IndexChunks(ArraySource(world["scratched"]), chunk_size=12)
    ids, raws = next(reader.read_partition(0, 12))
    rows = {}
    for maps in (True, False):
        actor = AnomalyScorer(reader, teacher, student, rec["stages"], rec["combine"], rec["threshold"], save_maps=maps)
        table, ok, rejected = actor.process(ids, raws)
        assert ok == list(range(12)) and rejected == []
        rows[maps] = table.to_pandas()
    assert rows[True]["map"].notna().all() and rows[False]["map"].isna().all()
    local = score_source(Detector(teacher, student, rec["stages"], rec["combine"]), ArraySource(world["scratched"]))
    for table in rows.values():
        np.testing.assert_allclose(table["score"], local["score"], rtol=1e-4)
        assert (table["flagged"] == (table["score"] > rec["threshold"])).all()


@pytest.mark.slow  # a Ray Data actor restart: the same run_chunks/PartitionWorker path is fast-tested by
# test_labeling::test_force_relabels_everything_and_a_killed_actor_is_retried; scores without maps by
# test_the_scoring_actor_without_maps_stores_scores_only
def test_actor_killed_mid_scoring_is_restarted_and_the_set_stays_exact(world, scored, tmp_path):
    """An actor process that dies hard mid-job is restarted by Ray; the set stays exact (no maps stored)."""
    from pipelines.anomaly.score import images_source

    done, _ = scored
    ref = read_scores(done).sort_values("image_id")
    marker = tmp_path / "actor-killed"
    again = score_images(world["run"], images_source([world["root"] / "test"], 1), tmp_path / "actor", progress=False,
                         save_maps=False, kill_once_marker=str(marker))
    assert marker.exists() and again["scored"] == 24 and again["rejected"] == 3 and not again["maps"]
    df2 = read_scores(tmp_path / "actor").sort_values("image_id")
    assert df2["image_id"].tolist() == ref["image_id"].tolist()
    np.testing.assert_allclose(df2["score"], ref["score"], rtol=1e-6)


@pytest.mark.slow
def test_cli_score_in_a_fresh_process_starts_its_own_ray(world, tmp_path):
    """``noisystudent anomaly score`` as a user runs it: a new process, no Ray setting in its environment,
    starts its embedded instance (token authentication on, set before Ray is imported) and scores."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    exe = Path(sys.executable).parent / "noisystudent"
    res = subprocess.run([str(exe), "anomaly", "score", str(world["run"]), str(world["root"] / "test"), "-o",
                          str(tmp_path / "out"), "--quiet", "--no-report"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "scored 24 images (3 unreadable" in res.stdout
    assert read_scores(tmp_path / "out")["image_id"].is_unique
