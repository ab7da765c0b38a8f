"""ONE (multi-branch native ensemble) and BSS (boundary supporting adversarial samples): the oneM_BASE model
family, the losses, the attack against the frozen teacher, and both methods through the training engine on
real Fashion-MNIST (the session's teacher, conftest ``distill_world``): they train, ONE's exported branch
and ensemble reload with the logits of training, and a killed ONE job resumes with its branches and gate."""

from __future__ import annotations

import dataclasses
import io

import pandas as pd
import pytest
import torch
from test_distill import student_job

from noisystudent.checkpoint import load_checkpoint, safe_load, save_checkpoint
from noisystudent.distill import create_method, method_defaults, resolve_method_config
from noisystudent.distill.base import Batch, Outputs
from noisystudent.distill.methods.bss import bss_attack
from noisystudent.distill.teacher import OnlineTeacher
from noisystudent.errors import ConfigError
from noisystudent.models import create_model, is_model, stage_info
from noisystudent.engine import TrainHooks, run_training


def info(model: str) -> list[dict]:
    return [{**s, "model": model} for s in create_model(model, num_classes=10, in_chans=1).feature_info]


def one(student: str = "resnet8", **params):
    return create_method({"name": "one", **params}, student_info=info(student), teacher_info=None, num_classes=10)


# ------------------------------------------------------------------------------------ the oneM_BASE family


@pytest.mark.parametrize("name", ["one3_resnet8", "one2_wrn_16_2"])
def test_one_family_has_the_common_model_face(name):
    model = create_model(name, num_classes=10, in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        logits, stages = model.forward_intermediates(x)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits, rtol=0, atol=0)
    modules = dict(model.named_modules())
    for stage, feat in zip(model.feature_info, stages):
        assert stage["module"] in modules and feat.shape[1] == stage["num_chs"]
        assert feat.shape[-1] == 28 // stage["reduction"]
    assert [s["size"] for s in stage_info(name, in_chans=1, image_size=28)] == [(28, 28), (14, 14), (7, 7)]
    assert model.num_classes == 10


def test_one_family_takes_only_cifar_bases_and_two_or_more_branches():
    assert is_model("one3_resnet8") and is_model("one4_wrn_22_8") and is_model("one2_resnet26")
    assert not is_model("one1_resnet8") and not is_model("one3_resnet18") and not is_model("one3_nope")


# ------------------------------------------------------------------------------------------- one: the loss


def test_one_loss_trains_every_branch_and_the_gate_and_its_defaults_are_the_papers():
    assert method_defaults("one") == {"branches": 3, "temperature": 3.0, "rampup": 0.0, "export": "branch"}
    method, student = one(), create_model("resnet8", num_classes=10, in_chans=1)
    assert method.teacher_kind == "none" and len(method.branches) == 2
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    logits, feats = student.forward_intermediates(x, indices=list(method.student_stages))
    loss, parts = method(Outputs(logits, feats, n_labeled=6), None, Batch(x[:6], y[:6], x_unlabeled=x[6:]))
    loss.backward()
    assert set(parts) == {"loss_labeled", "loss_ensemble", "loss_kd"} and float(parts["loss_kd"]) > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
    assert student.stem[0].weight.grad.abs().sum() > 0  # the branches' losses reach the shared trunk


def test_one_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"'method': method 'one' needs a CIFAR ResNet or Wide ResNet student.*'resnet18'"):
        one("resnet18")
    with pytest.raises(ConfigError, match=r"'student\.method\.branches': must be >= 2"):
        resolve_method_config({"name": "one", "branches": 1}, "student.method")
    with pytest.raises(ConfigError, match=r"'method\.export': must be one of branch, ensemble"):
        resolve_method_config({"name": "one", "export": "all"}, "method")


# ------------------------------------------------------------------------------------------- bss: the attack


def _images(distill_world, n: int = 32):
    from noisystudent.data.torch_dataset import SourceDataset
    from noisystudent.transforms import create_transform

    _cfg, data, ckpt, _pl = distill_world
    s = load_checkpoint(ckpt).spec
    ds = SourceDataset(data.test, create_transform(s.image_size, s.in_chans, s.mean, s.std, None))
    rows = [ds[i] for i in range(n)]
    return torch.stack([r[0] for r in rows]), torch.as_tensor([int(r[1]) for r in rows]), s


