"""Studies: data conditions (label noise, class imbalance) and Ray Tune studies with resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from noisystudent.data import create_data
from noisystudent.errors import ConfigError
from noisystudent.data.conditions import FASHION_MNIST_ASYMMETRIC, flip_labels, long_tail_counts, long_tail_keep
from pipelines.config import config_from_dict


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6, 1.0])
def test_flip_labels_exact_share_always_changes_class(kind, rate):
    labels = np.repeat(np.arange(10), 37)
    mapping = np.asarray([FASHION_MNIST_ASYMMETRIC[c] for c in range(10)])
    noisy, pos = flip_labels(labels, rate, kind, 10, seed=3, mapping=mapping)
    assert len(pos) == round(rate * len(labels)) == int((noisy != labels).sum())
    if kind == "asymmetric":
        assert (noisy[pos] == mapping[labels[pos]]).all()
    again, pos2 = flip_labels(labels, rate, kind, 10, seed=3, mapping=mapping)
    assert (again == noisy).all() and (pos2 == pos).all()


def test_long_tail_counts_follow_the_profile():
    counts = long_tail_counts(np.full(10, 100), ratio=10)
    assert counts[0] == 100 and counts[-1] == 10
    assert (np.diff(counts) <= 0).all()
    assert np.allclose(counts, np.round(100 * 10.0 ** (-np.arange(10) / 9)))
    labels = np.repeat(np.arange(10), 100)
    keep = long_tail_keep(labels, 10, 10, seed=0)
    assert (np.bincount(labels[keep], minlength=10) == counts).all()


def _fm_cfg(root, **data):
    return config_from_dict({"data": {"root": str(root), "labels_per_class": 40, "test_limit": 200, "unlabeled_limit": 50,
                                      **data}})


def test_conditions_on_training_labels_only(require_fmnist):
    clean = create_data(_fm_cfg(require_fmnist).data)
    cfg = _fm_cfg(require_fmnist, label_noise={"rate": 0.4, "kind": "asymmetric", "seed": 1},
                  imbalance={"ratio": 4, "seed": 2}).data
    noisy = create_data(cfg)
    n_train = 36  # 40 a class, 10 % (4) held out for validation
    counts = long_tail_counts(np.full(10, n_train), 4)
    rows = noisy.conditions["rows"]
    assert (np.bincount(rows["label_clean"], minlength=10) == counts).all()
    assert len(noisy.labeled) == counts.sum()
    flipped = np.asarray(rows["flipped"])
    assert flipped.sum() == round(0.4 * counts.sum())
    assert ((np.asarray(rows["label"]) != np.asarray(rows["label_clean"])) == flipped).all()
    # test and validation untouched: same images, same labels
    assert clean.test.image_ids() == noisy.test.image_ids() and (clean.test.labels == noisy.test.labels).all()
    assert clean.val.image_ids() == noisy.val.image_ids() and (clean.val.labels == noisy.val.labels).all()
    # the clean labels are the true ones of the kept images
    truth = dict(zip(clean.labeled.image_ids(), clean.labeled.labels.tolist()))
    assert [truth[i] for i in rows["image_id"]] == rows["label_clean"]
    assert clean.conditions is None


def test_noise_rate_validated():
    from noisystudent.errors import UserError

    with pytest.raises(UserError, match="data.label_noise.rate"):
        config_from_dict({"data": {"label_noise": {"rate": 1.5}}})
    with pytest.raises(UserError, match="data.imbalance.ratio"):
        config_from_dict({"data": {"imbalance": {"ratio": 0.5}}})


# --------------------------------------------------------------------------------------------------
# studies on Ray Tune

STUDY = """
name: tiny
base:
  name: tiny
  seed: 0
  device: cpu
  data: {{root: {root}, labels_per_class: 20, test_limit: 100, unlabeled_limit: 10, val_fraction: 0}}
  teacher: {{name: resnet8}}
  teacher_train: {{epochs: 1, total_steps: 2, batch_size: 32, warn_below_steps: 0}}
  student:
    generations: 0
    ladder: [{{name: resnet8}}]
    train: {{epochs: 1, total_steps: 2, batch_size: 32, warn_below_steps: 0}}
  distill: {{method: {{name: hinton, temperature: 2.0}}}}
  ray: {{torch_threads: 1}}
grid:
  distill.method.name: [supervised, hinton]
  seed: [0, 1]
