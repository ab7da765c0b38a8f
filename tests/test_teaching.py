"""Teaching settings (fixed / independent / consistent / function_matching) and the DML cohort, on real
Fashion-MNIST through the training engine. Shares the session's teacher, conftest ``distill_world``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DISTILL_DATA as DATA
from test_distill import student_job

from noisystudent.checkpoint import load_checkpoint
from noisystudent.data.torch_dataset import apply_transform
from noisystudent.distill.base import Batch
from noisystudent.distill.teaching import PairTransform, Teaching, mix, mixup_plan
from noisystudent.engine import TrainHooks, run_training, setup
from noisystudent.errors import ConfigError
from noisystudent.transforms import create_transform
from pipelines.config import config_from_dict

MODES = ["fixed", "independent", "consistent", "function_matching"]


def job_with(distill_world, tmp, method, teaching=None, **over):
    job = student_job(distill_world, tmp, method, **over)
    return dataclasses.replace(job, teaching=teaching)


# ---------------------------------------------------------------------------------------------- views


def test_pair_transform_fixed_gives_the_clean_image_to_the_teacher(distill_world):
    from noisystudent.config import NoiseConfig

    img = np.asarray(distill_world[1].labeled.load(0))
    train = create_transform(28, 1, [0.286], [0.353], NoiseConfig(randaugment_n=2, randaugment_m=15))
    clean = create_transform(28, 1, [0.286], [0.353], None)
    pair = PairTransform(train, clean)(img)
    assert pair.shape == (2, 1, 28, 28)
    expected = apply_transform(clean, img)
    assert torch.equal(pair[1], expected)
    views = [PairTransform(train, train)(img) for _ in range(5)]
    assert any(not torch.equal(v[0], v[1]) for v in views), "independent views never differ"


def test_consistent_teacher_sees_exactly_the_students_tensors(distill_world, tmp_path):
    tr = setup(job_with(distill_world, tmp_path, {"name": "hinton"}, {"mode": "consistent"}), TrainHooks(), torch.device("cpu"))
    x, y, _ = next(iter(tr.data.labeled))
    batch, y_hard = tr.trainee.teaching.prepare(Batch(x_labeled=x, y=y))
    assert torch.equal(tr.trainee.teaching.teacher_input(batch), batch.inputs)
    assert torch.equal(y_hard, y) and batch.x_teacher is None


@pytest.mark.parametrize("mode", ["fixed", "independent"])
def test_paired_modes_give_the_teacher_its_own_view(distill_world, tmp_path, mode):
    tr = setup(job_with(distill_world, tmp_path, {"name": "hinton"}, {"mode": mode}), TrainHooks(), torch.device("cpu"))
    x, y, idx = next(iter(tr.data.labeled))
    assert x.shape[1] == 2  # (B, 2 views, C, H, W)
    batch, _ = tr.trainee.teaching.prepare(Batch(x_labeled=x, y=y))
    t_in = tr.trainee.teaching.teacher_input(batch)
    assert t_in.shape == batch.inputs.shape and not torch.equal(t_in, batch.inputs)
    if mode == "fixed":  # the teacher's rows are the eval transform of the very images
        clean = torch.stack([apply_transform(tr.evaluator.transform, np.asarray(distill_world[1].labeled.load(int(i)))) for i in idx])
        assert torch.allclose(t_in, clean)


def test_function_matching_mixes_both_views_identically_without_labels():
    torch.manual_seed(0)
    n_l, n_u = 6, 10
    perm, lam = mixup_plan(n_l, n_u, 1.0, torch.device("cpu"))
    assert sorted(perm[:n_l].tolist()) == list(range(n_l))  # labeled rows pair among themselves
    assert sorted(perm[n_l:].tolist()) == list(range(n_l, n_l + n_u))  # unlabeled rows among themselves
    assert 0.0 <= lam <= 1.0
    x = torch.randn(n_l + n_u, 1, 8, 8)
    assert torch.allclose(mix(x.clone(), perm, lam), lam * x + (1 - lam) * x[perm])
    t = Teaching(mode="function_matching", student_size=8, teacher_size=8, num_classes=10)
    y = torch.randint(0, 10, (n_l,))
    torch.manual_seed(1)
    batch, y_hard = t.prepare(Batch(x_labeled=x[:n_l].clone(), y=y, x_unlabeled=x[n_l:].clone()))
    assert torch.equal(t.teacher_input(batch), batch.inputs)  # one mixed tensor for both models
    assert batch.y.shape == (n_l, 10) and torch.allclose(batch.y.sum(1), torch.ones(n_l))
    assert torch.equal(y_hard, y)
    torch.manual_seed(1)
    perm, lam = mixup_plan(n_l, n_u, 1.0, torch.device("cpu"))
    assert torch.allclose(batch.inputs, mix(x.clone(), perm, lam))
    # unlabeled-only batches work: no label is needed
    b2, _ = t.prepare(Batch(x_labeled=x[:0], y=y[:0], x_unlabeled=x[n_l:].clone()))
    assert b2.inputs.shape == (n_u, 1, 8, 8)


def test_teacher_at_another_resolution_gets_its_own_side():
    t = Teaching(mode="fixed", student_size=24, teacher_size=32, num_classes=10)
    assert t.view_size == 32
    x = torch.randn(4, 2, 1, 32, 32)
    batch, _ = t.prepare(Batch(x_labeled=x, y=torch.zeros(4, dtype=torch.long)))
    assert batch.x_labeled.shape[-1] == 24 and t.teacher_input(batch).shape[-1] == 32


def test_fidelity_compares_the_teacher_on_the_view_it_was_taught_with(distill_world, tmp_path):
    """A teacher taught at 32 px (``teacher_image_size``) is compared with the 28 px student on 32 px
    images, not on the student's: the reported fidelity and teacher accuracy are recomputed by hand."""
    from noisystudent.evaluate import predict_probs

    _, data, teacher_path, _ = distill_world
    job = job_with(distill_world, tmp_path, {"name": "hinton"}, {"mode": "consistent", "teacher_image_size": 32},
                   epochs=1, steps_per_epoch=3)
    metrics = run_training(job)
    s = job.spec
    student = load_checkpoint(tmp_path / "model.pt").build_model()
    teacher = load_checkpoint(teacher_path).build_model()
    s_idx, s_p = predict_probs(student, data.test, create_transform(28, 1, s.mean, s.std, None), progress=False)
    t_idx, t_p = predict_probs(teacher, data.test, create_transform(32, 1, s.mean, s.std, None), progress=False)
    assert np.array_equal(s_idx, t_idx)
    assert metrics["test_fidelity"] == pytest.approx(float((s_p.argmax(1) == t_p.argmax(1)).mean()))
    t_acc = float((t_p.argmax(1) == np.asarray(data.test.labels)[t_idx]).mean())
    assert metrics["teacher_test_acc"] == pytest.approx(t_acc)
    _, t28 = predict_probs(teacher, data.test, create_transform(28, 1, s.mean, s.std, None), progress=False)
    assert not np.array_equal(t28.argmax(1), t_p.argmax(1)), "the two views should not agree everywhere"


