"""The distillation engine: method registry, online teacher, extra modules, resume, DDP, CLI."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import DISTILL_DATA as DATA
from noisystudent.checkpoint import load_checkpoint
from noisystudent.distill import create_method, list_methods, method_defaults, resolve_method_config
from noisystudent.errors import ConfigError, UserError
from noisystudent.engine import TrainHooks, TrainJob, run_training, spec_for
from pipelines.config import RayConfig, config_from_dict


def student_job(world, tmp, method: dict, pseudo: bool = False, **train_over):
    """A student job on the session's distillation world (conftest ``distill_world``)."""
    cfg, data, teacher, pl = world
    mcfg = cfg.student.ladder[0]
    train_cfg = dataclasses.replace(cfg.student.train, **train_over)
    return TrainJob(spec=spec_for(mcfg, cfg.data, data.classes), model_cfg=mcfg, train_cfg=train_cfg, labeled=data.labeled,
                    test=data.test, out_dir=tmp, pseudo=pl if pseudo else None, student=cfg.student, generation=1,
                    role="student", progress=False, method=resolve_method_config(method, "method"),
                    teacher_ckpt=str(teacher))


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_and_lowers_its_loss(distill_world, tmp_path, name):
    pseudo = name == "noisy_student"
    metrics = run_training(student_job(distill_world, tmp_path, {"name": name}, pseudo=pseudo))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0], hist[["epoch", "train_loss"]]
    assert metrics["method"] == name
    assert 0.0 <= metrics["test_fidelity"] <= 1.0
    assert (tmp_path / "model.pt").is_file()


def test_method_parts_are_logged(distill_world, tmp_path):
    run_training(student_job(distill_world, tmp_path, {"name": "fitnet"}))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert {"loss_labeled", "loss_hint"} <= set(hist.columns)
    assert hist["loss_hint"].iloc[-1] < hist["loss_hint"].iloc[0]


def test_offline_hinton_uses_stored_targets(distill_world, tmp_path):
    metrics = run_training(student_job(distill_world, tmp_path, {"name": "hinton", "source": "offline", "temperature": 1.0},
                                       pseudo=True))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert hist["loss_kd"].iloc[0] > 0 and metrics["method"] == "hinton"


def test_online_teacher_is_frozen_and_gets_no_gradient(distill_world):
    from noisystudent.distill.teacher import OnlineTeacher

    _cfg, _data, ckpt, _pl = distill_world
    teacher = OnlineTeacher(load_checkpoint(ckpt), torch.device("cpu"), stages=(0, 1))
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    out = teacher(x, n_labeled=2)
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training
    student_logits = torch.randn(4, 10, requires_grad=True)
    loss = (student_logits * out.logits).sum() + sum(f.sum() for f in out.features) * 0 + (student_logits ** 2).sum()
    loss.backward()  # tensors of the teacher can enter a student loss (no inference-mode tensors)
    assert all(p.grad is None for p in teacher.model.parameters())
    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "BN statistics or weights of the teacher moved"


def test_resume_restores_the_methods_extra_modules(distill_world, tmp_path):
    job = lambda: student_job(distill_world, tmp_path, {"name": "fitnet"}, epochs=2, steps_per_epoch=4)  # noqa: E731
    with pytest.raises(RuntimeError, match="injected"):
        run_training(job(), TrainHooks(fail_at_epoch=1))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert any(k.startswith("regressor.") for k in state["method"]), list(state["method"])
    fresh = create_method({"name": "fitnet"}, student_info=[{"num_chs": c, "reduction": r} for c, r in ((16, 1), (32, 2), (64, 4))],
                          teacher_info=[{"num_chs": c, "reduction": r} for c, r in ((16, 1), (32, 2), (64, 4))], num_classes=10)
    trained_w = state["method"]["regressor.0.weight"]
    assert not torch.equal(trained_w, fresh.state_dict()["regressor.0.weight"]), "the regressor was trained"
    # a resume state without the method's modules is refused, naming the field
    broken = dict(state)
    del broken["method"]
    torch.save(broken, tmp_path / "last.pt")
    with pytest.raises(UserError, match="'method'"):
        run_training(job(), TrainHooks(fail_at_epoch=1))
    torch.save(state, tmp_path / "last.pt")
    run_training(job(), TrainHooks(fail_at_epoch=1))
    assert list(pd.read_csv(tmp_path / "history.csv")["epoch"]) == [1, 2]