resources: {{cpu: 1}}
max_failures: 0
"""


def test_study_expands_grid_and_shares_teachers(tmp_path, require_fmnist):
    from pipelines.study import load_study

    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(root=require_fmnist) + "random: {num_samples: 1, seed: 0, choices: {data.label_noise.rate: [0.2]}}\n")
    s = load_study(path)
    assert len(s.trials) == 4 and len({t.id for t in s.trials}) == 4
    assert len({t.teacher_key for t in s.trials}) == 1  # one data condition, one teacher
    assert {t.cfg["distill"]["method"]["name"] for t in s.trials} == {"supervised", "hinton"}
    assert all(t.cfg["ray"]["workers"] == 0 and t.cfg["data"]["label_noise"]["rate"] == 0.2 for t in s.trials)
    sup = next(t for t in s.trials if t.cfg["distill"]["method"]["name"] == "supervised")
    assert "temperature" not in sup.cfg["distill"]["method"]  # the base method's params are dropped


def test_study_resolves_relative_data_paths_on_the_driver(tmp_path, require_fmnist, monkeypatch):
    """A trial runs in Tune's working directory, so ``data.root: fm`` (relative to where the study was
    started) reaches every trial as an absolute path."""
    from pipelines.study import load_study

    (tmp_path / "fm").symlink_to(require_fmnist)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(STUDY.format(root="fm"))
    s = load_study(tmp_path / "study.yaml")
    assert {t.cfg["data"]["root"] for t in s.trials} == {str(tmp_path / "fm")}


@pytest.mark.slow
def test_study_runs_on_tune_and_resumes_without_repeating(tmp_path, require_fmnist, ray_session):
    import pandas as pd

    from pipelines.study import run_study, status

    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(root=require_fmnist))
    d = tmp_path / "study"
    # a study cut short after 2 of its 4 trials (as a killed driver leaves it)
    out = run_study(path, d, max_trials=2)
    assert out["errors"] == {}
    st = status(d)
    assert st["counts"] == {"done": 2, "pending": 2}
    done = {r["trial"]: (d / "trials" / r["trial"] / "state.json").read_text() for r in st["rows"] if r["status"] == "done"}
    teacher_state = next((d / "teachers").iterdir()) / "state.json"
    teacher_before = teacher_state.read_text()

    out = run_study(path, d)
    assert out["errors"] == {}
    assert status(d)["counts"] == {"done": 4}
    for tid, state in done.items():  # finished trials were not run again
        assert (d / "trials" / tid / "state.json").read_text() == state
    assert teacher_state.read_text() == teacher_before  # the teacher was trained once
    df = pd.read_parquet(d / "results.parquet")
    assert len(df) == 4 and set(df.columns) >= {"distill.method.name", "seed", "test_acc", "fidelity", "seconds"}
    assert df["test_acc"].between(0, 1).all() and df["fidelity"].between(0, 1).all()


def test_study_cli_status(tmp_path, require_fmnist):
    from click.testing import CliRunner

    from noisystudent.cli import main

    r = CliRunner().invoke(main, ["study", "status", str(tmp_path)])
    assert r.exit_code == 2 and "not a study folder" in r.output


def test_only_selects_one_column_of_a_study(tmp_path, require_fmnist):
    """``--only`` runs a column of a large study first: the trials (and ids) of one grid value, a field inside a
    method mapping too; an unknown field or a value no trial has fails in one line naming it, before anything
    is written (exit 2 from the CLI)."""
    from click.testing import CliRunner

    from noisystudent.cli import main
    from noisystudent.errors import UserError
    from pipelines.study import load_study, parse_only, select_trials

    study = load_study("configs/study_sarfraz_noise.yaml")
    assert len(study.trials) == 48
    col = select_trials(study, parse_only(["data.label_noise.rate=0.2"]))
    assert len(col) == 24 and all(t.cfg["data"]["label_noise"]["rate"] == 0.2 for t in col)
    assert {t.id for t in col} < {t.id for t in study.trials}
    angle = select_trials(study, {"distill.method.mode": "angle", "seed": 1})
    assert [t.cfg["distill"]["method"]["mode"] for t in angle] == ["angle", "angle"]  # both noise levels
    assert select_trials(study, {}) == study.trials
    with pytest.raises(UserError, match="--only data.imbalance.ratio: not a grid field"):
        select_trials(study, {"data.imbalance.ratio": 10})
    with pytest.raises(UserError, match=r"--only data.label_noise.rate=0.3: no trial has this value \(values: 0.2, 0.6\)"):
        select_trials(study, {"data.label_noise.rate": 0.3})
    with pytest.raises(UserError, match="expected FIELD=VALUE"):
        parse_only(["seed"])
    r = CliRunner().invoke(main, ["study", "run", "configs/study_sarfraz_noise.yaml", "--study-dir", str(tmp_path / "s"),
                                  "--only", "student.name=x"])
    assert r.exit_code == 2 and "--only student.name: not a grid field" in r.output
    assert not (tmp_path / "s" / "study.json").exists()  # the folder's lock is all that was made


def test_study_teacher_flag(tmp_path, require_fmnist, ray_session):
    """``study --teacher CKPT``: no teacher stage, every trial distills from CKPT (its fidelity is measured
    against it); a path without a checkpoint exits 2 naming the flag before Ray is touched."""
    import yaml
    from click.testing import CliRunner

    from noisystudent.cli import main
    from pipelines.study import run_study

    path = tmp_path / "study.yaml"
    text = STUDY.format(root=require_fmnist)
    path.write_text(text)
    r = CliRunner().invoke(main, ["study", str(path), "--study-dir", str(tmp_path / "s0"), "--teacher",
                                  str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "--teacher" in r.output and "no checkpoint" in r.output, r.output

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(yaml.safe_load(text)["base"]))
    r = CliRunner().invoke(main, ["teacher", str(base), "--run-dir", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    ckpt = tmp_path / "t" / "gen-0" / "teacher" / "model.pt"
    d = tmp_path / "study"
    out = run_study(path, d, max_trials=1, teacher=ckpt.parent)
    assert out["errors"] == {} and not (d / "teachers").exists()  # no teacher stage
    (row,) = [r for r in out["rows"] if r.get("status") == "done"]
    frozen = yaml.safe_load((d / "trials" / row["trial"] / "config.yaml").read_text())
    assert frozen["distill"]["teacher"] == str(ckpt.parent.resolve())
    m = json.loads(next((d / "trials" / row["trial"]).rglob("metrics.json")).read_text())
    assert m["teacher_test_acc"] == json.loads((ckpt.parent / "metrics.json").read_text())["test_acc"]


@pytest.mark.slow
def test_failed_trial_is_retried_and_listed_while_the_rest_finish(tmp_path, require_fmnist, ray_session):
    from pipelines.study import run_study, status

    path = tmp_path / "study.yaml"
    text = STUDY.format(root=require_fmnist).replace("max_failures: 0", "max_failures: 1")
    text = text.replace("  distill.method.name: [supervised, hinton]\n  seed: [0, 1]\n",
                        "  distill.method: [{name: supervised}, {name: fitnet, student_stage: 99}]\n")
    path.write_text(text)
    out = run_study(path, tmp_path / "study")
    assert len(out["errors"]) == 1
    (tid, err), = out["errors"].items()
    assert "fitnet" in tid and "student_stage" in err
    st = status(tmp_path / "study")
    assert st["counts"] == {"done": 1, "failed": 1} and "student_stage" in st["failed"][tid]


@pytest.mark.slow
def test_study_resumes_after_its_driver_is_killed(tmp_path, require_fmnist, ray_session):
    """A `noisystudent study` driver on the session's Ray instance is killed after its first trial; running
    the study again finishes the rest without running the finished trial (or the teacher) again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipelines.study import run_study, status

    text = STUDY.format(root=require_fmnist)
    (tmp_path / "slow.yaml").write_text(text + "max_concurrent: 1\n")  # same trials, one at a time
    (tmp_path / "study.yaml").write_text(text)
    d = tmp_path / "study"
    gcs = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "noisystudent.cli", "study", str(tmp_path / "slow.yaml"), "--study-dir",
                             str(d), "--ray-address", gcs, "--quiet"], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    done: dict = {}
    while time.time() < deadline and proc.poll() is None and not done:
        time.sleep(0.5)
        if (d / "study.json").exists():
            done = {r["trial"]: (d / "trials" / r["trial"] / "state.json").read_text()
                    for r in status(d)["rows"] if r["status"] == "done"}
    assert done, "the study never finished a trial"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(done) < 4
    teacher_state = (next((d / "teachers").iterdir()) / "state.json").read_text()

    out = run_study(tmp_path / "study.yaml", d)
    assert out["errors"] == {} and status(d)["counts"] == {"done": 4}
    for tid, state in done.items():
        assert (d / "trials" / tid / "state.json").read_text() == state
    assert (next((d / "teachers").iterdir()) / "state.json").read_text() == teacher_state


