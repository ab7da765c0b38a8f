"""Config validation: wrong key, type or range names the field; the CLI exits 2 with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from noisystudent.cli import main
from noisystudent.config import apply_overrides
from noisystudent.errors import ConfigError, UserError
from pipelines.config import ExperimentConfig, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def _experiment_configs(root: Path) -> list[Path]:
    """Shipped experiment configs (study files, which name a `base` config and a grid, are tested in test_study)."""
    import yaml as _yaml

    return sorted(p for p in (root / "configs").glob("*.yaml") if "base" not in (_yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("name", [p.name for p in _experiment_configs(ROOT)])
def test_shipped_configs_validate_and_every_model_resolves(name):
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.student.ladder, "a ladder needs at least one rung"


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"teacher_train": {"epochz": 3}}, "teacher_train.epochz", "unknown key"),
        ({"teacher_train": {"epochs": "ten"}}, "teacher_train.epochs", "integer"),
        ({"teacher_train": {"epochs": 0}}, "teacher_train.epochs", ">= 1"),
        ({"teacher_train": {"lr": 0}}, "teacher_train.lr", "> 0"),
        ({"teacher_train": {"optimizer": "lion"}}, "teacher_train.optimizer", "one of sgd, adamw"),
        ({"student": {"ladder": [{"name": "resnet20", "drop_path_rate": 1.5}]}}, "student.ladder[0].drop_path_rate", "< 1"),
        ({"student": {"ladder": [{"name": "resnet999"}]}}, "student.ladder[0].name", "unknown model"),
        ({"student": {"loss": "kl"}}, "student.loss", "one of soft, hard, hinton"),
        ({"pseudo_labels": {"threshold": 2}}, "pseudo_labels.threshold", "<= 1"),
        ({"data": {"in_chans": 3}}, "data.mean", "needs 3 value"),
        ({"data": {"kind": "folder"}}, "data.labeled", "required"),
        ({"teacher_train": {"label_smoothing": True}}, "teacher_train.label_smoothing", "number"),
        ({"pseudo_labels": {"soft": "yes"}}, "pseudo_labels.soft", "true or false"),
    ],
)
def test_errors_name_the_field(data, field, words):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.field == field
    assert field in str(info.value) and words in str(info.value)


def test_overrides_win_over_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"teacher_train": {"epochs": 7}, "student": {"generations": 2}}))
    cfg = load_config(p, {"teacher_train.epochs": 2})
    assert cfg.teacher_train.epochs == 2 and cfg.student.generations == 2
    # null clears an optional field and is refused, naming the field, where null is not allowed
    assert load_config(p, {"data.unlabeled_limit": None}).data.unlabeled_limit is None
    with pytest.raises(ConfigError, match="student.generations"):
        load_config(p, {"student.generations": None})
    assert apply_overrides({"a": {"b": 1}}, {"a.c": 2}) == {"a": {"b": 1, "c": 2}}
    assert apply_overrides({"a": {"b": 1}}, {"a.b": None}) == {"a": {"b": None}}


def test_ladder_repeats_last_rung():
    cfg = config_from_dict({"student": {"ladder": [{"name": "resnet14"}, {"name": "resnet20"}]}})
    assert [cfg.student_model(g).name for g in (1, 2, 3, 4)] == ["resnet14", "resnet20", "resnet20", "resnet20"]


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "content, flag, needle",
    [
        ({"teacher_train": {"epochs": -1}}, [], "teacher_train.epochs"),
        ({"bogus": 1}, [], "'bogus'"),
        ({}, ["--set", "teacher_train.batch_size=zero"], "teacher_train.batch_size"),
        ({}, ["--set", "nonsense"], "--set"),
    ],
)
def test_cli_exits_2_with_one_line(tmp_path, content, flag, needle):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(content))
    res = CliRunner().invoke(main, ["teacher", str(p), "--run-dir", str(tmp_path / "run"), *flag])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    err_lines = [line for line in res.output.strip().splitlines() if line.startswith("error:")]
    if needle != "--set":
        assert len(err_lines) == 1


@pytest.mark.parametrize("path", _experiment_configs(Path(__file__).parent.parent), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    """Every config under configs/ is valid, and its ladder only grows (the student is equal or larger);
    a distillation config's student is smaller than its teacher, and so is each rung of a teacher-assistant
    ladder (a loop whose online-teacher students shrink and are always promoted)."""
    from noisystudent.models import create_model

    cfg = load_config(path)
    if cfg.student.generations == 0:  # a distillation config (`noisystudent distill`): the student compresses
        def params(name):
            return sum(p.numel() for p in create_model(name, num_classes=10, in_chans=cfg.data.in_chans).parameters())

        assert params(cfg.student.ladder[0].name) < params(cfg.teacher.name)
        return
    sizes = [sum(p.numel() for p in create_model(cfg.student_model(g).name, num_classes=10, in_chans=cfg.data.in_chans).parameters())
             for g in range(1, cfg.student.generations + 1)]
    teacher = sum(p.numel() for p in create_model(cfg.teacher.name, num_classes=10, in_chans=cfg.data.in_chans).parameters())
    if "teacher_assistant" in path.name:
        from noisystudent.distill import get_method

        assert [teacher] + sizes == sorted([teacher] + sizes, reverse=True) and cfg.student.promote == "always"
        assert get_method(cfg.student.method["name"]).teacher_for(cfg.student.method) == "online"
        return
    assert teacher <= sizes[0] and sizes == sorted(sizes), (cfg.teacher.name, sizes)


@pytest.mark.parametrize("where", ["teacher_train", "student.train"])
def test_train_amp_is_validated(where):
    """``train.amp`` takes auto, bf16, fp16 or off (auto by default); anything else names the field."""
    assert config_from_dict({}).teacher_train.amp == "auto"
    for mode in ("auto", "bf16", "fp16", "off"):
        cfg = config_from_dict(apply_overrides({}, {f"{where}.amp": mode}))
        train = cfg.teacher_train if where == "teacher_train" else cfg.student.train
        assert train.amp == mode
    with pytest.raises(ConfigError) as info:
        config_from_dict(apply_overrides({}, {f"{where}.amp": "bogus"}))
    assert info.value.field == f"{where}.amp"
    assert "one of auto, bf16, fp16, off" in str(info.value)


def test_ray_torch_threads_is_validated_and_a_runtime_field(tmp_path):
    """``ray.torch_threads``: null by default (Ray's OMP_NUM_THREADS, the worker's CPUs), below 1 names the field; a run
    may change it (like every ``ray`` field) without being refused as a different config."""
    from pipelines.state import RunDir

    assert config_from_dict({}).ray.torch_threads is None
    assert config_from_dict({"ray": {"torch_threads": 1}}).ray.torch_threads == 1
    assert config_from_dict({"ray": {"torch_threads": 4}}).ray.torch_threads == 4
    for bad, words in ((0, ">= 1"), (1.5, "integer"), ("two", "integer")):
        with pytest.raises(ConfigError) as info:
            config_from_dict({"ray": {"torch_threads": bad}})
        assert info.value.field == "ray.torch_threads" and words in str(info.value)
    run = RunDir(tmp_path / "run")
    run.freeze_config(config_from_dict({}))
    assert run.freeze_config(config_from_dict({"ray": {"torch_threads": 2}})).ray.torch_threads == 2


@pytest.mark.parametrize("path", sorted(set((ROOT / "configs").glob("*.yaml")) - set(_experiment_configs(ROOT))),
                         ids=lambda p: p.name)
def test_shipped_study_files_load(path):
    """Every shipped study file expands into trials whose configs all validate."""
    from pipelines.study import load_study

    study = load_study(path)
    assert len(study.trials) >= 2 and study.grid


def test_errors_with_fields_survive_pickling():
    """A config error raised on a Ray worker is pickled back to the driver: it must come back as itself, with
    its field and its one-line message (an exception unpickles as ``cls(*args)``)."""
    import pickle

    from noisystudent.errors import ImageDecodeError

    err = pickle.loads(pickle.dumps(ConfigError("student.method.tap", "name the one it taps")))
    assert type(err) is ConfigError and err.field == "student.method.tap"
    assert str(err) == "config field 'student.method.tap': name the one it taps"
    bad = pickle.loads(pickle.dumps(ImageDecodeError("a/b.png", "truncated")))
    assert (bad.image_id, bad.reason, str(bad)) == ("a/b.png", "truncated", "a/b.png: truncated")
