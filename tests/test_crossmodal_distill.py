"""Cross-modal distillation in the engine: an image teacher teaches a 1-D signal student through pairs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from noisystudent.checkpoint import load_checkpoint, save_checkpoint
from noisystudent.config import DataConfig, ModelConfig, TrainConfig
from noisystudent.data import create_data
from noisystudent.data.paired import view_of
from noisystudent.distill import resolve_method_config
from noisystudent.engine import TrainJob, run_training, spec_for
from noisystudent.errors import ConfigError
from noisystudent import validate

SIDE = 12


def _pair(rng, label):
    """An image bright in its top (class 0) or bottom (class 1) half, and its signal: row and column means."""
    img = rng.integers(0, 60, (SIDE, SIDE)).astype(np.uint8)
    rows = slice(0, SIDE // 2) if label == 0 else slice(SIDE // 2, SIDE)
    img[rows] += 150
    signal = np.stack([img.mean(1), img.mean(0)]).astype(np.uint8)  # 2 x SIDE
    return img, signal


def write_pairs(root, name, n, seed, labels=True):
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        y = k % 2
        img, sig = _pair(rng, y)
        for mod, arr in (("img", img), ("sig", sig)):
            (root / mod).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr, mode="L").save(root / mod / f"{name}{k}.png")
        rows.append({"image_id": f"{name}{k}", "img": f"img/{name}{k}.png", "sig": f"sig/{name}{k}.png",
                     **({"label": ["top", "bottom"][y]} if labels else {})})
    path = root / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def data_cfg(root) -> DataConfig:
    return validate.build(DataConfig, {
        "kind": "paired", "val_fraction": 0.0,
        "labeled": write_pairs(root, "lab", 40, 0), "unlabeled": write_pairs(root, "unl", 120, 1, labels=False),
        "test": write_pairs(root, "test", 60, 2),
        "modalities": {"img": {"kind": "image", "channels": 1, "size": SIDE},
                       "sig": {"kind": "signal", "channels": 2, "size": SIDE,
                               "noise": {"randaugment_n": 0, "hflip": False, "crop_padding": 1}}}}, "data")


TRAIN = TrainConfig(epochs=2, batch_size=20, lr=0.05, steps_per_epoch=15, warn_below_steps=0, amp="off")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    cfg = data_cfg(root)
    data = create_data(cfg)
    teacher_cfg = validate.build(ModelConfig, {"name": "resnet8", "noise": {"randaugment_n": 0, "hflip": False}}, "teacher")
    out = root / "teacher"
    run_training(TrainJob(spec=spec_for(teacher_cfg, cfg, data.classes, "img"), model_cfg=teacher_cfg, train_cfg=TRAIN,
                          labeled=view_of(data.labeled, "img"), test=view_of(data.test, "img"), out_dir=out,
                          progress=False, device="cpu"))
    return cfg, data, out / "model.pt"


def student_job(world, out, method, **over):
    cfg, data, teacher = world
    model = ModelConfig(name="signal_cnn_s", noise=cfg.modalities["sig"].noise)
    job = TrainJob(spec=spec_for(model, cfg, data.classes, "sig"), model_cfg=model, train_cfg=TRAIN,
                   labeled=view_of(data.labeled, "sig"), test=view_of(data.test, "sig"), out_dir=out, progress=False,
                   device="cpu", role="distill", method=resolve_method_config(method, "method"), teacher_ckpt=str(teacher),
                   unlabeled=view_of(data.unlabeled, "sig"), unlabeled_ratio=2.0, teacher_modality="img")
    return dataclasses.replace(job, **over)


@pytest.mark.slow
def test_teacher_reads_its_modality_and_the_student_learns_from_it_alone(world, tmp_path):
    teacher = load_checkpoint(world[2])
    assert teacher.spec.modality == "img" and teacher.metrics["test_acc"] > 0.9
    # alpha 1: the student's loss is the KL to the teacher only; its labels never reach it
    metrics = run_training(student_job(world, tmp_path, {"name": "hinton", "alpha": 1.0, "temperature": 2.0}))
    student = load_checkpoint(tmp_path)
    assert student.spec.modality == "sig" and student.spec.image_size == [1, SIDE] and student.spec.in_chans == 2
    assert metrics["teacher_test_acc"] > 0.9  # fidelity scored the teacher on its own modality
    assert metrics["test_acc"] > 0.8 and metrics["test_fidelity"] > 0.8, metrics


@pytest.mark.slow
def test_feature_method_across_modalities(world, tmp_path):
    """FitNet's regressor maps the signal stage onto the image stage's channels; 1 x L against H x W maps
    differ in size, so the method names the stage pair it cannot match, or it trains."""
    try:
        metrics = run_training(student_job(world, tmp_path, {"name": "at"}))
    except ConfigError as exc:
        assert "method" in str(exc)
    else:
        assert 0.0 <= metrics["test_fidelity"] <= 1.0


def test_teacher_whose_channels_do_not_match_its_modality_is_a_config_error(tmp_path):
    cfg = data_cfg(tmp_path)
    data = create_data(cfg)
    image_model = ModelConfig(name="resnet8")
    spec = spec_for(image_model, cfg, data.classes, "img")  # a 1-channel image teacher, untrained
    save_checkpoint(tmp_path / "t.pt", spec.build(inference=False), spec)
    job = student_job((cfg, data, tmp_path / "t.pt"), tmp_path / "s", {"name": "hinton"}, teacher_modality="sig")
    with pytest.raises(ConfigError, match=r"^config field 'teacher.modality': .*1-channel input.*'sig' has 2"):
        run_training(job)