def test_summary_and_report_from_rows(tmp_path):
    from pipelines.study import format_summary, summary, write_report

    rows = [{"trial": f"t{m}{n}{s}", "distill.method.name": m, "data.label_noise.rate": n, "seed": s, "status": "done",
             "test_acc": acc + 0.01 * s, "fidelity": 0.5, "teacher_test_acc": 0.8, "seconds": 1.0, "error": None}
            for m, n, acc in [("supervised", 0.0, 0.8), ("hinton", 0.0, 0.85), ("supervised", 0.4, 0.6), ("hinton", 0.4, 0.7)]
            for s in (0, 1)]
    rows.append({"trial": "bad", "distill.method.name": "fitnet", "data.label_noise.rate": 0.0, "seed": 0, "status": "failed",
                 "test_acc": None, "fidelity": None, "teacher_test_acc": None, "seconds": None, "error": "boom"})
    table = summary(rows)
    assert len(table) == 4 and (table["seeds"] == 2).all()
    best = table.loc[table["test_acc_mean"].idxmax()]
    assert best["distill.method.name"] == "hinton" and abs(best["test_acc_mean"] - 0.855) < 1e-9
    assert "0.8550 ± 0.0071" in format_summary(table)
    page = write_report(tmp_path, rows).read_text()
    assert "<b>0.8550 ± 0.0071</b>" in page and "boom" in page and (tmp_path / "report" / "heatmap.png").is_file()