def test_two_ray_train_workers_with_an_online_teacher(distill_world, tmp_path, ray_session):
    """fitnet's regressor (an extra module) under DDP with its teacher online, the teacher given its own clean
    view of each image (teaching ``fixed``: paired views through the loaders of two workers)."""
    from pipelines.train_ray import train

    # hint_epochs 1: the hint stage (CE out of the loss) and the joint stage both run under DDP
    job = dataclasses.replace(student_job(distill_world, tmp_path, {"name": "fitnet", "hint_epochs": 1}, epochs=2,
                                          steps_per_epoch=4), teaching={"mode": "fixed"})
    metrics = train(job, RayConfig(workers=2))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and hist["loss_hint"].iloc[-1] < hist["loss_hint"].iloc[0]
    assert hist["train_loss"].iloc[0] == pytest.approx(100 * hist["loss_hint"].iloc[0], rel=1e-4)
    assert metrics["method"] == "fitnet" and 0.0 <= metrics["test_fidelity"] <= 1.0
    assert metrics["teaching"] == "fixed"


def test_method_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"student\.method\.name': unknown distillation method 'nope'; known: .*hinton"):
        config_from_dict({"student": {"method": {"name": "nope"}}})
    with pytest.raises(ConfigError, match=r"student\.ladder\[0\]\.method\.T': unknown parameter of method 'hinton'"):
        config_from_dict({"student": {"ladder": [{"name": "resnet8", "method": {"name": "hinton", "T": 2}}]}})
    with pytest.raises(ConfigError, match=r"distill\.method\.alpha': must be <= 1"):
        config_from_dict({"distill": {"method": {"name": "hinton", "alpha": 3}}})
    with pytest.raises(ConfigError, match=r"student_stage': the student model has 3 stages"):
        create_method({"name": "fitnet", "student_stage": 5}, student_info=[{"num_chs": 8}] * 3,
                      teacher_info=[{"num_chs": 8}] * 3, num_classes=10, field="student.method")


def test_old_student_loss_keys_keep_working():
    cfg = config_from_dict({"student": {"loss": "hard", "alpha": 0.3}})
    m = cfg.student.method_for(cfg.student.ladder[0])
    assert m == {"name": "noisy_student", "mode": "hard", "temperature": 1.0, "alpha": 0.3, "unlabeled_weight": 1.0}
    assert method_defaults("hinton") == {"temperature": 4.0, "alpha": 0.9, "source": "online"}


def test_cli_methods_and_bad_method_exit_2(tmp_path):
    from noisystudent.cli import main

    res = CliRunner().invoke(main, ["methods"])
    assert res.exit_code == 0 and all(n in res.output for n in list_methods())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": DATA}))
    res = CliRunner().invoke(main, ["distill", str(cfg), "--run-dir", str(tmp_path / "r"), "--method", "nope"])
    assert res.exit_code == 2 and "distill.method.name" in res.output and "known:" in res.output


def test_cli_distill_trains_a_student_from_a_teacher(distill_world, tmp_path):
    from noisystudent.cli import main

    _cfg, _data, ckpt, _pl = distill_world
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": DATA, "student": {"ladder": [{"name": "resnet8"}],
                                                              "train": {"epochs": 1, "batch_size": 30, "steps_per_epoch": 4}},
                                   "ray": {"workers": 0}}))
    argv = ["distill", str(cfg), "--run-dir", str(tmp_path / "r"), "--teacher", str(ckpt), "--quiet"]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 0, res.output
    assert "fidelity to the teacher" in res.output and (tmp_path / "r" / "distill" / "model.pt").is_file()
    res = CliRunner().invoke(main, argv)  # finished: returns its record without work
    assert res.exit_code == 0 and "test accuracy" in res.output


def test_fitnet_hint_stage_first_then_the_joint_loss_and_a_resume_keeps_the_schedule(distill_world, tmp_path):
    """``hint_epochs``: epoch 1 trains beta * hint alone, later epochs CE + beta * hint; the engine's
    ``set_epoch`` runs again after a resume, so the restarted epoch is in the right stage."""
    job = lambda: student_job(distill_world, tmp_path, {"name": "fitnet", "hint_epochs": 1}, epochs=3, steps_per_epoch=2)  # noqa: E731
    with pytest.raises(RuntimeError, match="injected"):
        run_training(job(), TrainHooks(fail_at_epoch=2))
    run_training(job(), TrainHooks(fail_at_epoch=2))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3]
    beta = method_defaults("fitnet")["beta"]
    assert hist["train_loss"].iloc[0] == pytest.approx(beta * hist["loss_hint"].iloc[0], rel=1e-4)
    for i in (1, 2):
        assert hist["train_loss"].iloc[i] == pytest.approx(hist["loss_labeled"].iloc[i] + beta * hist["loss_hint"].iloc[i],
                                                           rel=1e-4)


def test_fsp_two_stage_schedule_trains_fsp_then_cross_entropy(distill_world, tmp_path):
    run_training(student_job(distill_world, tmp_path, {"name": "fsp", "init_epochs": 1, "beta": 2.0}, epochs=2, steps_per_epoch=2))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert hist["train_loss"].iloc[0] == pytest.approx(2.0 * hist["loss_fsp"].iloc[0], rel=1e-4)
    assert hist["train_loss"].iloc[1] == pytest.approx(hist["loss_labeled"].iloc[1], rel=1e-4)
