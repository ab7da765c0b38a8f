"""noise.backend: device through the training engine on real Fashion-MNIST (on the CPU here: the batched
ops take CPU tensors too): uint8 loaders, views made per batch, every teaching mode trains."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from conftest import DISTILL_DATA as DATA
from test_distill import student_job

from noisystudent.distill.base import Batch
from noisystudent.errors import ConfigError
from noisystudent.engine import TrainHooks, run_training, setup
from pipelines.config import config_from_dict


def device_job(distill_world, tmp, method, teaching=None, pseudo=False):
    job = student_job(distill_world, tmp, method, pseudo=pseudo)
    mcfg = dataclasses.replace(job.model_cfg, noise=dataclasses.replace(job.model_cfg.noise, backend="device"))
    return dataclasses.replace(job, model_cfg=mcfg, teaching=teaching)


@pytest.mark.parametrize("mode", ["fixed", "independent", "function_matching"])
def test_loaders_give_uint8_and_the_hook_makes_the_modes_views(distill_world, tmp_path, mode):
    tr = setup(device_job(distill_world, tmp_path, {"name": "hinton"}, {"mode": mode}), TrainHooks(), torch.device("cpu"))
    x, y, _ = next(iter(tr.data.labeled))
    assert x.dtype == torch.uint8 and x.ndim == 4  # one uint8 image per row, whatever the mode
    views = tr.data.device_noise(x)
    assert views.dtype == torch.float32
    assert views.shape[1] == (2 if mode in ("fixed", "independent") else 1)
    batch, _ = tr.trainee.teaching.prepare(Batch(x_labeled=views, y=y))
    t_in = tr.trainee.teaching.teacher_input(batch)
    if mode == "independent":
        assert not torch.equal(t_in, batch.inputs)
    if mode == "fixed":  # the teacher's rows are the clean images
        assert torch.equal(t_in, tr.data.device_noise.noise.clean(x))


def test_cpu_backend_is_unchanged(distill_world, tmp_path):
    tr = setup(student_job(distill_world, tmp_path, {"name": "supervised"}), TrainHooks(), torch.device("cpu"))
    x, _, _ = next(iter(tr.data.labeled))
    assert tr.data.device_noise is None and x.dtype == torch.float32  # auto on a CPU job: albumentations


@pytest.mark.parametrize("method,mode,pseudo", [({"name": "hinton"}, "independent", False),
                                                 ({"name": "hinton"}, "function_matching", False),
                                                 ({"name": "noisy_student"}, None, True)])
def test_device_backend_trains_and_lowers_its_loss(distill_world, tmp_path, method, mode, pseudo):
    teaching = {"mode": mode} if mode else None
    metrics = run_training(device_job(distill_world, tmp_path, method, teaching, pseudo=pseudo))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0], hist[["epoch", "train_loss"]]
    assert 0.0 <= metrics["test_acc"] <= 1.0


def test_backend_config_error_names_the_field():
    with pytest.raises(ConfigError, match=r"noise\.backend"):
        config_from_dict({"data": dict(DATA), "student": {"ladder": [{"name": "resnet8", "noise": {"backend": "gpu"}}]}})