def test_bench_study_default_stem_is_the_documented_name():
    """Without --out, a study's JSON and figure land where the docs link them, and a smoke never there."""
    from bench.study import STUDY, default_stem

    assert default_stem(STUDY) == "docs/bench-study"
    assert default_stem(Path("configs/study_sarfraz_noise.yaml")) == "docs/bench-study-noise"
    assert default_stem(Path("configs/study_sarfraz_imbalance_steps.yaml")) == "docs/bench-study-imbalance-steps"
    assert default_stem(Path("configs/study_loop_fashion_mnist.yaml"), quick=True) == \
        "bench/results/bench-study-loop-fashion-mnist-quick"
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "configs").glob("study_sarfraz_*.yaml")):   # every Sarfraz study's JSON is in docs/
        assert (root / (default_stem(path.relative_to(root)) + ".json")).is_file(), path.name


def test_bench_study_gains_over_supervised():
    """bench-study's verdict per method and noise level: the gain over supervised, and "beyond spread" only
    when it is positive and larger than both seed spreads."""
    from bench.study import gains

    rows = [{"trial": f"{m}-{n}-{s}", "status": "done", "distill.method.name": m, "data.label_noise.rate": n,
             "seed": s, "test_acc": acc + 0.001 * s, "fidelity": 0.9, "teacher_test_acc": 0.8, "seconds": 1.0,
             "error": None}
            for m, n, acc in [("supervised", 0.0, 0.80), ("hinton", 0.0, 0.79), ("supervised", 0.4, 0.70),
                              ("hinton", 0.4, 0.72), ("fitnet", 0.4, 0.7005)] for s in (0, 1)]
    g = {(r["method"], float(r["label_noise"])): r for r in gains(rows)}
    assert set(g) == {("hinton", 0.0), ("hinton", 0.4), ("fitnet", 0.4)}
    assert abs(g[("hinton", 0.4)]["gain"] - 0.02) < 1e-9 and g[("hinton", 0.4)]["beyond_spread"]
    assert not g[("hinton", 0.0)]["beyond_spread"]  # a loss is never "beyond spread"
    assert not g[("fitnet", 0.4)]["beyond_spread"]  # +0.0005 against a spread of 0.0007



