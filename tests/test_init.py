"""A student initialised from a checkpoint (``init: teacher`` or a path on a ladder rung)."""

from __future__ import annotations

import pytest
import torch

from noisystudent.checkpoint import save_checkpoint
from noisystudent.config import DataConfig, ModelConfig
from noisystudent.engine import spec_for
from noisystudent.engine.setup import init_weights
from noisystudent.errors import ConfigError, UserError
from pipelines.config import config_from_dict

CLASSES = [str(i) for i in range(10)]


def _ckpt(tmp_path, name, drop=0.0):
    spec = spec_for(ModelConfig(name=name, drop_rate=drop), DataConfig(), CLASSES)
    model = spec.build(inference=False)
    save_checkpoint(tmp_path / name / "model.pt", model, spec)
    return tmp_path / name / "model.pt", model


def test_init_copies_every_weight_and_allows_other_noise(tmp_path):
    path, teacher = _ckpt(tmp_path, "resnet8")
    spec = spec_for(ModelConfig(name="resnet8", drop_rate=0.3, drop_path_rate=0.1), DataConfig(), CLASSES)
    student = spec.build(inference=False)
    init_weights(student, str(path), spec)
    for (k, a), b in zip(teacher.state_dict().items(), student.state_dict().values()):
        assert torch.equal(a, b), k


def test_init_refuses_another_architecture(tmp_path):
    path, _ = _ckpt(tmp_path, "resnet8")
    spec = spec_for(ModelConfig(name="resnet14"), DataConfig(), CLASSES)
    with pytest.raises(UserError, match="init needs the same architecture"):
        init_weights(spec.build(inference=False), str(path), spec)


def test_init_teacher_needs_the_teaching_models_architecture():
    ok = config_from_dict({"teacher": {"name": "resnet14"},
                           "student": {"ladder": [{"name": "resnet14", "init": "teacher"},
                                                  {"name": "resnet14", "init": "teacher"}]}})
    assert [r.init for r in ok.student.ladder] == ["teacher", "teacher"]
    with pytest.raises(ConfigError, match=r"student.ladder\[1\].init"):
        config_from_dict({"teacher": {"name": "resnet14"},
                          "student": {"ladder": [{"name": "resnet14"}, {"name": "resnet20", "init": "teacher"}]}})
    with pytest.raises(ConfigError, match="teacher.init"):
        config_from_dict({"teacher": {"name": "resnet14", "init": "teacher"}})
