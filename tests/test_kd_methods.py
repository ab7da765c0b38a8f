"""Feature and relation methods (at, fsp, sp, rkd, fitnet, hinton) on random tensors: a loss that is zero
at the teacher and grows away from it, and config errors that name the field and both models.
Training, resume and Ray Train for every registered method are in test_distill.py."""

from __future__ import annotations

import pytest
import torch

from noisystudent.distill import create_method, list_methods, method_defaults, resolve_method_config
from noisystudent.distill.base import Batch, Outputs
from noisystudent.errors import ConfigError, UserError
from noisystudent.models import create_model

FEATURE_METHODS = ["at", "fitnet", "fsp", "hinton", "rkd", "sp"]


def info(model: str, in_chans: int = 1) -> list[dict]:
    """A model's feature_info with its name, as the engine hands it to a method."""
    return [{**s, "model": model} for s in create_model(model, num_classes=10, in_chans=in_chans).feature_info]


def make(name: str, student: str = "resnet8", teacher: str = "resnet26", **params):
    return create_method({"name": name, **params}, student_info=info(student), teacher_info=info(teacher), num_classes=10)


def features(method, model_info: list[dict], stages, n: int, size: int, g: torch.Generator) -> list[torch.Tensor]:
    """Random non-negative (post-ReLU-like) stage outputs of the shapes the model's stages have."""
    out = []
    for s in stages:
        st = model_info[s]
        hw = max(1, size // st["reduction"])
        out.append(torch.randn(n, st["num_chs"], hw, hw, generator=g).relu())
    return out


def distill_parts(parts: dict) -> dict:
    return {k: float(v) for k, v in parts.items() if k != "loss_labeled"}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_distillation_term_is_zero_at_the_teacher_and_grows_away_from_it(name, seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(3, 12, (1,), generator=g))
    size = int(torch.randint(8, 29, (1,), generator=g))
    method = make(name, teacher="resnet8")  # same stage shapes: the student can equal the teacher exactly
    if name == "fitnet":  # the regressor as the identity: 1x1 conv = I, BatchNorm with unit statistics
        conv, bn = method.regressor
        with torch.no_grad():
            conv.weight.copy_(torch.eye(conv.weight.shape[0]).view_as(conv.weight))
        method.eval()
    s_info = method.student_info
    feats = features(method, s_info, method.student_stages, n, size, g)
    logits = torch.randn(n, 10, generator=g)
    batch = Batch(x_labeled=torch.zeros(n, 1, size, size), y=torch.randint(0, 10, (n,), generator=g))
    same = Outputs(logits=logits, features=feats, n_labeled=n)
    _, parts = method.loss(same, Outputs(logits=logits.clone(), features=[f.clone() for f in feats], n_labeled=n), batch)
    assert distill_parts(parts) and all(abs(v) < 1e-4 for v in distill_parts(parts).values()), parts

    noisy = Outputs(logits=logits + torch.randn(n, 10, generator=g),
                    features=[(f + 0.5 * torch.randn(f.shape, generator=g)).relu() for f in feats], n_labeled=n)
    _, away = method.loss(noisy, same, batch)
    assert sum(distill_parts(away).values()) > sum(distill_parts(parts).values()) + 1e-6, away


@pytest.mark.parametrize("name", ["at", "fsp", "rkd", "sp"])
def test_gradient_reaches_the_student_features_and_not_the_teacher(name):
    g = torch.Generator().manual_seed(0)
    method = make(name)
    s_feats = [f.requires_grad_() for f in features(method, method.student_info, method.student_stages, 6, 28, g)]
    t_feats = [f.requires_grad_() for f in features(method, method.teacher_info, method.teacher_stages, 6, 28, g)]
    logits = torch.randn(6, 10, generator=g, requires_grad=True)
    batch = Batch(x_labeled=torch.zeros(6, 1, 28, 28), y=torch.randint(0, 10, (6,), generator=g))
    with torch.no_grad():  # the engine's online teacher runs without autograd
        t_out = Outputs(logits=logits.detach().clone(), features=[f.detach() for f in t_feats], n_labeled=6)
    loss, _ = method.loss(Outputs(logits=logits, features=s_feats, n_labeled=6), t_out, batch)
    loss.backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in s_feats)
    assert all(f.grad is None for f in t_feats)