@pytest.mark.parametrize("mode", MODES)
def test_every_teaching_setting_trains_and_lowers_its_loss(distill_world, tmp_path, mode):
    metrics = run_training(job_with(distill_world, tmp_path, {"name": "hinton"}, {"mode": mode}))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0], hist[["epoch", "train_loss"]]
    assert metrics["teaching"] == mode


def test_teaching_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"distill\.teaching\.mode"):
        config_from_dict({"data": dict(DATA), "distill": {"teaching": {"mode": "clean"}}})
    with pytest.raises(ConfigError, match=r"student\.teaching\.mixup_alpha"):
        config_from_dict({"data": dict(DATA), "student": {"teaching": {"mixup_alpha": 0}}})


# ---------------------------------------------------------------------------------------------- DML


def test_dml_cohort_trains_keeps_every_member_and_exports_the_named_one(distill_world, tmp_path):
    metrics = run_training(job_with(distill_world, tmp_path, {"name": "dml", "peers": ["resnet14"], "export": "peer1"}))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert {"loss_kd", "loss_peer1"} <= set(hist.columns)
    peer = load_checkpoint(tmp_path / "members" / "peer1")
    assert peer.spec.name == "resnet14" and peer.build_model()  # a member is an ordinary checkpoint
    exported = load_checkpoint(tmp_path)
    assert exported.spec.name == "resnet14" and metrics["exported"] == "resnet14"
    assert [m["label"] for m in metrics["members"]] == ["student", "peer1"]
    assert all("test_acc" in m for m in metrics["members"])
    # the exported member's figures are the ones measured for it (evaluated once, not twice)
    assert metrics["test_acc"] == metrics["members"][1]["test_acc"] and "test_confusion_matrix" in metrics