def test_bench_study_gains_for_method_modes_and_imbalance(tmp_path):
    """Sarfraz's tables: RKD's modes are methods of their own, an imbalance ratio is a condition, and each
    condition's teacher (from its data_conditions.json) is matched to it."""
    from bench.study import gains, teacher_condition, teachers
    from noisystudent.io import write_json

    rows = [{"trial": f"{m}{mode}-{r}-{s}", "status": "done", "distill.method": {"name": m, **({"mode": mode} if mode else {})},
             "data.imbalance.ratio": r, "seed": s, "test_acc": acc + 0.002 * s}
            for m, mode, r, acc in [("supervised", None, 10, 0.70), ("rkd", "distance", 10, 0.75), ("rkd", "angle", 10, 0.69),
                                    ("supervised", None, 100, 0.50), ("rkd", "distance", 100, 0.52)] for s in (0, 1)]
    g = {(x["method"], x["condition"], x["level"]): x for x in gains(rows)}
    assert set(g) == {("rkd-distance", "imbalance ratio", 10.0), ("rkd-angle", "imbalance ratio", 10.0),
                      ("rkd-distance", "imbalance ratio", 100.0)}
    assert abs(g[("rkd-distance", "imbalance ratio", 10.0)]["gain"] - 0.05) < 1e-9
    assert g[("rkd-distance", "imbalance ratio", 10.0)]["beyond_spread"]
    assert not g[("rkd-angle", "imbalance ratio", 10.0)]["beyond_spread"]
    for key, cond in (("a", {"imbalance": {"ratio": 10}, "train_images": 2250}), ("b", {"label_noise": {"rate": 0.2}}),
                      ("c", {})):
        write_json(tmp_path / "teachers" / key / "data_conditions.json", cond)
        write_json(tmp_path / "teachers" / key / "gen-0" / "teacher" / "metrics.json", {"model": "wrn_28_2", "test_acc": 0.8})
    conds = [teacher_condition(t) for t in teachers(tmp_path)]
    assert conds == [("imbalance ratio", 10.0), ("label noise", 0.2), ("no data condition", 0.0)]



def test_bench_study_merge_completes_a_table_from_an_earlier_json(tmp_path):
    """--merge: an earlier run's finished trials fill the trials this folder has not finished (a column run
    elsewhere), never replace a finished one, and its teachers join those of this folder."""
    from bench.study import merge
    from noisystudent.io import write_json

    here = [{"trial": "a", "status": "done", "test_acc": 0.7}, {"trial": "b", "status": "pending"},
            {"trial": "c", "status": "pending"}]
    write_json(tmp_path / "teachers" / "k1" / "data_conditions.json", {"imbalance": {"ratio": 50}})
    write_json(tmp_path / "teachers" / "k1" / "gen-0" / "teacher" / "metrics.json", {"model": "m", "test_acc": 0.6})
    earlier = tmp_path / "earlier.json"
    write_json(earlier, {"wall_seconds": 12.0,
                         "trials": [{"trial": "a", "status": "done", "test_acc": 0.1},
                                    {"trial": "b", "status": "done", "test_acc": 0.8},
                                    {"trial": "c", "status": "failed"}, {"trial": "d", "status": "done", "test_acc": 0.9}],
                         "teachers": [{"key": "k1", "test_acc": 0.0}, {"key": "k2", "test_acc": 0.5}]})
    rows, ts, records = merge(here, tmp_path, [earlier])
    by_id = {r["trial"]: r for r in rows}
    assert sorted(by_id) == ["a", "b", "c", "d"] and len(rows) == 4
    assert by_id["a"]["test_acc"] == 0.7 and by_id["b"]["test_acc"] == 0.8 and by_id["c"]["status"] == "pending"
    assert {t["key"]: t["test_acc"] for t in ts} == {"k1": 0.6, "k2": 0.5}
    assert records == [{"file": str(earlier), "wall_seconds": 12.0, "trials": 2}]


def test_bench_study_draws_a_twelve_method_table_from_merged_rows(tmp_path):
    """Sarfraz's 12 methods at two imbalance ratios, from rows alone (no study folder): the JSON summarises each
    method and ratio over seeds, keeps the teachers it was given, and the figure is written."""
    from bench.study import write_docs

    methods = [{"name": m} for m in ("supervised", "hinton", "bss", "fitnet", "fsp", "at", "sp", "one", "dml")] + \
        [{"name": "rkd", "mode": m} for m in ("distance", "angle", "both")]
    rows = [{"trial": f"{i}-{r}-{s}", "status": "done", "distill.method": m, "data.imbalance.ratio": r, "seed": s,
             "test_acc": 0.5 + 0.01 * i + 0.001 * s, "fidelity": 0.8, "teacher_test_acc": 0.6, "seconds": 1.0}
            for i, m in enumerate(methods) for r in (10, 100) for s in (0, 1)]
    teachers = [{"key": "k10", "imbalance_ratio": 10.0, "label_noise": 0.0, "test_acc": 0.7},
                {"key": "k100", "imbalance_ratio": 100.0, "label_noise": 0.0, "test_acc": 0.4}]
    doc = write_docs(tmp_path / "absent", rows, None, tmp_path / "imb", teacher_rows=teachers,
                     merged=[{"file": "x.json", "trials": 48, "wall_seconds": 5.0}])
    assert len(doc["summary"]) == 24 and all(r["seeds"] == 2 for r in doc["summary"])
    assert doc["teachers"] == teachers and doc["merged"][0]["trials"] == 48
    assert len(doc["gains"]) == 22 and (tmp_path / "imb.png").stat().st_size > 10_000