def test_bss_attack_moves_the_teacher_toward_the_runner_up_and_leaves_it_untouched(distill_world):
    x, y, spec = _images(distill_world)
    teacher = OnlineTeacher(load_checkpoint(distill_world[2]), torch.device("cpu"))
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    with torch.no_grad():
        t = teacher.model(x)
    top2 = t.topk(2, dim=1).indices
    adv = bss_attack(teacher.model, x, top2[:, 1], steps=10, step_size=0.3)
    with torch.no_grad():
        ta = teacher.model(adv)
    margin = lambda z: (z.gather(1, top2[:, 1:]) - z.gather(1, top2[:, :1])).squeeze(1)
    assert (margin(ta) > margin(t)).all(), "every sample moved toward its runner-up class"
    assert (margin(ta) / margin(t)).mean() < 0.8, "the official step (0.3 x margin / |grad|, 10 steps) closes the gap"
    far = bss_attack(teacher.model, x, top2[:, 1], steps=10, step_size=30.0)  # long steps: past the boundary, then stop
    with torch.no_grad():
        tf = teacher.model(far)
    assert (tf.argmax(1) == top2[:, 1]).float().mean() > 0.5
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "teacher weights or BN statistics changed"
    assert not teacher.model.training

    # through the method: sample_ratio of the batch, within the valid pixel range, less confident teacher
    method = create_method({"name": "bss"}, student_info=info("resnet8"), teacher_info=info("resnet8"),
                           num_classes=10, student_spec=spec)
    method.set_epoch(0, 10)
    extra = method.extra_inputs(Batch(x_labeled=x[:16], y=y[:16], x_unlabeled=x[16:]), teacher)
    assert extra.shape == (8, 1, 28, 28) and not extra.requires_grad
    lo, hi = (0 - spec.mean[0]) / spec.std[0], (1 - spec.mean[0]) / spec.std[0]
    assert extra.min() >= lo - 1e-5 and extra.max() <= hi + 1e-5
    with torch.no_grad():
        assert teacher.model(extra).softmax(1).amax(1).mean() < t.softmax(1).amax(1).mean()
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())
    method.set_epoch(9, 10)  # the BSS term is off in the last quarter of training: no attack at all
    assert method.extra_inputs(Batch(x_labeled=x, y=y), teacher) is None


def test_bss_schedule_and_loss_follow_the_official_code():
    method = create_method({"name": "bss"}, student_info=info("resnet8"), teacher_info=info("resnet8"), num_classes=10)
    for epoch in (0, 39, 59, 79):  # train_BSS_distillation.py: 80 epochs, epoch counted from 1
        method.set_epoch(epoch, 80)
        e = epoch + 1
        assert method.weights() == pytest.approx((max(3 * (1 - e / 80), 0) + 1, max(2 * (1 - 4 / 3 * e / 80), 0)))
    method.set_epoch(0, 80)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(10, 10, generator=g), torch.randn(10, 10, generator=g)
    batch = Batch(x_labeled=torch.zeros(6, 1, 8, 8), y=torch.randint(0, 10, (6,), generator=g))
    _, same = method.loss(Outputs(s, [], 6, n_extra=2), Outputs(s.clone(), [], 6, n_extra=2), batch)
    assert abs(float(same["loss_kd"])) < 1e-6 and abs(float(same["loss_bss"])) < 1e-6
    total, away = method.loss(Outputs(s, [], 6, n_extra=2), Outputs(t, [], 6, n_extra=2), batch)
    kd_w, bss_w = method.weights()
    assert float(away["loss_bss"]) > 0
    assert float(total) == pytest.approx(float(away["loss_labeled"]) + kd_w * float(away["loss_kd"])
                                         + bss_w * float(away["loss_bss"]), rel=1e-5)
    with pytest.raises(ConfigError, match=r"'method\.sample_ratio': must be > 0"):
        resolve_method_config({"name": "bss", "sample_ratio": 0}, "method")


# ------------------------------------------------------------------------------------- through the engine


def test_bss_trains_on_adversarial_samples_through_the_engine(distill_world, tmp_path):
    metrics = run_training(student_job(distill_world, tmp_path, {"name": "bss"}, epochs=2, steps_per_epoch=4))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert hist["loss_bss"].iloc[0] > 0, "the engine ran the student and teacher on the adversarial rows"
    assert hist["loss_kd"].iloc[-1] < hist["loss_kd"].iloc[0] and metrics["method"] == "bss"


def test_one_resumes_with_its_branches_and_exports_branch_and_ensemble(distill_world, tmp_path):
    blobs: list[bytes] = []
    hooks = lambda: TrainHooks(fail_at_epoch=1, report=lambda row, blob: blobs.append(blob))
    job = lambda: student_job(distill_world, tmp_path, {"name": "one", "export": "ensemble"}, epochs=2, steps_per_epoch=3)
    with pytest.raises(RuntimeError, match="injected"):
        run_training(job(), hooks())
    metrics = run_training(job(), hooks())
    state = safe_load(io.BytesIO(blobs[-1]), what="the last epoch's state")
    # the gate and the branches ran every step of both epochs: restored after the kill, not rebuilt
    assert int(state["method"]["gate.bn.num_batches_tracked"]) == 6
    assert int(state["method"]["branches.1.stage.0.bn1.num_batches_tracked"]) == 6
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]

    ens = load_checkpoint(tmp_path / "model.pt")
    assert ens.spec.name == "one3_resnet8" and metrics["exported"] == "one3_resnet8"
    spec = dataclasses.replace(ens.spec, name="resnet8")
    student = spec.build(inference=False)
    student.load_state_dict(state["model"])
    method = create_method({"name": "one", "export": "ensemble"}, student_info=info("resnet8"), teacher_info=None,
                           num_classes=10, student_spec=spec)
    method.load_state_dict(state["method"])
    student.eval(), method.eval()
    x = _images(distill_world, 8)[0]
    with torch.no_grad():  # the training-time computation: student logits + trunk through the method
        logits, feats = student.forward_intermediates(x, indices=list(method.student_stages))
        branch_logits, ens_logits = method.outputs(logits, feats[0])
        torch.testing.assert_close(ens.build_model()(x), ens_logits)
    branch, b_spec = method.export_model(student, spec)
    assert branch is not student  # export: ensemble
    method.params.export = "branch"
    branch, b_spec = method.export_model(student, spec)
    save_checkpoint(tmp_path / "branch.pt", branch, b_spec)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "branch.pt").build_model()(x), branch_logits[0])


