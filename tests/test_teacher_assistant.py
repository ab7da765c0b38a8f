"""A student that starts from a checkpoint (``init: teacher`` or a path) through ``noisystudent distill``, and
the teacher-assistant preset (a shrinking ladder, each rung taught online by the rung before)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import DISTILL_DATA as DATA

from noisystudent.checkpoint import load_checkpoint
from noisystudent.cli import main


def _distill(tmp_path, ckpt, init, student="resnet8", lr=1e-7):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": DATA, "teacher": {"name": "resnet8"},
        "student": {"ladder": [{"name": student, "init": init}],
                    "train": {"epochs": 1, "batch_size": 30, "steps_per_epoch": 2, "lr": lr, "warn_below_steps": 0}},
        "ray": {"workers": 0}}))
    run = tmp_path / f"r-{student}-{init == 'teacher'}"
    return CliRunner().invoke(main, ["distill", str(cfg), "--run-dir", str(run), "--teacher", str(ckpt), "--quiet"]), run


@pytest.mark.parametrize("how", ["teacher", "path"])
def test_distill_student_starts_from_the_init_checkpoint(distill_world, tmp_path, how):
    """At a learning rate of 1e-7 two steps move no weight measurably: the student's convolutions are the
    teacher's (they would be random without ``init``), and it agrees with the teacher on the test images."""
    _cfg, _data, ckpt, _pl = distill_world
    res, run = _distill(tmp_path, ckpt, "teacher" if how == "teacher" else str(ckpt))
    assert res.exit_code == 0, res.output
    teacher, student = load_checkpoint(ckpt).state_dict, load_checkpoint(run / "distill" / "model.pt").state_dict
    convs = [k for k in teacher if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    assert convs and all(torch.allclose(student[k], teacher[k], atol=1e-5) for k in convs)
    metrics = pd.read_json(run / "distill" / "metrics.json", typ="series")
    assert metrics["test_fidelity"] > 0.9


def test_init_from_another_architecture_is_one_line_exit_2(distill_world, tmp_path):
    _cfg, _data, ckpt, _pl = distill_world
    res, _ = _distill(tmp_path, ckpt, str(ckpt), student="resnet14")
    assert res.exit_code == 2 and "init" in res.output and "same architecture" in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.slow  # the loop with Ray labeling, two generations: ~1 min idle, minutes on busy cores
def test_teacher_assistant_preset_each_rung_learns_from_the_one_before(tmp_path, ray_session, require_fmnist):
    from pipelines.config import load_config
    from pipelines.loop import run_all

    path = "configs/teacher_assistant_fashion_mnist.yaml"
    preset = load_config(path)
    assert [preset.teacher.name] + [m.name for m in preset.student.ladder] == ["resnet26", "resnet14", "resnet8"]
    cfg = load_config(path, {"data.labels_per_class": 12, "data.unlabeled_limit": 60, "data.test_limit": 100,
                             "teacher_train.epochs": 1, "teacher_train.total_steps": 3, "teacher_train.warn_below_steps": 0,
                             "teacher_train.num_workers": 0, "student.train.epochs": 1, "student.train.total_steps": 3,
                             "student.train.num_workers": 0, "student.train.warn_below_steps": 0})
    run_all(cfg, tmp_path / "run", progress=False, tracking=None)
    for g, (teacher, student) in enumerate([("resnet26", "resnet14"), ("resnet14", "resnet8")], start=1):
        m = pd.read_json(tmp_path / "run" / f"gen-{g}" / "metrics.json", typ="series")
        assert (m["teacher_model"], m["model"]) == (teacher, student)
        s = pd.read_json(tmp_path / "run" / f"gen-{g}" / "student" / "metrics.json", typ="series")
        assert s["method"] == "hinton" and s["pseudo_labeled_images"] == 0
