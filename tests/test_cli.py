"""The CLI: teacher, evaluate and predict on a real image folder with awkward files; status, labels inspect and
report on the session's finished run (made by `noisystudent run`, conftest); doctor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from conftest import write_png_folder
from noisystudent.cli import main

CLASSES = {"ankle boot": 12, "sandal 👡": 12, "T-shirt": 12}


def awkward_folder(root: Path) -> Path:
    """Classes with spaces and unicode, PNG/JPEG/BMP, RGBA, 16-bit, palette, mixed sizes and corrupt files."""
    write_png_folder(root, CLASSES, size=16, mode="L")
    rng = np.random.default_rng(1)
    for cls in CLASSES:
        d = root / cls
        Image.fromarray(rng.integers(0, 255, (20, 24, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
        Image.fromarray((rng.integers(0, 65535, (18, 18))).astype(np.uint16)).save(d / "deep16.png")
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).convert("P").save(d / "palette.bmp")
        Image.fromarray(rng.integers(0, 255, (40, 12, 3), dtype=np.uint8)).save(d / "wide.jpg")
    (root / "T-shirt" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "T-shirt" / "empty.jpg").write_bytes(b"")
    (root / "T-shirt" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A teacher trained through `teacher` on the awkward folder and tested on another. The whole loop is the
    shared finished run's (conftest); decoding every awkward file, test_data's; labeling a folder with
    unreadable files on Ray Data, test_labeling's."""
    tmp = tmp_path_factory.mktemp("cli")
    train = awkward_folder(tmp / "train")
    test = awkward_folder(tmp / "test")
    cfg = {
        "name": "folder",
        "data": {"kind": "folder", "labeled": str(train), "test": str(test),
                 "image_size": 16, "in_chans": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "teacher": {"name": "resnet8"},
        "teacher_train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "ray": {"workers": 0},
    }
    cfg_file = tmp / "folder.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = CliRunner().invoke(main, ["teacher", str(cfg_file), "--run-dir", str(tmp / "run"), "--quiet"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return tmp, res


def test_teacher_on_awkward_folder(folder_run):
    """Every readable image is used (16 a class: 12 PNGs, RGBA, 16-bit, palette BMP, wide JPEG), the two
    unreadable ones and the text file are not; the classes keep their names, unicode included."""
    from noisystudent.checkpoint import load_checkpoint

    tmp, _ = folder_run
    m = json.loads((tmp / "run" / "gen-0" / "teacher" / "metrics.json").read_text())
    assert m["labeled_images"] + m["val_images"] == 3 * 16
    assert m["test_n"] == 3 * 16 and m["test_skipped"] == 0 and set(m["test_per_class_accuracy"]) == set(CLASSES)
    assert load_checkpoint(tmp / "run" / "gen-0" / "teacher").spec.classes == sorted(CLASSES)


def test_evaluate_and_predict(folder_run):
    tmp, _ = folder_run
    ckpt = tmp / "run" / "gen-0" / "teacher" / "model.pt"
    out = tmp / "eval.json"
    res = CliRunner().invoke(main, ["evaluate", str(ckpt), "--data", str(tmp / "test"), "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    assert m["n"] == 3 * 16 and m["skipped"] == 0 and set(m["per_class_accuracy"]) == set(CLASSES)
    preds = tmp / "preds.parquet"
    res = CliRunner().invoke(main, ["predict", str(ckpt), str(tmp / "test" / "T-shirt"),
                                    str(tmp / "test" / "sandal 👡" / "rgba.png"), "-o", str(preds), "--quiet"])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(preds)
    assert len(df) == 16 + 1 and "2 unreadable images skipped" in res.output
    assert set(df["class_name"]) <= set(CLASSES) and df["confidence"].between(0, 1).all()
    assert all(len(k) == 3 for k in df["topk_classes"])
    # the pseudo-label schema's rows: highest first, the first the label
    assert all(k[0] == lab and list(p) == sorted(p, reverse=True)
               for k, lab, p in zip(df["topk_classes"], df["label"], df["topk_probs"]))


def _fmnist_checkpoint(path: Path) -> Path:
    from noisystudent.checkpoint import ModelSpec, save_checkpoint
    from noisystudent.data.fashion_mnist import CLASSES as FMNIST_CLASSES

    spec = ModelSpec(name="resnet8", num_classes=10, in_chans=1, image_size=28, mean=[0.286], std=[0.353],
                     classes=list(FMNIST_CLASSES))
    save_checkpoint(path, spec.build(), spec)
    return path


@pytest.mark.parametrize("data, split, n", [("fashion-mnist", "test", 10_000), ("fashion-mnist:test", "test", 10_000),
                                            ("fashion-mnist:train", "train", 60_000)])
def test_evaluate_fashion_mnist_split(tmp_path, monkeypatch, require_fmnist, data, split, n):
    """`evaluate --data fashion-mnist:SPLIT` evaluates that split (test by default)."""
    import noisystudent.evaluate

    seen = {}

    def fake_eval(model, source, tf, batch_size, classes, progress):
        seen.update(split=source.split, n=len(source), root=source.root)
        return {"top1": 0.5, "n": len(source), "skipped": 0, "per_class_accuracy": {}}

    monkeypatch.setattr(noisystudent.evaluate, "evaluate", fake_eval)
    ckpt = _fmnist_checkpoint(tmp_path / "model.pt")
    res = CliRunner().invoke(main, ["evaluate", str(ckpt), "--data", data, "--quiet"])
    assert res.exit_code == 0, res.output
    assert seen["split"] == split and seen["n"] == n and f"on {n} images" in res.output
    # a root after the split, and the older fashion-mnist:ROOT form
    from noisystudent.data.fashion_mnist import DEFAULT_ROOT

    for spec, want in ((f"fashion-mnist:{split}:{DEFAULT_ROOT}", split), (f"fashion-mnist:{DEFAULT_ROOT}", "test")):
        res = CliRunner().invoke(main, ["evaluate", str(ckpt), "--data", spec, "--quiet"])
        assert res.exit_code == 0 and seen["split"] == want and seen["root"] == DEFAULT_ROOT, res.output


@pytest.mark.parametrize("data", ["fashion-mnist:val", "fashion-mnist:Train", "fashion-mnist:validation:/tmp"])
def test_evaluate_bad_fashion_mnist_split_exits_2(data):
    res = CliRunner().invoke(main, ["evaluate", "/nope/model.pt", "--data", data])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert line.startswith("error: --data:") and "fashion-mnist:train" in line and len(line.splitlines()) == 1


def test_labels_inspect(finished_run):
    run_dir, _ = finished_run
    res = CliRunner().invoke(main, ["labels", "inspect", str(run_dir / "gen-1" / "labels")])
    assert res.exit_code == 0, res.output
    assert "600" in res.output and "confidence" in res.output.lower()


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "/nope/model.pt", "--data", "/tmp"], "checkpoint not found"),
    (["predict", "/nope/model.pt", "/tmp", "-o", "/tmp/x.parquet"], "checkpoint not found"),
    (["labels", "inspect", "/nope"], "not found"),
    (["status", "/nope"], "not a run folder"),
    (["label", "/nope", "--generation", "0"], "--generation"),
])
def test_bad_arguments_exit_2(argv, needle):
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2 and needle in res.output, res.output