def test_one_ensemble_with_ema_averages_its_branches_with_the_trunk(distill_world, tmp_path):
    """With ``ema_decay`` the exported ensemble is the EMA of the trunk *and* of the branches and gate (an
    EMA trunk under raw branches is a model nobody trained), and the EMA survives a kill and resume."""
    blobs: list[bytes] = []
    hooks = lambda: TrainHooks(fail_at_epoch=1, report=lambda row, blob: blobs.append(blob))
    job = lambda: student_job(distill_world, tmp_path, {"name": "one", "export": "ensemble"}, epochs=2, steps_per_epoch=3,
                              ema_decay=0.5)
    with pytest.raises(RuntimeError, match="injected"):
        run_training(job(), hooks())
    run_training(job(), hooks())
    state = safe_load(io.BytesIO(blobs[-1]), what="the last epoch's state")
    ema = state["ema"]
    assert int(ema["n_averaged"]) == 6  # every step of both epochs, across the kill
    raw_branch, ema_branch = state["method"]["branches.1.head.fc.weight"], ema["module.method.branches.1.head.fc.weight"]
    assert not torch.equal(raw_branch, ema_branch), "the branches' EMA should differ from their last weights"

    ens = load_checkpoint(tmp_path / "model.pt")
    spec = dataclasses.replace(ens.spec, name="resnet8")
    student = spec.build(inference=False)
    student.load_state_dict({k[len("module.student."):]: v for k, v in ema.items() if k.startswith("module.student.")})
    method = create_method({"name": "one", "export": "ensemble"}, student_info=info("resnet8"), teacher_info=None,
                           num_classes=10, student_spec=spec)
    method.load_state_dict({k[len("module.method."):]: v for k, v in ema.items() if k.startswith("module.method.")})
    student.eval(), method.eval()
    x = _images(distill_world, 8)[0]
    with torch.no_grad():
        logits, feats = student.forward_intermediates(x, indices=list(method.student_stages))
        torch.testing.assert_close(ens.build_model()(x), method.outputs(logits, feats[0])[1])


def test_a_last_pt_whose_ema_covered_the_student_only_still_resumes(distill_world, tmp_path):
    """``last.pt`` files written before the EMA covered the method's modules hold ``module.<student key>``:
    they resume, the student's average restored, the branches' average starting from their weights."""
    job = lambda: student_job(distill_world, tmp_path, {"name": "one"}, epochs=2, steps_per_epoch=3, ema_decay=0.5)
    with pytest.raises(RuntimeError, match="injected"):
        run_training(job(), TrainHooks(fail_at_epoch=1))
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    old = {("module." + k[len("module.student."):] if k.startswith("module.student.") else k): v
           for k, v in state["ema"].items() if not k.startswith("module.method.")}
    state["ema"] = old
    torch.save(state, tmp_path / "last.pt")
    metrics = run_training(job(), TrainHooks(fail_at_epoch=1))
    assert list(pd.read_csv(tmp_path / "history.csv")["epoch"]) == [1, 2] and metrics["method"] == "one"


@pytest.mark.slow  # ~85 s each on 2 busy cores: a Ray Train run with a failure and a restart
@pytest.mark.parametrize("name", ["one", "bss"])
def test_two_ray_train_workers_kill_and_resume(distill_world, tmp_path, ray_session, name):
    """Under DDP: ONE's branches and gate are synchronised with the student (each used every step), BSS's
    workers append their own numbers of adversarial rows; a worker failure resumes from the checkpoint."""
    from pipelines.config import RayConfig
    from pipelines.train_ray import train

    method = {"name": name, "export": "ensemble"} if name == "one" else {"name": name}
    metrics = train(student_job(distill_world, tmp_path, method, epochs=2, steps_per_epoch=2), RayConfig(workers=2),
                    fail_at_epoch=1)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and metrics["method"] == name
    assert load_checkpoint(tmp_path / "model.pt").spec.name == ("one3_resnet8" if name == "one" else "resnet8")
    if name == "bss":
        assert hist["loss_bss"].iloc[0] > 0
