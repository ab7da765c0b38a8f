"""The default promotion rule (``unless_worse``) on the cases it was designed from (issue 24).

Each case is a measured one: the figures a real run recorded, fed to the pure decision function."""

from __future__ import annotations

import pytest

from noisystudent.errors import ConfigError
from pipelines.config import config_from_dict
from pipelines.promotion import decide, mcnemar_p, resolve_alpha


def test_the_default_policy_is_unless_worse_at_alpha_005_and_margin_005():
    cfg = config_from_dict({})
    assert cfg.student.promote == "unless_worse" and cfg.student.promote_alpha is None
    assert cfg.student.promote_margin == 0.05
    assert resolve_alpha("unless_worse", None) == 0.05 and resolve_alpha("if_better", None) == 1.0
    assert resolve_alpha("if_better", 0.2) == 0.2
    with pytest.raises(ConfigError, match="student.promote_margin"):
        config_from_dict({"student": {"promote_margin": 2}})


@pytest.mark.parametrize("student, discordant", [(0.82, (3, 1)), (0.83, (2, 1))])
def test_make_run_students_one_or_two_images_below_are_promoted(student, discordant):
    """make run (before this rule): students 1.8 points better on test, 1-2 points below the teacher's 0.84
    on its 100 validation images; the strict rule refused both."""
    rec = decide("unless_worse", 1, student, 0.84, 100, "generation 0 teacher", discordant=discordant)
    assert rec["promoted"] == "student", rec
    assert rec["p_value"] == pytest.approx(mcnemar_p(*discordant)) and rec["p_value"] > 0.05
    assert "not significantly worse" in rec["reason"]
    # the strict rule refuses the same student
    assert decide("if_better", 1, student, 0.84, 100, "t", discordant=discordant)["promoted"] == "teacher"


def test_a_collapsed_student_on_a_small_split_is_refused_by_the_margin():
    """A 1-step student on a 20-image split: 8 images lost against 3 won is p = 0.11, not significant on so
    few images, but 25 points below: the margin refuses it."""
    rec = decide("unless_worse", 1, 0.20, 0.45, 20, "generation 0 teacher", discordant=(8, 3))
    assert mcnemar_p(8, 3) > 0.05
    assert rec["promoted"] == "teacher" and "promote_margin 0.05" in rec["reason"], rec
    assert (rec["teacher_only"], rec["student_only"]) == (8, 3)


def test_one_image_on_twenty_never_decides_but_a_significant_loss_does():
    # one image of 20 is exactly the margin: not more than it, and not significant
    assert decide("unless_worse", 1, 0.80, 0.85, 20, "t", discordant=(1, 0))["promoted"] == "student"
    # within the margin but shown worse on many images (60 lost against 20 won on 2,000)
    rec = decide("unless_worse", 1, 0.83, 0.85, 2000, "t", discordant=(60, 20))
    assert rec["promoted"] == "teacher" and "significantly worse" in rec["reason"], rec
    # a student at or above its teacher is promoted without a test
    assert decide("unless_worse", 1, 0.85, 0.85, 100, "t")["promoted"] == "student"


# --------------------------------------------------------------------------------------------------
# a refused generation does not repeat identical work


def _refused_run(tmp_path, ladder):
    from pipelines.state import RunDir

    cfg = config_from_dict({"student": {"ladder": ladder}})
    run = RunDir(tmp_path / "run")
    run.freeze_config(cfg)
    (run.teacher_dir() ).mkdir(parents=True)
    (run.teacher_dir() / "model.pt").write_bytes(b"teacher")
    run.mark_done("gen-0/teacher", 1.0)
    labels = run.labels_dir(1)
    labels.mkdir(parents=True)
    (labels / "part-00000.parquet").write_bytes(b"PAR1 rows PAR1")
    (labels / "summary.json").write_text('{"rows": 7, "rejected": 1}')
    (labels / "_SUCCESS").write_text("")
    for step in ("label", "select", "student", "evaluate"):
        run.mark_done(f"gen-1/{step}", 1.0, teachers=[str(run.teacher_dir() / "model.pt")] if step == "label" else None)
    run.promote(1, run.teacher_dir() / "model.pt", {"promoted": "teacher"})  # the student was refused
    run.mark_done("gen-1/promote", 0.0)
    return cfg, run


def test_a_refused_generation_with_the_same_rung_stops_the_loop(tmp_path):
    from pipelines.repeat import repeated_generation, same_teacher_generation, stop_message

    rung = {"name": "resnet20", "drop_rate": 0.3}
    cfg, run = _refused_run(tmp_path, [rung, rung])
    assert same_teacher_generation(run, 2) == 1
    assert repeated_generation(run, cfg, 2) == 1
    msg = stop_message(run, cfg, 2, 1)
    assert "generation 2 would repeat generation 1" in msg and "gen-0/teacher" in msg and "student.ladder" in msg


def test_a_refused_generation_with_another_rung_reuses_the_labels(tmp_path):
    from pipelines.repeat import repeated_generation, reuse_labels

    cfg, run = _refused_run(tmp_path, [{"name": "resnet20"}, {"name": "resnet26"}])
    assert repeated_generation(run, cfg, 2) is None  # another model: worth training
    assert reuse_labels(run, 2, 1)
    got = run.labels_dir(2)
    assert sorted(p.name for p in got.iterdir()) == ["_SUCCESS", "part-00000.parquet", "summary.json"]
    assert (got / "part-00000.parquet").read_bytes() == b"PAR1 rows PAR1"
    info = run.step_info("gen-2/label")
    assert info["reused_from"] == "gen-1/label" and info["rows"] == 7
    assert not reuse_labels(run, 2, 1)  # done already: nothing to do
    assert not (run.labels_dir(2).parent / "labels.link-tmp").exists()