def test_unwritable_and_full_run_dir_fail_before_work(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"kind": "fashion_mnist", "labels_per_class": 1}}))
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    res = CliRunner().invoke(main, ["run", str(cfg), "--run-dir", str(blocker / "run")])
    assert res.exit_code == 2 and "not writable" in res.output
    monkeypatch.setenv("NOISYSTUDENT_MIN_FREE_MB", str(10**12))
    res = CliRunner().invoke(main, ["run", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2 and "MiB free" in res.output
    assert not (tmp_path / "run" / "gen-0").exists()


def test_help_everywhere():
    for cmd in ([], ["teacher"], ["label"], ["select"], ["student"], ["run"], ["status"], ["evaluate"], ["predict"],
                ["labels", "inspect"], ["doctor"]):
        res = CliRunner().invoke(main, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output, cmd


def test_doctor(ray_session):
    res = CliRunner().invoke(main, ["doctor"])
    assert res.exit_code == 0, res.output
    for key in ("torch", "ray", "albumentations", "gpus", "fashion-mnist"):
        assert key in res.output


def test_report_command(run_copy, tmp_path):
    res = CliRunner().invoke(main, ["report", str(run_copy)])
    assert res.exit_code == 0, res.output
    html = run_copy / "report" / "index.html"
    assert html.is_file() and str(html) in res.output
    assert list((run_copy / "tensorboard").rglob("events.out.tfevents.*"))  # the run's events, written by `report`
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a run folder" in res.output
