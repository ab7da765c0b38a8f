"""Cross-modal runs end to end: config errors (exit 2 naming the field), `distill`, and the loop whose
labeling reads the teacher's modality and whose student trains on its own from the Parquet labels."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from noisystudent.checkpoint import load_checkpoint
from noisystudent.cli import main
from pipelines.config import config_from_dict
from pseudo_labels import read_labels

from test_crossmodal_distill import SIDE, write_pairs


def experiment(root, **over) -> dict:
    cfg = {
        "data": {"kind": "paired", "val_fraction": 0.0,
                 "labeled": write_pairs(root, "lab", 40, 0), "unlabeled": write_pairs(root, "unl", 120, 1, labels=False),
                 "test": write_pairs(root, "test", 60, 2),
                 "modalities": {"img": {"kind": "image", "channels": 1, "size": SIDE},
                                "sig": {"kind": "signal", "channels": 2, "size": SIDE,
                                        "noise": {"randaugment_n": 0, "hflip": False, "crop_padding": 1}}}},
        "teacher": {"name": "resnet8", "modality": "img", "noise": {"randaugment_n": 0, "hflip": False}},
        "teacher_train": {"epochs": 2, "batch_size": 20, "lr": 0.05, "steps_per_epoch": 15, "warn_below_steps": 0},
        "student": {"modality": "sig", "generations": 1, "ladder": [{"name": "signal_cnn_s"}], "ratio": 2,
                    "promote": "always",
                    "train": {"epochs": 2, "batch_size": 20, "lr": 0.05, "steps_per_epoch": 15, "warn_below_steps": 0}},
        "distill": {"method": {"name": "hinton", "alpha": 1.0, "temperature": 2.0}, "unlabeled_ratio": 2.0},
        "pseudo_labels": {"per_class": None},
        "ray": {"workers": 0},
        "device": "cpu",
    }
    for dotted, value in over.items():
        node = cfg
        *head, last = dotted.split(".")
        for part in head:
            node = node[part]
        node[last] = value
    return cfg


@pytest.mark.parametrize("field,value,needle", [
    ("teacher.modality", "rbg", "config field 'teacher.modality': modality 'rbg' is not declared in data.modalities"),
    ("student.modality", None, "config field 'student.modality': is required with paired data"),
    ("data.kind", "manifest", "config field 'data.modalities': applies to data.kind paired only"),
])
def test_bad_modality_settings_exit_2_naming_the_field(tmp_path, field, value, needle):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(experiment(tmp_path, **{field: value})))
    res = CliRunner().invoke(main, ["distill", str(path), "--run-dir", str(tmp_path / "r"), "--teacher", "x.pt"])
    assert res.exit_code == 2 and needle in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


@pytest.mark.slow
def test_distill_and_the_loop_teach_the_signal_student_from_the_image_teacher(tmp_path):
    from pipelines import steps
    from pipelines.loop import run_all
    from pipelines.state import RunDir

    cfg = config_from_dict(experiment(tmp_path))
    run = RunDir(tmp_path / "loop")
    run_all(cfg, run.root, progress=False)
    teacher = load_checkpoint(run.teacher_dir())
    assert teacher.spec.modality == "img" and teacher.metrics["test_acc"] > 0.9
    labels = read_labels(run.labels_dir(1))
    assert sorted(labels["image_id"]) == sorted(f"unl{k}" for k in range(120))  # labeled on the image modality
    student = load_checkpoint(run.student_dir(1))
    assert student.spec.modality == "sig" and student.spec.name == "signal_cnn_s"
    assert student.metrics["test_acc"] > 0.8 and student.metrics["pseudo_labeled_images"] == 120

    cfg = config_from_dict(experiment(tmp_path, **{"distill.teacher": str(run.teacher_dir() / "model.pt")}))
    metrics = steps.distill(RunDir(tmp_path / "distill"), cfg, progress=False)
    assert metrics["test_acc"] > 0.8 and metrics["teacher_test_acc"] > 0.9, metrics


def test_teacher_checkpoint_on_the_wrong_channels_exits_2(tmp_path):
    from noisystudent.checkpoint import save_checkpoint
    from noisystudent.engine import spec_for

    cfg = config_from_dict(experiment(tmp_path))
    spec = spec_for(cfg.teacher, cfg.data, ["bottom", "top"], "img")
    spec.in_chans = 3  # an RGB teacher for a 1-channel modality
    save_checkpoint(tmp_path / "t.pt", spec.build(inference=False), spec)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(experiment(tmp_path)))
    res = CliRunner().invoke(main, ["distill", str(path), "--run-dir", str(tmp_path / "r"), "--teacher", str(tmp_path / "t.pt")])
    assert res.exit_code == 2 and "config field 'teacher.modality'" in res.output and "3-channel" in res.output, res.output


@pytest.mark.slow  # `make test-all`: the benchmark's quick arms end to end (a few minutes on 2 cores)
def test_bench_crossmodal_quick_runs_every_arm_and_writes_its_table(tmp_path, require_fmnist):
    """`python -m bench.crossmodal --quick`: real Fashion-MNIST pairs, the image teacher, the loop and both
    distill arms; the JSON has one row per arm with accuracies that are real (above chance), and the figure."""
    from bench.crossmodal import ARMS, main as bench_main

    stem = tmp_path / "out" / "bench-crossmodal-quick"
    result = bench_main(["--quick", "--quiet", "--threads", "1", "--device", "cpu",
                         "--run-dir", str(tmp_path / "runs"), "--out", str(stem)])
    arms = [row["arm"] for row in result["rows"]]
    assert arms == ["teacher (image)", *ARMS]
    assert all(0.3 < row["acc"] <= 1.0 for row in result["rows"]), result["rows"]
    assert stem.with_suffix(".json").is_file() and stem.with_suffix(".png").stat().st_size > 10_000
    run = result["runs"][0]
    assert 0.3 < run["pseudo_label_acc"] <= 1.0 and 0.0 <= run["distill_fidelity"] <= 1.0
