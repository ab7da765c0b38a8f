"""Weighted teacher ensembles in labeling: the weighted mixture of probabilities, recorded in the shards'
metadata, the summary and ``labels inspect``; the weights rule and its errors; the CLI's ``--weights``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_labeling import RUN, _bare_probs, _readable, world  # noqa: F401  (module-scoped teachers and images)

from noisystudent.cli import main
from noisystudent.distill.ensemble import normalize_weights
from noisystudent.errors import ConfigError, UserError
from pseudo_labels import label_images, read_labels, read_metadata


def test_weights_are_normalised_and_checked():
    assert normalize_weights(None, 4, "w") == [0.25] * 4
    assert normalize_weights([7, 3], 2, "w") == pytest.approx([0.7, 0.3])
    for bad, words in (([1.0], "one weight per teacher"), ([1, -1], ">= 0"), ([0, 0], "not all be 0"),
                       ([float("nan"), 1], "finite")):
        with pytest.raises(ConfigError, match=words) as err:
            normalize_weights(bad, 2, "pseudo_labels.teachers")
        assert err.value.field == "pseudo_labels.teachers"


def test_weighted_ensemble_is_the_weighted_mixture_and_is_recorded(world, ray_session):  # noqa: F811
    """Two teachers at temperature 2, top-2 stored: each row is the weighted mixture of the teachers'
    tempered probabilities (as a bare torch forward computes them), both teachers named."""
    source = world["source"].subset(range(0, 93, 3))  # 31 images, one of them corrupt
    out = world["tmp"] / "weighted"
    summary = label_images(source, [world["t1"], world["t2"]], out, temperature=2.0, topk=2, weights=[0.7, 0.3], **RUN)
    idx = _readable(source)
    p1, p2 = (_bare_probs([world[t]], source, idx, temperature=2.0) for t in ("t1", "t2"))
    probs = 0.7 * p1 + 0.3 * p2
    df = read_labels(out).set_index("image_id").loc[[source.image_id(i) for i in idx]]
    np.testing.assert_array_equal(df["label"].to_numpy(), probs.argmax(1))
    np.testing.assert_allclose(df["confidence"].to_numpy(), probs.max(1), rtol=1e-5, atol=1e-6)
    top2 = np.sort(probs, axis=1)[:, ::-1][:, :2]
    np.testing.assert_allclose(np.stack(df["topk_probs"].to_numpy()), top2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(probs, (p1 + p2) / 2), "the weights must matter on these teachers"
    assert (df["teacher"] == "+".join(world["ids"])).all()
    meta = read_metadata(out)
    assert meta.teachers == world["ids"] and meta.temperature == 2.0
    assert meta.teacher_weights == pytest.approx([0.7, 0.3])
    assert summary["teacher_weights"] == pytest.approx([0.7, 0.3])
    assert summary["rows"] + summary["rejected"] == len(source)
    res = CliRunner().invoke(main, ["labels", "inspect", str(out)])
    assert res.exit_code == 0, res.output
    assert f"{world['ids'][0]} (weight 0.7)" in res.output and f"{world['ids'][1]} (weight 0.3)" in res.output
    # a finished folder of other weights is another job: refused, not silently mixed
    with pytest.raises(UserError, match="teacher_weights|use force"):
        label_images(source, [world["t1"], world["t2"]], out, temperature=2.0, weights=[0.5, 0.5], **RUN)


def test_cli_weights_errors_exit_2(tmp_path):
    from pipelines.config import config_from_dict
    from pipelines.state import RunDir

    RunDir(tmp_path / "run").freeze_config(config_from_dict({}))
    for argv, words in ((["--weights", "0.7,0.3"], "--weights"), (["--weights", "a,b", "--teacher", "x"], "--weights")):
        res = CliRunner().invoke(main, ["label", str(tmp_path / "run"), "-g", "1", *argv])
        assert res.exit_code == 2 and words in res.output, res.output


def test_config_teachers_label_every_generation_with_teacher_standing_for_the_promoted_model(tmp_path):
    from pipelines.config import config_from_dict
    from pipelines.state import RunDir
    from pipelines.steps.labeling import _label_teachers

    run = RunDir(tmp_path / "run")
    cfg = run.freeze_config(config_from_dict({"pseudo_labels": {"teachers": [{"path": "teacher", "weight": 3},
                                                                                {"path": "other/model.pt", "weight": 1}]}}))
    promoted = run.teacher_of(1)
    promoted.parent.mkdir(parents=True)
    promoted.write_bytes(b"")  # _label_teachers resolves paths; label_images loads and checks them
    ckpts, weights = _label_teachers(run, cfg, 1, None, None)
    assert ckpts == [promoted, Path("other/model.pt")] and weights == pytest.approx([0.75, 0.25])
    # --teacher on the command line wins over the config; --weights alone is an error naming it
    assert _label_teachers(run, cfg, 1, ["a", "b"], [1, 1]) == ([Path("a"), Path("b")], [1, 1])
    with pytest.raises(ConfigError, match="--weights"):
        _label_teachers(run, cfg, 1, None, [1, 1])
    with pytest.raises(ConfigError, match="--weights.*one weight per teacher"):
        _label_teachers(run, cfg, 1, ["a", "b"], [1])