@pytest.mark.parametrize("scale", [0.1, 2.5, 40.0])
def test_fsp_normalized_term_does_not_depend_on_the_feature_scale(scale):
    """FSP matrices are products of two maps, so the plain term grows with the fourth power of the feature
    scale (a WRN's pre-activation stages against a ResNet's post-ReLU ones: NaN at lr 0.1 with beta 1); the
    default term, relative to the teacher's matrices, is the same at every scale."""
    g = torch.Generator().manual_seed(0)
    plain, rel = make("fsp", teacher="resnet8", normalize=False), make("fsp", teacher="resnet8")
    s_feats = features(rel, rel.student_info, rel.student_stages, 6, 28, g)
    t_feats = [(f + 0.5 * torch.randn(f.shape, generator=g)).relu() for f in s_feats]
    batch = Batch(x_labeled=torch.zeros(6, 1, 28, 28), y=torch.randint(0, 10, (6,), generator=g))

    def term(method, k):
        out = lambda fs: Outputs(logits=torch.zeros(6, 10), features=[k * f for f in fs], n_labeled=6)  # noqa: E731
        return float(method.loss(out(s_feats), out(t_feats), batch)[1]["loss_fsp"])

    assert term(rel, scale) == pytest.approx(term(rel, 1.0), rel=1e-4)
    assert term(plain, scale) == pytest.approx(term(plain, 1.0) * scale ** 4, rel=1e-3)


def test_paper_defaults():
    assert method_defaults("at") == {"student_stages": [0, 1, 2], "teacher_stages": [0, 1, 2], "p": 2.0, "beta": 1000.0}
    assert method_defaults("fsp") == {"pairs": [[0, 1], [1, 2]], "beta": 1.0, "init_epochs": 0, "normalize": True}
    assert method_defaults("sp") == {"student_stages": [-1], "teacher_stages": [-1], "gamma": 3000.0}
    assert method_defaults("rkd") == {"mode": "both", "distance_weight": 25.0, "angle_weight": 50.0,
                                      "student_stage": -1, "teacher_stage": -1}
    assert method_defaults("fitnet")["hint_epochs"] == 0
    assert {"at", "fsp", "sp", "rkd", "fitnet", "hinton", "supervised"} <= set(list_methods())


def test_rkd_modes_weigh_their_terms():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 64, 7, 7, generator=g), torch.randn(8, 64, 7, 7, generator=g)
    batch = Batch(x_labeled=torch.zeros(8, 1, 28, 28), y=torch.zeros(8, dtype=torch.long))
    logits = torch.zeros(8, 10)
    out = {}
    for mode in ("distance", "angle", "both"):
        loss, parts = make("rkd", mode=mode).loss(Outputs(logits, [s], 8), Outputs(logits, [t], 8), batch)
        out[mode] = (float(loss), parts)
    ce, d, a = float(out["both"][1]["loss_labeled"]), float(out["both"][1]["loss_rkd_distance"]), float(out["both"][1]["loss_rkd_angle"])
    assert out["distance"][0] == pytest.approx(ce + 25 * d, rel=1e-5)
    assert out["angle"][0] == pytest.approx(ce + 50 * a, rel=1e-5)
    assert out["both"][0] == pytest.approx(ce + 25 * d + 50 * a, rel=1e-5)
    # relations only: scaling the student's embedding changes neither distances (normalised) nor angles
    _, scaled = make("rkd").loss(Outputs(logits, [3 * s], 8), Outputs(logits, [t], 8), batch)
    assert float(scaled["loss_rkd_distance"]) == pytest.approx(d, rel=1e-4)
    assert float(scaled["loss_rkd_angle"]) == pytest.approx(a, rel=1e-4)


# -- config errors -------------------------------------------------------------------------------------


