"""The loop on data nobody tuned it for (issue 14): step budgets, validation, promotion, noise, warnings.

The end-to-end tests use a small real image folder: Fashion-MNIST exported as PNGs (10 labeled a class,
a few hundred unlabeled, a test split), read through ``configs/imagefolder_example.yaml`` with its paths
changed, as a new user would."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noisystudent.config import DataConfig, TrainConfig, to_dict
from noisystudent.errors import BudgetWarning, ConfigError, PromotionWarning, PseudoLabelWarning
from pipelines.config import config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# a small real image folder


@pytest.fixture(scope="module")
def fmnist_folder(tmp_path_factory, require_fmnist):
    """10 labeled PNGs a class, 200 unlabeled, 10 test a class, as ``{labeled, unlabeled, test}`` paths."""
    from bench.small import export_fashion_mnist_folder

    out = tmp_path_factory.mktemp("fmnist_png")
    return export_fashion_mnist_folder(out / "data", root=require_fmnist, labeled_per_class=10, unlabeled=200,
                                       test_per_class=10)


def _folder_job(cfg, role="teacher"):
    """The teacher job the loop would build for ``cfg`` (nothing trained)."""
    from noisystudent.data import create_data
    from noisystudent.engine import TrainJob, spec_for

    data = create_data(cfg.data)
    return TrainJob(spec=spec_for(cfg.teacher, cfg.data, data.classes), model_cfg=cfg.teacher, train_cfg=cfg.teacher_train,
                    labeled=data.labeled, out_dir=Path("/nonexistent"), val=data.val, role=role), data


def test_example_config_reads_the_folder_and_plans_enough_steps(fmnist_folder):
    """The shipped example, paths only changed: 8 training + 2 validation images a class, 600 teacher steps."""
    from bench.small import example_config
    from noisystudent.engine import budget_warning, plan_steps

    cfg = example_config(fmnist_folder)
    job, data = _folder_job(cfg)
    assert len(data.labeled) == 80 and len(data.val) == 20 and len(data.unlabeled) == 200 and len(data.test) == 100
    assert np.bincount(data.val.labels).tolist() == [2] * 10
    assert not set(data.val.image_ids()) & set(data.labeled.image_ids())
    plan = plan_steps(job)
    assert plan.source == "min_steps" and plan.total == 600 and plan.pass_steps == 1
    assert budget_warning(job, plan) is None
    # the same folder with the budget (50 epochs of one step) warns, naming the number and the fix
    d = to_dict(cfg)
    d["teacher_train"]["min_steps"] = 0
    d["teacher_train"]["epochs"] = 50
    job, _ = _folder_job(config_from_dict(d))
    msg = budget_warning(job, plan_steps(job))
    assert "will run 50 optimizer steps" in msg and "teacher_train.epochs=50 x 1 step(s)" in msg
    assert "80 labeled images at batch 64" in msg and "teacher_train.min_steps" in msg and "teacher_train.total_steps" in msg


def test_under_budget_job_warns_before_it_starts(fmnist_folder, tmp_path):
    """A real (2-step) teacher job on the folder warns before its first epoch, and once."""
    from bench.small import example_config
    from noisystudent.engine import TrainHooks, run_training

    cfg = example_config(fmnist_folder, {"teacher_train.min_steps": 0, "teacher_train.epochs": 2, "teacher.name": "resnet8",
                                         "data.image_size": 16})
    job, _ = _folder_job(cfg)
    job.out_dir, job.progress = tmp_path / "teacher", False
    seen_at_first_epoch = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hooks = TrainHooks(report=lambda row, blob: seen_at_first_epoch.append(len(caught)))
        metrics = run_training(job, hooks)
    budget = [w for w in caught if issubclass(w.category, BudgetWarning)]
    assert len(budget) == 1 and "will run 2 optimizer steps" in str(budget[0].message)
    assert seen_at_first_epoch[0] >= 1  # already there when the first epoch reported
    assert metrics["steps"] == 2 and metrics["val_images"] == 20 and 0 <= metrics["val_acc"] <= 1
    hist = pd.read_csv(tmp_path / "teacher" / "history.csv")
    assert "val_acc" in hist.columns


def test_if_better_keeps_the_teacher_when_the_student_is_worse(fmnist_folder, tmp_path, ray_session):
    """A 1-step student (about chance) does not teach generation 2; status, metrics.json and the report say
    which model taught each generation and why."""
    from click.testing import CliRunner

    from bench.small import example_config
    from noisystudent.cli import main
    from pipelines.loop import run_all, status_rows
    from pipelines.report import build_report
    from pipelines.state import RunDir

    cfg = example_config(fmnist_folder, {
        "data.image_size": 16, "teacher.name": "resnet8", "teacher_train.min_steps": 60, "teacher_train.epochs": 2,
        "teacher_train.batch_size": 32, "student.ladder": [{"name": "resnet8"}],
        "student.train.min_steps": 0, "student.train.total_steps": 1, "student.train.epochs": 1,
        "student.train.lr": 0.0001, "student.train.warn_below_steps": 0, "pseudo_labels.num_actors": 1,
        "pseudo_labels.threshold": 0.0, "ray.workers": 0})
    run_dir = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_all(cfg, run_dir, generations=1, progress=False, tracking=None)
    run = RunDir(run_dir)
    rec = run.state()["promotions"]["1"]
    assert rec["student_val_acc"] < rec["teacher_val_acc"], rec  # the teacher trained 60 steps, the student 1
    assert rec["promoted"] == "teacher" and rec["signal"] == "validation" and rec["val_images"] == 20
    # the default unless_worse refuses it for being more than promote_margin below, whatever p says on 20
    # images, and records the paired comparison it rested on
    assert rec["policy"] == "unless_worse" and rec["margin"] == 0.05, rec
    assert rec["teacher_val_acc"] - rec["student_val_acc"] > 0.05, rec
    assert rec["teacher_only"] > rec["student_only"] and 0 < rec["p_value"] < 1, rec
    assert "only the teacher got right" in rec["reason"] and "promote_margin" in rec["reason"]
    assert run.teacher_of(2) == run_dir / "gen-0" / "teacher" / "model.pt"
    assert (run_dir / "gen-1" / "student" / "model.pt").is_file()  # kept and reported
    assert any(issubclass(w.category, PromotionWarning) for w in caught)
    gm = json.loads((run_dir / "gen-1" / "metrics.json").read_text())
    assert gm["taught_by"] == "gen-0/teacher" and gm["promoted"] == "teacher" and "validation images" in gm["promotion_reason"]
    assert gm["val_acc"] == rec["student_val_acc"] and gm["teacher_val_acc"] == rec["teacher_val_acc"]
    rows = status_rows(run)
    assert rows[1]["taught_by"] == "gen-0/teacher" and rows[1]["promoted"] == "teacher"
    out = CliRunner().invoke(main, ["status", str(run_dir)]).output
    assert "gen 1 promotion: student" in out and "on 20 validation images" in out
    page = build_report(run_dir, with_data=False).read_text()
    assert "Promotion decisions" in page and "validation, 20 images" in page
    # generation 2 would be labeled by the teacher, and its metrics say so
    from pipelines import steps

    assert steps.teacher_checkpoint(run, 2) == run_dir / "gen-0" / "teacher" / "model.pt"
    assert "generation 0 teacher teaches generation 2" in steps.taught_by(run, 2)["taught_by_reason"]


def test_wrn_names_validate():
    """Any wrn_D_K that create_model builds validates (README promises it), as teacher or rung."""
    cfg = config_from_dict({"teacher": {"name": "wrn_22_8"}, "student": {"ladder": [{"name": "wrn_22_8"}, {"name": "wrn_40_4"}]}})
    assert cfg.teacher.name == "wrn_22_8" and cfg.student.ladder[1].name == "wrn_40_4"
    with pytest.raises(ConfigError, match="teacher.name"):
        config_from_dict({"teacher": {"name": "wrn_22_x"}})


# --------------------------------------------------------------------------------------------------
# budgets


def _job(cfg: TrainConfig, labeled=100, pseudo=None, ratio=3.0):
    from types import SimpleNamespace

    from noisystudent.engine import TrainJob

    student = SimpleNamespace(ratio=ratio) if pseudo is not None else None
    pl = None
    if pseudo is not None:
        pl = SimpleNamespace(source=[0] * pseudo, weights=np.ones(pseudo, dtype=np.int64), targets=None)
    return TrainJob(spec=None, model_cfg=None, train_cfg=cfg, labeled=[0] * labeled, out_dir=Path("."), pseudo=pl,
                    student=student, role="student" if pseudo is not None else "teacher")


def test_step_plan_from_each_setting():
    from noisystudent.engine import plan_steps

    # one pass over 100 labeled images at batch 64 is one step: 50 epochs are 50 steps
    p = plan_steps(_job(TrainConfig(epochs=50, batch_size=64)))
    assert (p.total, p.source, p.pass_steps) == (50, "epochs", 1)
    # min_steps lengthens the epochs (rounded up to whole epochs), and leaves a big set's passes alone
    p = plan_steps(_job(TrainConfig(epochs=30, batch_size=64, min_steps=1000)))
    assert p.source == "min_steps" and p.epoch_steps == (34,) * 30
    p = plan_steps(_job(TrainConfig(epochs=30, batch_size=64, min_steps=1000), labeled=64_000))
    assert p.source == "epochs" and p.total == 30_000
    # total_steps: exactly that many whatever the data, split into `epochs` rounds
    p = plan_steps(_job(TrainConfig(epochs=3, total_steps=10, min_steps=1000), labeled=64_000))
    assert p.epoch_steps == (4, 3, 3) and p.source == "total_steps"
    p = plan_steps(_job(TrainConfig(epochs=2, steps_per_epoch=7)))
    assert p.total == 14 and p.source == "steps_per_epoch"
    # a student's pass is its pseudo-labeled images at ratio x batch; DDP workers share it
    p = plan_steps(_job(TrainConfig(epochs=2, batch_size=64), pseudo=1000, ratio=1.0), world_size=2)
    assert p.pass_steps == 7 and "1000 pseudo-labeled images" in p.data and "2 workers" in p.data
    with pytest.raises(ConfigError, match="teacher_train.total_steps"):
        config_from_dict({"teacher_train": {"epochs": 10, "total_steps": 5}})


def test_budget_warning_names_the_number_and_the_settings():
    from noisystudent.engine import budget_warning, plan_steps, warn_budget

    job = _job(TrainConfig(epochs=1, batch_size=64), pseudo=1000, ratio=3.0)
    msg = budget_warning(job, plan_steps(job))
    assert "student of generation 0 will run 5 optimizer steps" in msg
    assert "student.train.warn_below_steps=200" in msg and "student.train.min_steps" in msg
    assert budget_warning(_job(TrainConfig(epochs=1, warn_below_steps=0)), plan_steps(_job(TrainConfig(epochs=1)))) is None
    with pytest.warns(BudgetWarning, match="will run 1 optimizer steps"):
        warn_budget(_job(TrainConfig(epochs=1, batch_size=64)))


# --------------------------------------------------------------------------------------------------
# validation split


def test_validation_split_is_stratified_seeded_and_has_a_floor():
    from noisystudent.data import split_validation

    labels = np.repeat(np.arange(10), 10)
    held = split_validation(labels, 0.1, 2, seed=0)
    assert np.bincount(labels[held]).tolist() == [2] * 10  # 10% is 1 a class; the floor makes it 2
    assert np.array_equal(held, split_validation(labels, 0.1, 2, seed=0))
    assert not np.array_equal(held, split_validation(labels, 0.1, 2, seed=1))
    labels = np.repeat(np.arange(3), 100)
    assert np.bincount(labels[split_validation(labels, 0.2, 2, seed=0)]).tolist() == [20] * 3
    # a class with fewer than 2 x val_min_per_class images: no split at all
    assert split_validation(np.repeat(np.arange(3), 3), 0.1, 2, seed=0) is None
    assert split_validation(labels, 0.0, 2, seed=0) is None


def test_too_few_labels_for_a_split_warn_and_train_on_all(fmnist_folder, tmp_path):
    from noisystudent.data import ValidationWarning, create_data

    base = dict(kind="folder", labeled=fmnist_folder["labeled"], test=fmnist_folder["test"], in_chans=1, mean=[0.3], std=[0.3])
    with pytest.warns(ValidationWarning, match="no validation split.*smallest class has 10"):
        b = create_data(DataConfig(**base, val_min_per_class=6))
    assert b.val is None and len(b.labeled) == 100
    b = create_data(DataConfig(**base, val_fraction=0.0))
    assert b.val is None and len(b.labeled) == 100
    # a val folder is used as given, and the labeled images all train
    b = create_data(DataConfig(**base, val=fmnist_folder["test"]))
    assert len(b.val) == 100 and len(b.labeled) == 100 and b.val.classes == b.classes
    with pytest.raises(ConfigError, match="data.val"):
        config_from_dict({"data": {"kind": "fashion_mnist", "val": "somewhere"}})


# --------------------------------------------------------------------------------------------------
# promotion, noise inheritance, warnings


def test_promotion_decisions():
    from pipelines.promotion import decide, near_chance

    keep = decide("if_better", 1, 0.55, 0.80, 20, "generation 0 teacher")
    assert keep["promoted"] == "teacher" and "0.5500 < generation 0 teacher 0.8000 on 20 validation images" in keep["reason"]
    assert decide("if_better", 1, 0.80, 0.80, 20, "t")["promoted"] == "student"  # a tie goes to the student
    assert decide("always", 1, 0.1, 0.9, 20, "t")["promoted"] == "student"
    blind = decide("if_better", 1, None, None, 0, "t")
    assert blind["promoted"] == "student" and blind["signal"] == "none" and "unchecked" in blind["reason"]
    assert near_chance(0.15, 10) and not near_chance(0.25, 10) and not near_chance(None, 10)


def test_if_better_refuses_only_a_significantly_worse_student():
    """if_better with promote_alpha 0.05: 11 images lost against 6 won is noise and the student teaches; a
    collapsed student (8 lost, none won) is refused; promote_alpha 1 (if_better's own) is the strict rule."""
    from scipy.stats import binomtest

    from pipelines.promotion import decide, mcnemar_p

    for b, c in [(8, 0), (11, 6), (12, 5), (3, 3), (0, 4), (40, 22)]:
        ref = binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert abs(mcnemar_p(b, c) - ref) < 1e-12, (b, c)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(8, 0) == 1 / 256

    noise = decide("if_better", 1, 0.83, 0.88, 100, "generation 0 teacher", discordant=(11, 6), alpha=0.05)
    assert noise["promoted"] == "student" and abs(noise["p_value"] - 0.1662) < 1e-3
    assert "not significantly worse" in noise["reason"] and "11 images only the teacher" in noise["reason"]
    assert (noise["teacher_only"], noise["student_only"], noise["alpha"]) == (11, 6, 0.05)
    collapsed = decide("if_better", 1, 0.05, 0.45, 20, "t", discordant=(8, 0), alpha=0.05)
    assert collapsed["promoted"] == "teacher" and "significantly worse" in collapsed["reason"]
    strict = decide("if_better", 1, 0.83, 0.84, 100, "t", discordant=(6, 5), alpha=1.0)
    assert strict["promoted"] == "teacher" and strict["p_value"] < 1
    # without the per-image comparison (promote_alpha 1 skips it) every student below is refused
    assert decide("if_better", 1, 0.83, 0.84, 100, "t")["promoted"] == "teacher"


def test_rungs_inherit_the_teachers_noise_unless_they_set_it():
    cfg = config_from_dict({"teacher": {"noise": {"hflip": False, "crop_padding": 4, "randaugment_m": 5}},
                            "student": {"ladder": [{"name": "resnet8", "noise": {"randaugment_m": 12}},
                                                   {"name": "resnet8", "noise": {"hflip": True}},
                                                   {"name": "resnet8"}]}})
    a, b, c = (r.noise for r in cfg.student.ladder)
    assert (a.hflip, a.crop_padding, a.randaugment_m) == (False, 4, 12)
    assert (b.hflip, b.crop_padding, b.randaugment_m) == (True, 4, 5)
    assert c == cfg.teacher.noise
    # the default ladder inherits too; a frozen (resolved) config reloads unchanged
    assert config_from_dict({"teacher": {"noise": {"hflip": False}}}).student.ladder[0].noise.hflip is False
    assert config_from_dict(to_dict(cfg)) == cfg
    ex = load_config(ROOT / "configs" / "imagefolder_example.yaml", {"teacher.noise.hflip": False})
    assert not any(r.noise.hflip for r in ex.student.ladder)


def test_selection_warnings():
    from pipelines.steps.labeling import _warn_selection

    df = pd.DataFrame({"confidence": [0.2, 0.9]})
    with pytest.warns(PseudoLabelWarning, match=r"no pseudo-label was kept \(pseudo_labels.threshold=0.95, the most confident of 2 is 0.9000\)"):
        _warn_selection(3, {"rows_selected": 0}, df, ["a", "b"], 0.95)
    with pytest.warns(PseudoLabelWarning, match="no pseudo-label of class\\(es\\) 'b' was kept"):
        _warn_selection(3, {"rows_selected": 1, "empty_classes": [1]}, df, ["a", "b"], 0.5)


def test_frozen_runs_without_the_new_fields_keep_their_behaviour(tmp_path):
    """A config.yaml frozen before validation and promotion existed loads as it ran: no split, always promote."""
    import yaml

    from pipelines.state import RunDir

    run = RunDir(tmp_path / "old")
    cfg = run.freeze_config(config_from_dict({"name": "old"}))
    raw = yaml.safe_load(run.config_path.read_text())
    del raw["data"]["val_fraction"], raw["student"]["promote"]
    run.config_path.write_text(yaml.safe_dump(raw))
    old = run.load_config()
    assert old.data.val_fraction == 0.0 and old.student.promote == "always"
    again = run.freeze_config(config_from_dict({"name": "old"}))  # same file as first given: accepted
    assert again.data.val_fraction == 0.0 and again.student.promote == "always"
    assert cfg.data.val_fraction == 0.1


def test_relative_folder_paths_work_in_other_working_directories(fmnist_folder, tmp_path, monkeypatch):
    """The example says paths are relative to where the command runs; Ray workers run elsewhere, so the
    sources keep absolute file paths (ids stay relative to the folder)."""
    import os
    import pickle

    from noisystudent.data import create_data

    root = Path(fmnist_folder["labeled"]).parent
    monkeypatch.chdir(root.parent)
    rel = {k: os.path.relpath(v) for k, v in fmnist_folder.items()}
    b = create_data(DataConfig(kind="folder", **rel, in_chans=1, mean=[0.3], std=[0.3]))
    monkeypatch.chdir(tmp_path)
    for src in (b.labeled, b.val, b.unlabeled, b.test):
        src = pickle.loads(pickle.dumps(src))
        assert src.load(0).shape == (28, 28, 1) and not os.path.isabs(src.image_id(0))
