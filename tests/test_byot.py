"""Self-distillation (``byot``, Zhang et al. 2019): heads on the chosen stages, the loss the paper and the
authors' code define, its config errors, and through the engine on real Fashion-MNIST: it trains, resumes
with its heads, exports the plain network, and runs on two Ray Train workers."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_distill import student_job

from noisystudent.checkpoint import load_checkpoint, safe_load
from noisystudent.distill import create_method, list_methods, method_defaults, resolve_method_config
from noisystudent.distill.base import Batch, Outputs
from noisystudent.errors import ConfigError
from noisystudent.models import create_model
from noisystudent.train import TrainHooks, run_training


def info(model: str) -> list[dict]:
    return [{**s, "model": model} for s in create_model(model, num_classes=10, in_chans=1).feature_info]


def byot(student: str = "resnet8", **params):
    return create_method({"name": "byot", **params}, student_info=info(student), teacher_info=None, num_classes=10)


def test_registered_with_the_papers_defaults():
    assert "byot" in list_methods()
    assert method_defaults("byot") == {"stages": None, "alpha": 0.3, "temperature": 3.0, "feature_weight": 1.28e-4}


@pytest.mark.parametrize("student", ["resnet8", "wrn_16_2", "resnet18"])
def test_a_head_per_shallow_stage_ends_at_the_last_stages_shape(student):
    """Every stage but the last gets a head; its feature has the last stage's width, its logits the classes."""
    model = create_model(student, num_classes=10, in_chans=1).eval()
    method = byot(student).eval()
    n = len(model.feature_info)
    assert method.student_stages == (*range(n - 1), n - 1) and len(method.heads) == n - 1
    x = torch.randn(2, 1, 28, 28) if student != "resnet18" else torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        logits, feats = model.forward_intermediates(x, indices=list(method.student_stages))
        for z, f in method.head_outputs(feats[:-1]):
            assert z.shape == (2, 10) and f.shape == (2, model.feature_info[-1]["num_chs"])


def test_loss_is_ce_plus_the_heads_ce_kl_and_hint():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_chans=1)
    method = byot(stages=[1], alpha=0.4, temperature=2.0, feature_weight=0.5)
    assert method.student_stages == (1, 2) and len(method.heads) == 1
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    logits, feats = model.forward_intermediates(x, indices=list(method.student_stages))
    total, parts = method.loss(Outputs(logits, feats, n_labeled=6), None, Batch(x, y))
    z, f = method.head_outputs(feats[:1])[0]
    deep_f = feats[-1].mean(dim=(2, 3))
    kl = F.kl_div(F.log_softmax(z / 2, -1), F.softmax(logits / 2, -1), reduction="batchmean") * 4
    expected = F.cross_entropy(logits, y) + 0.6 * F.cross_entropy(z, y) + 0.4 * kl + 0.5 * (f - deep_f).pow(2).sum(1).mean()
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    assert set(parts) == {"loss_labeled", "loss_heads", "loss_kd", "loss_feature"}
    # the deepest classifier learns from labels alone: the heads' targets are detached from it
    total.backward()
    g_fc = model.head.fc.weight.grad.clone()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(model.head.fc.weight.grad, g_fc)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"'method\.stages'.*before the last"):
        byot(stages=[2])
    with pytest.raises(ConfigError, match=r"'method\.stages'.*3 stages"):
        byot(stages=[5])
    with pytest.raises(ConfigError, match=r"'method\.alpha'"):
        resolve_method_config({"name": "byot", "alpha": 1.5}, "method")


def test_trains_resumes_with_its_heads_and_exports_the_plain_network(distill_world, tmp_path):
    blobs: list[bytes] = []
    hooks = lambda: TrainHooks(fail_at_epoch=1, report=lambda row, blob: blobs.append(blob))
    job = lambda: student_job(distill_world, tmp_path, {"name": "byot"}, epochs=2, steps_per_epoch=3)
    with pytest.raises(RuntimeError, match="injected"):
        run_training(job(), hooks())
    metrics = run_training(job(), hooks())
    state = safe_load(io.BytesIO(blobs[-1]), what="the last epoch's state")
    # both heads ran every step of both epochs: restored after the kill, not rebuilt
    assert int(state["method"]["heads.0.attention.2.num_batches_tracked"]) == 6
    assert int(state["method"]["heads.1.bottleneck.0.2.num_batches_tracked"]) == 6
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and metrics["method"] == "byot"
    assert {"loss_heads", "loss_kd", "loss_feature"} <= set(hist.columns)
    exported = load_checkpoint(tmp_path / "model.pt")
    assert exported.spec.name == "resnet8" and metrics.get("exported", "resnet8") == "resnet8"
    plain = exported.build_model()
    assert not any(k.startswith("heads") for k in plain.state_dict())
    student = create_model("resnet8", num_classes=10, in_chans=1)
    student.load_state_dict(state["model"])  # the exported weights are the network's own
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(v, student.state_dict()[k])


@pytest.mark.slow  # a Ray Train run with a failure and a restart (~80 s on 2 busy cores)
def test_two_ray_train_workers_kill_and_resume(distill_world, tmp_path, ray_session):
    from pipelines.config import RayConfig
    from pipelines.train_ray import train

    metrics = train(student_job(distill_world, tmp_path, {"name": "byot"}, epochs=2, steps_per_epoch=2), RayConfig(workers=2),
                    fail_at_epoch=1)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and metrics["method"] == "byot"
    assert load_checkpoint(tmp_path / "model.pt").spec.name == "resnet8" and hist["loss_kd"].iloc[0] > 0