def test_fsp_pairs_that_do_not_exist_in_both_models_name_both_models():
    # WRN-16-2 has 32/64/128 channels where ResNet-26 has 16/32/64: no FSP pair is comparable
    with pytest.raises(ConfigError, match=r"method\.pairs\[0\]'.*student wrn_16_2.*teacher resnet26"):
        make("fsp", student="wrn_16_2")
    # a torchvision ResNet's stages are at 1/4..1/32, the CIFAR ResNet's at 1/1..1/4
    with pytest.raises(ConfigError, match=r"pairs\[0\]'.*stage 0 is 16 channels at 1/1 in the student resnet8 but 64 channels at 1/4 in the teacher resnet18"):
        make("fsp", teacher="resnet18")
    # a stage index that the models lack
    with pytest.raises(ConfigError, match=r"pairs\[1\]'.*\[1, 3\] does not exist in both models: student resnet8 has 3 "
                                          r"stages, teacher resnet26 has 3"):
        make("fsp", pairs=[[0, 1], [1, 3]])
    with pytest.raises(ConfigError, match=r"distill\.method\.pairs\[0\]': must be two different stage indices"):
        resolve_method_config({"name": "fsp", "pairs": [[1, 1]]}, "distill.method")
    with pytest.raises(ConfigError, match=r"pairs\[0\]\[1\]': must be an integer"):
        resolve_method_config({"name": "fsp", "pairs": [[0, "x"]]}, "method")


@pytest.mark.parametrize("name", ["at", "sp"])
def test_stage_lists_must_pair_and_exist(name):
    with pytest.raises(ConfigError, match=r"method\.teacher_stages': must pair one to one with student_stages \(2 stages\), got 1"):
        resolve_method_config({"name": name, "student_stages": [0, 1], "teacher_stages": [1]}, "method")
    with pytest.raises(ConfigError, match=r"method\.student_stages': the student model has 3 stages \(0\.\.2\); got 5"):
        make(name, student_stages=[5], teacher_stages=[0])
    with pytest.raises(ConfigError, match=r"method\.teacher_stages': the teacher model has 3 stages"):
        make(name, student_stages=[0], teacher_stages=[-4])


def test_rkd_and_fitnet_stage_errors():
    with pytest.raises(ConfigError, match=r"method\.teacher_stage': the teacher model has 3 stages"):
        make("rkd", teacher_stage=3)
    with pytest.raises(ConfigError, match=r"method\.mode': must be one of distance, angle, both"):
        resolve_method_config({"name": "rkd", "mode": "dist"}, "method")
    m = make("fitnet", hint_epochs=3)
    with pytest.raises(ConfigError, match=r"method\.hint_epochs': must be less than the training epochs \(3\)"):
        m.set_epoch(0, 3)
    with pytest.raises(ConfigError, match=r"method\.init_epochs': must be less than the training epochs \(2\)"):
        make("fsp", init_epochs=2).set_epoch(0, 2)


def test_every_online_method_needs_a_teacher():
    for name in ("at", "fsp", "rkd", "sp"):
        with pytest.raises(ConfigError, match="needs a teacher model"):
            create_method({"name": name}, student_info=info("resnet8"), teacher_info=None, num_classes=10)


def test_engine_names_both_models_in_the_fsp_error(tmp_path, require_fmnist):
    """Through the engine: run_training builds the method with the student's and the teacher's names."""
    from noisystudent.checkpoint import save_checkpoint
    from noisystudent.data import create_data
    from noisystudent.engine import TrainJob, run_training, spec_for
    from pipelines.config import config_from_dict

    cfg = config_from_dict({"data": {"kind": "fashion_mnist", "labels_per_class": 4, "unlabeled_limit": 10, "test_limit": 10},
                            "teacher": {"name": "resnet26"}, "student": {"ladder": [{"name": "wrn_16_2"}]}})
    data = create_data(cfg.data)
    t_spec = spec_for(cfg.teacher, cfg.data, data.classes)
    save_checkpoint(tmp_path / "teacher.pt", t_spec.build(), t_spec)
    s_cfg = cfg.student.ladder[0]
    job = TrainJob(spec=spec_for(s_cfg, cfg.data, data.classes), model_cfg=s_cfg, train_cfg=cfg.student.train,
                   labeled=data.labeled, out_dir=tmp_path / "s", progress=False, method={"name": "fsp"},
                   teacher_ckpt=str(tmp_path / "teacher.pt"))
    with pytest.raises(UserError, match=r"student wrn_16_2 but .* teacher resnet26"):
        run_training(job)


