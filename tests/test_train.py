"""The training job on real Fashion-MNIST images: learns, checkpoints, resumes, evaluates."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from noisystudent.checkpoint import load_checkpoint, save_checkpoint
from noisystudent.data import create_data
from noisystudent.errors import UserError
from noisystudent.engine import PseudoLabeledSet, TrainJob, run_training, spec_for
from pipelines.config import config_from_dict


def small_cfg(**over):
    base = {
        "data": {"kind": "fashion_mnist", "labels_per_class": 50, "unlabeled_limit": 2000, "test_limit": 1000},
        "teacher": {"name": "resnet8", "noise": {"randaugment_n": 1, "randaugment_m": 5}},
        "teacher_train": {"epochs": 6, "batch_size": 50, "lr": 0.05, "warmup_epochs": 0.5},
        "student": {"ladder": [{"name": "resnet8", "drop_rate": 0.2, "drop_path_rate": 0.1}],
                    "train": {"epochs": 1, "batch_size": 50, "lr": 0.05, "steps_per_epoch": 8}, "ratio": 2},
        "ray": {"workers": 0},
    }
    for k, v in over.items():
        base.setdefault(k, {}).update(v)
    return config_from_dict(base)


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory, require_fmnist):
    cfg = small_cfg()
    data = create_data(cfg.data)
    out = tmp_path_factory.mktemp("teacher")
    job = TrainJob(spec=spec_for(cfg.teacher, cfg.data, data.classes), model_cfg=cfg.teacher, train_cfg=cfg.teacher_train,
                   labeled=data.labeled, test=data.test, out_dir=out, progress=False)
    metrics = run_training(job)
    return cfg, data, out, metrics


def test_teacher_learns_clearly_above_chance(trained_teacher):
    _cfg, _data, out, metrics = trained_teacher
    # 500 labeled images, 6 epochs of a ResNet-8: chance is 0.10
    assert metrics["test_acc"] > 0.45, metrics["test_acc"]
    assert len(metrics["test_confusion_matrix"]) == 10
    assert sum(map(sum, metrics["test_confusion_matrix"])) == 1000
    assert set(metrics["test_per_class_accuracy"]) == set(_data.classes)


def test_artifacts_written(trained_teacher):
    _cfg, _data, out, metrics = trained_teacher
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "train_acc", "lr", "images_per_s", "test_acc"} <= set(hist.columns)
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert json.loads((out / "metrics.json").read_text())["checkpoint_id"] == metrics["checkpoint_id"]
    assert not (out / "last.pt").exists(), "the resume state goes away once model.pt is written"
    assert not list(out.glob(".tmp-*"))


def test_checkpoint_round_trip(trained_teacher, tmp_path):
    _cfg, data, out, metrics = trained_teacher
    ckpt = load_checkpoint(out / "model.pt", expected_classes=data.classes)
    assert ckpt.checkpoint_id == metrics["checkpoint_id"] and ckpt.spec.name == "resnet8"
    model = ckpt.build_model()
    x = torch.randn(4, 1, 28, 28)
    # save again and reload: same outputs, same id
    cid = save_checkpoint(tmp_path / "again.pt", model, ckpt.spec, generation=0, role="teacher")
    again = load_checkpoint(tmp_path / "again.pt").build_model()
    assert cid == ckpt.checkpoint_id
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_checkpoint_refusals(trained_teacher, tmp_path):
    _cfg, data, out, _m = trained_teacher
    with pytest.raises(UserError, match="classes"):
        load_checkpoint(out / "model.pt", expected_classes=data.classes[:5])
    blob = (out / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_resume_continues_from_last_epoch(require_fmnist, tmp_path):
    cfg = small_cfg(teacher_train={"epochs": 3, "steps_per_epoch": 3})
    data = create_data(cfg.data)
    job = lambda: TrainJob(spec=spec_for(cfg.teacher, cfg.data, data.classes), model_cfg=cfg.teacher,  # noqa: E731
                           train_cfg=cfg.teacher_train, labeled=data.labeled, test=None, out_dir=tmp_path, progress=False)
    from noisystudent.engine import TrainHooks

    with pytest.raises(RuntimeError, match="injected"):
        run_training(job(), TrainHooks(fail_at_epoch=2))
    assert (tmp_path / "last.pt").exists() and not (tmp_path / "model.pt").exists()
    run_training(job(), TrainHooks(fail_at_epoch=2))  # the failure is injected once only
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3]
    assert (tmp_path / "model.pt").exists()


def test_student_batches_respect_ratio(trained_teacher, tmp_path):
    """Student steps mix labeled and pseudo-labeled images in the configured ratio."""
    cfg, data, _out, _m = trained_teacher
    n = 400
    src = data.unlabeled.subset(np.arange(n))
    targets = np.full((n, 10), 0.1, dtype=np.float32)
    weights = np.ones(n, dtype=np.int64)
    weights[:10] = 3  # duplicates count
    pseudo = PseudoLabeledSet(src, targets, weights)
    mcfg = cfg.student.ladder[0]
    job = TrainJob(spec=spec_for(mcfg, cfg.data, data.classes), model_cfg=mcfg, train_cfg=cfg.student.train,
                   labeled=data.labeled, test=None, out_dir=tmp_path, pseudo=pseudo, student=cfg.student,
                   generation=1, role="student", progress=False)
    metrics = run_training(job)
    hist = pd.read_csv(tmp_path / "history.csv")
    # 8 steps x (50 labeled + 100 pseudo-labeled)
    assert metrics["pseudo_labeled_images"] == n + 20
    assert hist["loss_unlabeled"].iloc[0] > 0
    per_step = 50 + 2 * 50
    assert hist["images_per_s"].iloc[0] * hist["seconds"].iloc[0] == pytest.approx(8 * per_step, rel=1e-6)


@pytest.mark.parametrize("amp, recorded", [("off", "off"), ("auto", "off"), ("bf16", "bf16")])
def test_amp_modes_train_on_cpu(tmp_path, amp, recorded):
    """Mixed precision: auto is off on CPU; an explicit bf16 autocasts there too; each trains and says which it used."""
    from noisystudent.checkpoint import ModelSpec
    from noisystudent.config import ModelConfig, NoiseConfig, TrainConfig
    from noisystudent.data.base import ImageSource
    from noisystudent.engine import resolve_amp

    class Tiny(ImageSource):
        def __init__(self, images, labels):
            super().__init__(1, [str(k) for k in range(4)])
            self.images, self.labels = images, labels

        def __len__(self):
            return len(self.images)

        def image_id(self, i):
            return f"tiny-{i}"

        def load(self, i):
            return self.images[i]

        def _take(self, idx):
            self.images = self.images[idx]

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 64)
    images = (rng.integers(0, 60, (64, 12, 12, 1)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    source = Tiny(images, labels)
    spec = ModelSpec(name="resnet8", num_classes=4, in_chans=1, image_size=12, mean=[0.5], std=[0.25],
                     classes=[str(k) for k in range(4)])
    job = TrainJob(spec=spec, model_cfg=ModelConfig(name="resnet8", noise=NoiseConfig(randaugment_n=0, hflip=False, crop_padding=0)),
                   train_cfg=TrainConfig(epochs=2, batch_size=16, lr=0.05, amp=amp), labeled=source, test=source,
                   out_dir=tmp_path, device="cpu", progress=False)
    metrics = run_training(job)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert metrics["amp"] == recorded
    assert np.isfinite(hist["train_loss"]).all() and (tmp_path / "model.pt").is_file()
    assert 0.0 <= metrics["test_acc"] <= 1.0
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("fp16", torch.device("cpu")) is torch.float16