LOOP_STUDY = """
name: tiny-loop
kind: loop
base:
  name: tiny
  seed: 0
  device: cpu
  data: {{root: {root}, labels_per_class: 20, test_limit: 100, unlabeled_limit: 60, val_fraction: 0.2}}
  teacher: {{name: resnet8}}
  teacher_train: {{epochs: 1, total_steps: 3, batch_size: 32, warn_below_steps: 0}}
  pseudo_labels: {{num_actors: 1, batch_size: 64}}
  student:
    generations: 1
    ladder: [{{name: resnet8}}]
    train: {{epochs: 1, total_steps: 2, batch_size: 16, warn_below_steps: 0}}
  ray: {{torch_threads: 1}}
grid:
  pseudo_labels.threshold: [0.0, 0.5]
  student.ladder.0.init: [null, teacher]
resources: {{cpu: 1}}
max_failures: 0
"""
LOOP_GRID = "grid:\n  pseudo_labels.threshold: [0.0, 0.5]\n  student.ladder.0.init: [null, teacher]"


def test_loop_study_labels_once_and_runs_a_generation_per_trial(tmp_path, require_fmnist, ray_session):
    """``kind: loop``: one teacher, its labels made once in the driver and hard-linked into every trial,
    each trial a generation of the loop (select -> student -> evaluate -> promote) with its own settings:
    two trials, the base (threshold 0, a fresh student) and a variant (threshold 0.5, the student initialised
    from the teacher)."""
    import pandas as pd

    from noisystudent.errors import ConfigError
    from pipelines.study import load_study, run_study, status

    path = tmp_path / "study.yaml"
    path.write_text(LOOP_STUDY.format(root=require_fmnist).replace(
        LOOP_GRID, "variants:\n  - {pseudo_labels.threshold: 0.5, student.ladder.0.init: teacher}"))
    d = tmp_path / "study"
    out = run_study(path, d)
    assert out["errors"] == {}, out["errors"]
    assert status(d)["counts"] == {"done": 2}
    (teacher,) = list((d / "teachers").iterdir())
    label_files = sorted((teacher / "gen-1" / "labels").glob("*.parquet"))
    assert label_files
    for trial in (d / "trials").iterdir():
        st = json.loads((trial / "state.json").read_text())["steps"]
        assert st["gen-1/label"]["seeded_from"] == str(teacher) and "gen-1/promote" in st
        linked = trial / "gen-1" / "labels" / label_files[0].name
        assert linked.stat().st_ino == label_files[0].stat().st_ino  # a hard link, not a second labeling job
    df = pd.read_parquet(d / "results.parquet")
    assert set(df.columns) >= {"pseudo_labels.threshold", "student.ladder.0.init", "test_acc", "gen1_test_acc",
                               "teacher_test_acc", "promoted"}
    assert df["test_acc"].between(0, 1).all() and (df["gen1_test_acc"] == df["test_acc"]).all()
    # each trial selected with its own threshold from the same 60 labels
    by_threshold = {}
    for t in (d / "trials").iterdir():
        sel = json.loads((t / "gen-1" / "selected" / "summary.json").read_text())
        assert sel["rows_in"] == 60
        by_threshold.setdefault(sel["threshold"], set()).add(sel["rows_after_threshold"])
    assert by_threshold[0.0] == {60} and max(by_threshold[0.5]) <= 60
    # each trial ran its own settings: the variant's student started from the teacher
    import yaml

    runs = [yaml.safe_load((t / "config.yaml").read_text()) for t in (d / "trials").iterdir()]
    assert sorted((c["pseudo_labels"]["threshold"], str(c["student"]["ladder"][0].get("init"))) for c in runs) == \
        [(0.0, "None"), (0.5, "teacher")]
    # fields the labeling job reads cannot vary across one teacher's trials
    path.write_text(LOOP_STUDY.format(root=require_fmnist) + "random: {num_samples: 1, choices: {pseudo_labels.temperature: [2.0]}}\n")
    with pytest.raises(ConfigError, match="pseudo_labels.temperature"):
        load_study(path)