# -- the bench-kd table ------------------------------------------------------------------------------


def test_bench_kd_table_gain_and_spread():
    from bench.kd import format_table, summarise

    def run(method, seed, acc, fid=0.9):
        return {"student": "resnet8", "method": method, "seed": seed, "test_acc": acc, "test_fidelity": fid,
                "train_seconds": 10.0}

    runs = [run("supervised", s, a) for s, a in enumerate((0.80, 0.81, 0.82))]
    runs += [run("hinton", s, a) for s, a in enumerate((0.85, 0.86, 0.87))]  # +5 points, spread 1 + 1
    runs += [run("at", s, a) for s, a in enumerate((0.80, 0.83, 0.86))]  # +2 points, spread 3 + 1
    rows = {r["method"]: r for r in summarise(runs)}
    assert [r["method"] for r in summarise(runs)] == ["supervised", "hinton", "at"]  # the bench's method order
    assert rows["hinton"]["gain"] == pytest.approx(0.05) and rows["hinton"]["beats_baseline"] is True
    assert rows["at"]["gain"] == pytest.approx(0.02) and rows["at"]["beats_baseline"] is False
    assert rows["supervised"]["gain"] is None and rows["hinton"]["test_acc_std"] == pytest.approx(0.01)
    one_seed = {r["method"]: r for r in summarise([run("supervised", 0, 0.8), run("hinton", 0, 0.9)])}
    assert one_seed["hinton"]["beats_baseline"] is False  # no spread to beat with one seed
    text = format_table(summarise(runs), {"model": "resnet26", "test_acc": 0.9, "train_seconds": 5, "dir": "d"})
    assert "86.00 ± 1.00" in text and "+5.00" in text and "yes" in text


def test_bench_kd_teacher_cache_key():
    """The cached teacher is found again whatever the device or data folder, and not for other settings."""
    import dataclasses

    from bench.kd import FULL, base_config, teacher_cache_dir

    cfg = base_config(FULL)
    key = teacher_cache_dir(cfg, "runs/cache")
    assert key.name.startswith("kd-teacher-resnet26-15ep-")
    assert teacher_cache_dir(dataclasses.replace(cfg, device="cpu"), "runs/cache") == key
    assert teacher_cache_dir(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root="/elsewhere")), "runs/cache") == key
    assert teacher_cache_dir(dataclasses.replace(cfg, seed=1), "runs/cache") != key
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, labels_per_class=1000))
    assert teacher_cache_dir(other, "runs/cache") != key


@pytest.mark.parametrize("name", ["at", "fsp", "rkd", "sp"])
def test_feature_losses_are_computed_in_fp32_under_autocast(name):
    """The engine calls a method inside autocast (bf16 on GPUs); Gram matrices and distances must not be
    computed in bf16. CPU autocast casts matmuls to bf16 the same way, so this runs anywhere."""
    g = torch.Generator().manual_seed(3)
    method = make(name)
    s = features(method, method.student_info, method.student_stages, 16, 28, g)
    t = features(method, method.teacher_info, method.teacher_stages, 16, 28, g)
    logits = torch.randn(16, 10, generator=g)
    batch = Batch(x_labeled=torch.zeros(16, 1, 28, 28), y=torch.randint(0, 10, (16,), generator=g))
    _, fp32 = method.loss(Outputs(logits, s, 16), Outputs(logits, t, 16), batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, amp = method.loss(Outputs(logits, [f.bfloat16() for f in s], 16), Outputs(logits, [f.bfloat16() for f in t], 16), batch)
    for k, v in distill_parts(fp32).items():
        # inputs rounded to bf16 (3 significant digits) move the loss a little; bf16 arithmetic would move it far more
        assert distill_parts(amp)[k] == pytest.approx(v, rel=2e-2), (k, v, distill_parts(amp)[k])
