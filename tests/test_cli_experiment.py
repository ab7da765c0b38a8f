"""The one way commands load an experiment with flags: every flag is validated as the config field it sets."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from noisystudent.cli import main
from noisystudent.cli.experiment import overrides, run_experiment
from pipelines.config import ExperimentConfig
from pipelines.state import RunDir


@pytest.fixture
def run_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    run.freeze_config(ExperimentConfig(name="flags"))
    return run


def test_flags_become_overrides_and_win_over_sets():
    got = overrides(("ray.workers=3", "seed=5"), {"student.generations": None}, ray_address="auto", workers=2,
                    gpus_per_worker=None)
    assert got == {"ray.workers": 2, "seed": 5, "ray.address": "auto"}
    with pytest.raises(TypeError):
        overrides(num_gpus=1)



def test_sets_below_a_mapping_flag_refine_it():
    """``--method hinton --set distill.method.alpha=0.5`` trains hinton at alpha 0.5: the flag sets the whole
    method mapping, and the --set item below it used to be wiped out by it (silently ignored)."""
    from pipelines.config import load_config

    got = overrides(("distill.method.alpha=0.5", "distill.method.name=fsp", "seed=3"), {"distill.method": {"name": "hinton"}})
    assert list(got) == ["seed", "distill.method", "distill.method.alpha"]
    assert got["distill.method"] == {"name": "hinton"} and got["distill.method.alpha"] == 0.5  # the flag's name wins
    cfg = load_config("configs/distill_fashion_mnist.yaml", got)
    assert cfg.distill.method == {"name": "hinton", "temperature": 4.0, "alpha": 0.5, "source": "online"}

def test_run_folder_flags_are_validated(run_folder):
    cfg = run_experiment(run_folder, ray_address="ray://head:10001", workers=0)
    assert cfg.ray.address == "ray://head:10001" and cfg.ray.workers == 0
    assert run_experiment(run_folder) == run_folder.load_config()


@pytest.mark.parametrize("argv, field", [
    (["student", "{run}", "-g", "1", "--workers", "5000"], "ray.workers"),
    (["student", "{run}", "-g", "1", "--gpus-per-worker", "9"], "ray.gpus_per_worker"),
    (["teacher", "{cfg}", "--run-dir", "{tmp}/t", "--workers", "5000"], "ray.workers"),
    (["run", "{cfg}", "--run-dir", "{tmp}/r", "--gpus-per-worker", "9"], "ray.gpus_per_worker"),
])
def test_out_of_range_ray_flag_exits_2_naming_the_field(run_folder, tmp_path, argv, field):
    """``student`` once set the Ray flags on the loaded config unchecked; now every command validates them."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: flags\n")
    argv = [a.format(run=run_folder.root, cfg=cfg, tmp=tmp_path) for a in argv]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2, res.output
    assert field in res.output and len(res.output.strip().splitlines()) == 1
