"""Online teacher ensembles (``distill.teachers``, a rung's ``teachers``): response methods learn from the
weighted mixture of probabilities, a feature method taps the teacher it names (a config error otherwise),
every member is frozen, and the job runs through the engine, the CLI and on Ray Train workers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from conftest import DISTILL_DATA as DATA
from test_distill import student_job

from noisystudent.checkpoint import load_checkpoint
from noisystudent.cli import main
from noisystudent.distill import create_method
from noisystudent.distill.base import Batch, Outputs
from noisystudent.distill.ensemble import load_ensemble
from noisystudent.losses import kd_kl
from noisystudent.errors import ConfigError
from noisystudent.evaluate import predict_probs
from noisystudent.train import TrainJob, run_training


@pytest.fixture(scope="module")
def second(distill_world, tmp_path_factory):
    """Another teacher: the same data, a WRN-16-2 trained 2 steps (another architecture, other stages)."""
    cfg, data, _t, _pl = distill_world
    out = tmp_path_factory.mktemp("teacher2")
    mcfg = dataclasses.replace(cfg.teacher, name="wrn_16_2")
    from noisystudent.train import spec_for

    run_training(TrainJob(spec=spec_for(mcfg, cfg.data, data.classes), model_cfg=mcfg,
                          train_cfg=dataclasses.replace(cfg.teacher_train, epochs=1, steps_per_epoch=2,
                                                        warn_below_steps=0),
                          labeled=data.labeled, test=data.test, out_dir=out, progress=False))
    return out / "model.pt"


def _job(distill_world, tmp, method, teachers, **over):
    job = student_job(distill_world, tmp, method, epochs=2, steps_per_epoch=3, **over)
    return dataclasses.replace(job, teachers=[(str(p), w) for p, w in teachers], teacher_ckpt=str(teachers[0][0]))


def test_ensemble_outputs_are_the_weighted_mixture_and_members_are_frozen(distill_world, second):
    _cfg, data, t1, _pl = distill_world
    spec = load_checkpoint(t1).spec
    ens = load_ensemble([(str(t1), 0.7), (str(second), 0.3)], spec, torch.device("cpu"), tap=None, field="distill.method")
    assert all(not p.requires_grad for m in ens.members for p in m.model.parameters())
    assert all(not m.model.training for m in ens.members)
    x = torch.randn(5, 1, 28, 28)
    out = ens(x, n_labeled=5)
    z1, z2 = (m.model(x) for m in ens.members)
    for t in (1.0, 4.0):
        expected = 0.7 * F.softmax(z1 / t, -1) + 0.3 * F.softmax(z2 / t, -1)
        torch.testing.assert_close(out.probs(t), expected)
    torch.testing.assert_close(out.logits.exp(), out.probs(1.0), rtol=1e-5, atol=1e-6)
    # hinton distils from the mixture at its own temperature, not from a softmax of mixed logits
    hinton = create_method({"name": "hinton"}, student_info=[], teacher_info=[], num_classes=10)
    s = torch.randn(5, 10)
    loss, parts = hinton(Outputs(s, [], 5), out, Batch(x, torch.zeros(5, dtype=torch.long)))
    assert float(parts["loss_kd"]) == pytest.approx(float(kd_kl(s, out.probs(4.0), 4.0)), rel=1e-5)
    with pytest.raises(ConfigError, match=r"'distill\.method\.tap'.*stages"):
        ens.stages = (1,)
    with pytest.raises(ConfigError, match=r"'distill\.method\.tap'.*names teacher 2"):
        load_ensemble([(str(t1), 0.5), (str(second), 0.5)], spec, torch.device("cpu"), tap=2, field="distill.method")


def test_hinton_learns_from_the_ensemble_and_fidelity_is_to_its_mixture(distill_world, second, tmp_path):
    _cfg, data, t1, _pl = distill_world
    metrics = run_training(_job(distill_world, tmp_path, {"name": "hinton"}, [(t1, 0.7), (second, 0.3)]))
    assert metrics["method"] == "hinton" and (tmp_path / "model.pt").is_file()
    mix = None
    for path, w in ((t1, 0.7), (second, 0.3)):
        ck = load_checkpoint(path)
        from noisystudent.transforms import create_transform

        s = ck.spec
        idx, p = predict_probs(ck.build_model(), data.test, create_transform(s.image_size, s.in_chans, s.mean, s.std, None),
                               progress=False)
        mix = w * p if mix is None else mix + w * p
    acc = float((mix.argmax(1) == np.asarray(data.test.labels)[idx]).mean())
    assert metrics["teacher_test_acc"] == pytest.approx(acc, abs=1e-9)


def test_a_feature_method_must_name_the_teacher_it_taps(distill_world, second, tmp_path):
    _cfg, _data, t1, _pl = distill_world
    with pytest.raises(ConfigError, match=r"'student\.method\.tap'.*name the one it taps"):
        run_training(_job(distill_world, tmp_path / "a", {"name": "fitnet"}, [(t1, 0.5), (second, 0.5)]))
    # tap 1: the WRN's stages (other widths than the ResNet-8's) size the regressor, and it trains
    metrics = run_training(_job(distill_world, tmp_path / "b", {"name": "fitnet", "tap": 1}, [(t1, 0.5), (second, 0.5)]))
    hist = pd.read_csv(tmp_path / "b" / "history.csv")
    assert metrics["method"] == "fitnet" and hist["loss_hint"].iloc[0] > 0


def test_cli_distill_with_teachers_in_the_config(distill_world, second, tmp_path):
    _cfg, _data, t1, _pl = distill_world
    base = {"data": DATA, "student": {"ladder": [{"name": "resnet8"}],
                                      "train": {"epochs": 1, "batch_size": 30, "steps_per_epoch": 3, "warn_below_steps": 0}},
            "ray": {"workers": 0}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**base, "distill": {"teachers": [{"path": "teacher", "weight": 2},
                                                                     {"path": str(second), "weight": 1}]}}))
    res = CliRunner().invoke(main, ["distill", str(cfg), "--run-dir", str(tmp_path / "r"), "--teacher", str(t1), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "fidelity to the teacher" in res.output
    cfg.write_text(yaml.safe_dump({**base, "distill": {"teachers": [{"path": str(t1), "weight": 0},
                                                                     {"path": str(second), "weight": 0}]}}))
    res = CliRunner().invoke(main, ["distill", str(cfg), "--run-dir", str(tmp_path / "r2"), "--quiet"])
    assert res.exit_code == 2 and "distill.teachers" in res.output and "not all be 0" in res.output


@pytest.mark.slow  # a Ray Train run with a failure and a restart (~80 s on 2 busy cores)
def test_two_ray_train_workers_load_every_teacher_and_resume(distill_world, second, tmp_path, ray_session):
    from pipelines.config import RayConfig
    from pipelines.train_ray import train

    _cfg, _data, t1, _pl = distill_world
    job = _job(distill_world, tmp_path, {"name": "hinton"}, [(t1, 0.7), (second, 0.3)])
    metrics = train(dataclasses.replace(job, train_cfg=dataclasses.replace(job.train_cfg, steps_per_epoch=2)),
                    RayConfig(workers=2), fail_at_epoch=1)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and metrics["method"] == "hinton" and hist["loss_kd"].iloc[0] > 0


def test_a_config_error_on_a_ray_train_worker_reaches_the_caller_as_itself(distill_world, second, tmp_path,
                                                                         ray_session):
    """The tap error is raised where the method is built, on the Ray Train worker: the driver gets the
    ConfigError itself (the CLI's one line naming the field), not Ray's wrapper."""
    from pipelines.config import RayConfig
    from pipelines.train_ray import train

    _cfg, _data, t1, _pl = distill_world
    with pytest.raises(ConfigError, match=r"'student\.method\.tap'.*name the one it taps") as err:
        train(_job(distill_world, tmp_path, {"name": "fitnet"}, [(t1, 0.5), (second, 0.5)]),
              RayConfig(workers=1, max_failures=0))
    assert err.value.field == "student.method.tap"


def test_teachers_lists_are_validated_naming_the_field(distill_world):
    from noisystudent.config import TeacherRef
    from pipelines.config import config_from_dict
    from pipelines.steps.training import online_ensemble

    _cfg, data, t1, _pl = distill_world
    with pytest.raises(ConfigError) as err:
        config_from_dict({"distill": {"teachers": [{"path": str(t1), "weight": -1}]}})
    assert err.value.field == "distill.teachers[0].weight"
    with pytest.raises(ConfigError) as err:
        config_from_dict({"student": {"ladder": [{"name": "resnet8", "teachers": [{"path": "a", "wieght": 1}]}]}})
    assert err.value.field == "student.ladder[0].teachers[0].wieght"
    with pytest.raises(ConfigError) as err:
        online_ensemble([TeacherRef("teacher", 1.0)], None, "distill.teachers", data.classes)
    assert err.value.field == "distill.teachers[0].path"
    assert online_ensemble([TeacherRef("teacher", 3.0), TeacherRef(str(t1), 1.0)], t1, "distill.teachers",
                           data.classes) == [(str(t1), 0.75), (str(t1), 0.25)]


@pytest.mark.slow  # the loop with Ray labeling, one generation: ~1 min idle, minutes on busy cores
def test_a_loop_rung_learns_from_its_teachers_list(tmp_path, ray_session, require_fmnist):
    """A rung's ``teachers`` with ``teacher`` (the promoted model) twice, at unequal weights: the loop
    resolves the path per generation and the rung trains online from the ensemble."""
    from pipelines.config import config_from_dict
    from pipelines.loop import run_all

    raw = yaml.safe_load(open("configs/born_again_fashion_mnist.yaml"))
    raw["data"].update({"labels_per_class": 12, "unlabeled_limit": 60, "test_limit": 100})
    raw["teacher_train"].update({"epochs": 1, "total_steps": 3, "warn_below_steps": 0})
    raw["student"].update({"generations": 1, "ladder": [{"name": "resnet14", "teachers": [
        {"path": "teacher", "weight": 0.7}, {"path": "teacher", "weight": 0.3}]}]})
    raw["student"]["train"].update({"epochs": 1, "total_steps": 3, "warn_below_steps": 0})
    raw["ray"] = {"workers": 0}
    run_all(config_from_dict(raw), tmp_path / "run", progress=False, tracking=None)
    s = pd.read_json(tmp_path / "run" / "gen-1" / "student" / "metrics.json", typ="series")
    assert s["method"] == "hinton" and 0.0 <= s["test_fidelity"] <= 1.0


# -- the bench-kd-ensemble table -------------------------------------------------------------------


def test_bench_kd_ensemble_configs_and_table(tmp_path):
    """The ensemble benchmark's members differ from bench-kd's teacher only by seed (their own cache
    folders); its student config is a valid `distill.teachers` list; the table gives mean ± std, the gain
    over supervised and names the best single teacher; the figure is a PNG."""
    from bench.kd import FULL, base_config, student_config, teacher_cache_dir
    from bench.kd_ensemble import format_table, member_config, plot, summarise

    cfg = base_config(FULL)
    m1 = member_config(cfg, 1)
    assert m1.seed == 1 and m1.teacher == cfg.teacher and m1.teacher_train == cfg.teacher_train and m1.data == cfg.data
    assert teacher_cache_dir(m1, "c") != teacher_cache_dir(cfg, "c")
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    e = student_config(cfg, "resnet8", "hinton", 1, a, teachers=[(a, 0.5), (b, 0.5)])
    assert e.seed == 1 and e.distill.teacher is None and e.distill.method["name"] == "hinton"
    assert [(t.path, t.weight) for t in e.distill.teachers] == [(str(a), 0.5), (str(b), 0.5)]
    assert e.student.ladder[0].name == "resnet8"
    runs = [{"row": "supervised", "seed": s, "test_acc": 0.80 + s / 100, "test_fidelity": None, "teacher_test_acc": None,
             "train_seconds": 10.0} for s in (0, 1)]
    runs += [{"row": "ensemble of 2", "seed": s, "test_acc": 0.84 + s / 100, "test_fidelity": 0.9, "teacher_test_acc": 0.89,
              "train_seconds": 20.0, "members": [0, 1]} for s in (0, 1)]
    rows = summarise(runs)
    assert [r["row"] for r in rows] == ["supervised", "ensemble of 2"]
    assert rows[1]["gain"] == pytest.approx(0.04) and rows[0]["gain"] is None
    assert rows[1]["test_acc_std"] == pytest.approx(0.01 * 2 ** 0.5 / 2) and rows[1]["members"] == [0, 1]
    text = format_table(rows, [{"seed": 0, "model": "resnet26", "val_acc": 0.9, "test_acc": 0.88, "best": True},
                               {"seed": 1, "model": "resnet26", "val_acc": 0.89, "test_acc": 0.885}])
    assert "84.50 ± 0.71" in text and "+4.00" in text and "89.00" in text
    assert "teacher seed 0: resnet26, val 90.00%, test 88.00%  <- best single (validation)" in text
    assert plot(rows, tmp_path / "f.png", "t").read_bytes()[:4] == b"\x89PNG"
