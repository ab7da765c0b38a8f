"""The engine's pieces on their own (no data loading): the training state's state_dict protocol, the
fault-injection hook, and starting a student from a checkpoint's weights. The whole job (train, resume
after a kill, evaluate, export) is tested in test_train.py and test_distill.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from noisystudent.checkpoint import ModelSpec, save_checkpoint
from noisystudent.config import TrainConfig
from noisystudent.distill import create_method
from noisystudent.engine import FailOnce, StepPlan, StudentStep, TrainHooks, TrainState, init_weights
from noisystudent.errors import UserError

SPEC = ModelSpec(name="resnet8", num_classes=3, in_chans=1, image_size=8, mean=[0.5], std=[0.5],
                 classes=["a", "b", "c"])


def core(seed: int, method: str = "supervised") -> StudentStep:
    torch.manual_seed(seed)
    student = SPEC.build(inference=False)
    info = [{**s, "model": SPEC.name} for s in student.feature_info]
    return StudentStep(student, create_method({"name": method}, student_info=info, num_classes=3))


def state(seed: int, ema: bool = True) -> TrainState:
    cfg = TrainConfig(epochs=2, ema_decay=0.9 if ema else None, lr=0.1)
    return TrainState.create(core(seed), cfg, StepPlan((3, 3), 3, "epochs", "test"), 1, "supervised")


def step(st: TrainState) -> None:
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(st.core.student(x), y)
    st.optimizer.zero_grad()
    loss.backward()
    st.optimizer.step()
    st.scheduler.step()
    st.ema.update_parameters(st.core)


def test_train_state_round_trips_through_state_dict():
    a = state(0)
    for _ in range(2):
        step(a)
    a.history.append({"epoch": 1, "train_loss": 1.0})
    a.epochs_done = 1
    blob = a.to_bytes()
    b = state(1)  # other initial weights, fresh optimizer
    b.load_bytes(blob, "last.pt")
    assert b.epochs_done == 1 and b.history == a.history
    for k, v in a.core.state_dict().items():
        assert torch.equal(v, b.core.state_dict()[k]), k
    for k, v in a.ema.state_dict().items():
        assert torch.equal(v, b.ema.state_dict()[k]), k
    assert b.scheduler.state_dict()["last_epoch"] == a.scheduler.state_dict()["last_epoch"] == 2
    assert b.optimizer.state_dict()["state"].keys() == a.optimizer.state_dict()["state"].keys()
    assert set(a.state_dict()) == {"model", "method", "optimizer", "scheduler", "ema", "history", "epoch", "rng"}


def test_a_state_missing_a_field_is_refused_naming_it():
    import io

    blob = state(0).state_dict()
    del blob["scheduler"]
    buf = io.BytesIO()
    torch.save(blob, buf)
    with pytest.raises(UserError, match=r"last.pt: field 'scheduler' is missing"):
        state(0).load_bytes(buf.getvalue(), "last.pt")


def test_fail_at_epoch_is_a_before_epoch_hook_that_fires_once(tmp_path):
    hooks = TrainHooks(fail_at_epoch=1)
    assert hooks.before_epoch == FailOnce(1)
    job = SimpleNamespace(out_dir=tmp_path)
    hooks.epoch_started(job, 0)  # another epoch: nothing
    with pytest.raises(RuntimeError, match="injected failure in epoch 1"):
        hooks.epoch_started(job, 1)
    assert (tmp_path / ".failed-once-1").exists()
    TrainHooks(fail_at_epoch=1).epoch_started(job, 1)  # the marker remembers across processes and calls
    seen = []
    TrainHooks(before_epoch=lambda j, e: seen.append(e)).epoch_started(job, 4)
    assert seen == [4]


def test_init_weights_starts_from_the_checkpoint_and_refuses_another_architecture(tmp_path):
    src = core(0).student
    save_checkpoint(tmp_path / "model.pt", src, SPEC)
    dst = core(1).student
    init_weights(dst, str(tmp_path), SPEC)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    other = ModelSpec(**{**SPEC.__dict__, "name": "resnet14"})
    with pytest.raises(UserError, match="init needs the same architecture"):
        init_weights(other.build(inference=False), str(tmp_path), other)