def test_study_variants_are_rows_crossed_with_the_grid(tmp_path, require_fmnist):
    """``variants``: one factor at a time; each variant (and the base) is crossed with the grid's seeds, and the
    summary has one row per variant."""
    from pipelines.study import load_study, summary

    path = tmp_path / "study.yaml"
    path.write_text(LOOP_STUDY.format(root=require_fmnist).replace(
        LOOP_GRID, "grid:\n  seed: [0, 1]\nvariants:\n  - {student.ratio: 1}\n  - {pseudo_labels.threshold: 0.7, student.loss: hard}"))
    s = load_study(path)
    assert len(s.trials) == 6 and len({t.id for t in s.trials}) == 6
    names = sorted({t.overrides["variant"] for t in s.trials})
    assert names == ["base", "ratio=1", "threshold=0.7, loss=hard"]
    hard = [t for t in s.trials if t.overrides["variant"].startswith("threshold")]
    assert all(t.cfg["student"]["loss"] == "hard" and t.cfg["pseudo_labels"]["threshold"] == 0.7 for t in hard)
    rows = [{"trial": t.id, **t.overrides, "status": "done", "test_acc": 0.5 + 0.1 * t.cfg["seed"], "fidelity": 0.9}
            for t in s.trials]
    table = summary(rows)
    assert sorted(table["variant"]) == names and (table["seeds"] == 2).all()
    assert table["test_acc_mean"].tolist() == pytest.approx([0.55] * 3)
    with pytest.raises(ConfigError, match="study.variants"):
        path.write_text(LOOP_STUDY.format(root=require_fmnist) + "variants: {a: 1}\n")
        load_study(path)


def test_variant_study_summary_is_decided_on_validation_and_drawn(tmp_path):
    """A ``variants:`` loop study: the summary carries validation accuracy (rows are decided on it, test is
    reported), and bench.study draws one bar per variant into the figure and JSON."""
    from bench.study import write_docs
    from pipelines.study import format_summary, summary

    rows = [{"trial": f"{v}-{s}", "variant": v, "seed": s, "status": "done", "val_acc": val + 0.01 * s,
             "test_acc": acc + 0.002 * s, "fidelity": 0.9, "teacher_test_acc": 0.79, "seconds": 1.0, "error": None}
            for v, val, acc in [("base", 0.84, 0.82), ("ratio=1", 0.83, 0.815)] for s in (0, 1)]
    table = summary(rows)
    assert list(table["variant"]) == ["base", "ratio=1"]
    assert table["val_acc_mean"].tolist() == pytest.approx([0.845, 0.835])
    text = format_summary(table)
    assert text.splitlines()[0].split()[:3] == ["variant", "val_acc", "test_acc"] and "0.8450 ± 0.0071" in text
    doc = write_docs(tmp_path, rows, 12.0, tmp_path / "loop-study")
    assert (tmp_path / "loop-study.png").stat().st_size > 1000
    assert [r["variant"] for r in doc["summary"]] == ["base", "ratio=1"]


def test_method_study_without_a_data_condition_is_drawn(tmp_path):
    """A distill study with no label noise or imbalance (Sarfraz's RKD rows): the JSON and figure are written
    and the summary keeps one row per method."""
    from bench.study import _condition, write_docs

    rows = [{"trial": f"{m}-{s}", "distill.method": {"name": m}, "seed": s, "status": "done", "test_acc": acc + 0.01 * s,
             "fidelity": 0.9, "teacher_test_acc": 0.86, "seconds": 1.0, "error": None}
            for m, acc in [("supervised", 0.82), ("rkd", 0.84)] for s in (0, 1)]
    assert _condition(rows[0]) == ("no data condition", 0.0)
    doc = write_docs(tmp_path, rows, 7.0, tmp_path / "rkd")
    assert (tmp_path / "rkd.png").read_bytes()[:4] == b"\x89PNG" and doc["wall_seconds"] == 7.0
    assert len(doc["summary"]) == 2 and len(doc["trials"]) == 4