def test_dml_best_val_exports_the_member_best_on_validation_never_test(distill_world, tmp_path):
    cfg, data, _teacher, _pl = distill_world
    job = job_with(distill_world, tmp_path, {"name": "dml"})
    val = data.labeled.subset(np.arange(0, len(data.labeled), 3))
    metrics = run_training(dataclasses.replace(job, val=val))
    vals = [m["val_acc"] for m in metrics["members"]]
    best = int(np.argmax(vals))
    assert metrics["val_acc"] == pytest.approx(vals[best])
    assert metrics.get("exported") == (None if best == 0 else "resnet8")


def test_dml_cohort_resumes_after_a_kill_with_every_member_restored(distill_world, tmp_path):
    job = job_with(distill_world, tmp_path, {"name": "dml", "peers": ["same", "resnet14"]}, epochs=2, steps_per_epoch=4)
    with pytest.raises(RuntimeError, match="injected"):
        run_training(job, TrainHooks(fail_at_epoch=1))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    saved = {k: v for k, v in state["method"].items() if k.startswith("peers.")}
    assert any(k.startswith("peers.0.") for k in saved) and any(k.startswith("peers.1.") for k in saved)
    tr = setup(job, TrainHooks(), torch.device("cpu"))
    fresh = {k: v.clone() for k, v in tr.trainee.core.method.state_dict().items()}
    tr.state.load_bytes((tmp_path / "last.pt").read_bytes(), tmp_path / "last.pt")
    start, history = tr.state.epochs_done, tr.state.history
    restored = tr.trainee.core.method.state_dict()
    assert start == 1 and len(history) == 1
    assert all(torch.equal(restored[k], saved[k]) for k in saved)
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved if saved[k].is_floating_point())
    metrics = run_training(job)  # the resumed job finishes with both members written
    assert (tmp_path / "members" / "peer2" / "model.pt").is_file() and len(metrics["members"]) == 3


def test_dml_config_errors_name_the_field():
    from noisystudent.distill import resolve_method_config

    with pytest.raises(ConfigError, match=r"method\.peers\[0\]"):
        resolve_method_config({"name": "dml", "peers": ["resnet9000"]}, "method")
    with pytest.raises(ConfigError, match=r"method\.export"):
        resolve_method_config({"name": "dml", "export": "peer3"}, "method")


# ---------------------------------------------------------------------------------------------- Ray Train


@pytest.mark.slow  # a two-worker Ray Train job (minutes on busy cores). Fast: a method's extra modules under DDP
# (the peers join DDP as fitnet's regressor does) and paired views on two workers are test_distill's
# test_two_ray_train_workers_with_an_online_teacher; the cohort's training, export and resume in this process,
# test_dml_cohort_trains_keeps_every_member_and_exports_the_named_one and the resume test after it
def test_dml_cohort_on_two_ray_train_workers(distill_world, tmp_path, ray_session):
    """The cohort's peers under DDP, each member exported."""
    from pipelines.config import RayConfig
    from pipelines.train_ray import train

    metrics = train(job_with(distill_world, tmp_path / "dml", {"name": "dml", "export": "student"}, epochs=2, steps_per_epoch=3),
                    RayConfig(workers=2))
    assert (tmp_path / "dml" / "members" / "peer1" / "model.pt").is_file() and len(metrics["members"]) == 2


# ---------------------------------------------------------------------------------------------- born-again


@pytest.mark.slow  # the whole loop with Ray labeling: ~40 s idle, minutes on busy cores; `make test-all`
def test_born_again_preset_runs_a_generation_with_its_teacher_online(tmp_path, ray_session, require_fmnist):
    """The shipped preset with its sizes cut down: an equal-size student learns from the generation-0
    teacher run online (hinton), on labeled images only."""
    from pipelines.config import load_config
    from pipelines.loop import run_all

    preset = load_config("configs/born_again_fashion_mnist.yaml")
    assert {m.name for m in preset.student.ladder} == {preset.teacher.name} and preset.student.method["name"] == "hinton"
    cfg = load_config("configs/born_again_fashion_mnist.yaml", {"data.labels_per_class": 12, "data.unlabeled_limit": 100, "data.test_limit": 200,
                                "teacher_train.epochs": 1, "teacher_train.total_steps": 4, "teacher_train.warn_below_steps": 0,
                                "student.train.epochs": 1, "student.train.total_steps": 4,
                                "student.train.warn_below_steps": 0, "ray.workers": 0, "student.generations": 1})
    rows = run_all(cfg, tmp_path / "run", progress=False, tracking=None)
    student = pd.read_json(tmp_path / "run" / "gen-1" / "student" / "metrics.json", typ="series")
    assert student["method"] == "hinton" and student["pseudo_labeled_images"] == 0
    assert student["teaching"] == "consistent" and 0.0 <= student["test_fidelity"] <= 1.0
    assert len(rows) == 2
