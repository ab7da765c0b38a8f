"""The Noisy Student loop end to end on a small real Fashion-MNIST subset, with a real local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from conftest import tiny_run_config
from noisystudent.cli import main
from noisystudent.errors import UserError
from pipelines import steps
from pipelines.config import config_from_dict
from pipelines.loop import (converged_oracle, converged_oracle_config, converged_oracle_dir, run_all,
                            train_converged_oracle)
from pipelines.state import RunDir
from pipelines.steps import step_name
from pseudo_labels import read_labels

tiny = tiny_run_config  # the config of the session's finished run (conftest.finished_run)


def test_two_generations_write_every_artifact(finished_run):
    run_dir, res = finished_run
    assert "gen 1: resnet8 test accuracy" in res.output and "gen 2: resnet14 test accuracy" in res.output
    run = RunDir(run_dir)
    for p in ["config.yaml", "state.json", "gen-0/teacher/model.pt", "gen-0/teacher/metrics.json", "gen-0/teacher/history.csv"]:
        assert (run_dir / p).is_file(), p
    for g in (1, 2):
        for p in ["labels/_SUCCESS", "labels/summary.json", "labels/rejected.csv", "selected/_SUCCESS",
                  "selected/summary.json", "student/model.pt", "student/metrics.json", "student/history.csv", "metrics.json"]:
            assert (run_dir / f"gen-{g}" / p).is_file(), f"gen-{g}/{p}"
        assert list((run_dir / f"gen-{g}" / "labels").glob("part-*.parquet"))
        m = json.loads((run_dir / f"gen-{g}" / "metrics.json").read_text())
        assert m["pseudo_labels"] == 600 and 0 <= m["pseudo_label_acc"] <= 1 and m["test_acc"] is not None
        assert m["pseudo_label_acc_selected"] is not None
    st = run.state()
    assert set(st["steps"]) == {"gen-0/teacher"} | {f"gen-{g}/{s}" for g in (1, 2)
                                                    for s in ("label", "select", "student", "evaluate", "promote")}
    # gen 2 was labeled by gen 1's student, and the ladder built the right models
    assert run.teacher_of(2) == run_dir / "gen-1" / "student" / "model.pt"
    labels2 = read_labels(run_dir / "gen-2" / "labels")
    student1 = json.loads((run_dir / "gen-1" / "student" / "metrics.json").read_text())
    assert set(labels2["teacher"]) == {student1["checkpoint_id"]}
    assert json.loads((run_dir / "gen-2" / "student" / "metrics.json").read_text())["model"] == "resnet14"
    assert not list(run_dir.rglob(".tmp-*"))


def test_rerun_skips_finished_steps(run_copy):
    run_dir = run_copy
    before = (run_dir / "state.json").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("model.pt")}
    rows = run_all(config_from_dict(tiny()), run_dir, progress=False)
    assert [r["generation"] for r in rows] == [0, 1, 2]
    after = json.loads((run_dir / "state.json").read_text())
    assert after["steps"] == json.loads(before)["steps"]
    assert mtimes == {p: p.stat().st_mtime_ns for p in run_dir.rglob("model.pt")}


def test_changed_config_is_refused(finished_run, tmp_path):
    run_dir, _ = finished_run
    with pytest.raises(UserError, match="teacher_train.lr"):
        run_all(config_from_dict(tiny(teacher_train={"epochs": 3, "batch_size": 50, "lr": 0.1})), run_dir, progress=False)
    cfg_file = tmp_path / "changed.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny(seed=5)))
    res = CliRunner().invoke(main, ["run", str(cfg_file), "--run-dir", str(run_dir)])
    assert res.exit_code == 2 and "seed" in res.output and res.output.startswith("error:")


def test_more_generations_is_allowed_and_status(finished_run):
    run_dir, _ = finished_run
    res = CliRunner().invoke(main, ["status", str(run_dir)])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split()[:3] == ["gen", "model", "steps"]
    assert "5/5" in lines[2] and "resnet14" in lines[3] and lines[4] == ""
    assert lines[5].startswith("gen 1 promotion: student.promote is always") and len(lines) == 7
    res = CliRunner().invoke(main, ["status", str(run_dir), "--json"])
    rows = json.loads(res.output)
    m2 = json.loads((run_dir / "gen-2" / "metrics.json").read_text())
    assert rows[2]["test_acc"] == m2["test_acc"] and rows[2]["pseudo_label_acc"] == m2["pseudo_label_acc"]


def test_step_commands_need_their_inputs(tmp_path, require_fmnist):
    run = RunDir(tmp_path / "r")
    cfg = run.freeze_config(config_from_dict(tiny()))
    with pytest.raises(UserError, match="no finished labels"):
        steps.select(run, cfg, 1)
    with pytest.raises(UserError, match="no selected pseudo-labels"):
        steps.train_student(run, cfg, 1)
    res = CliRunner().invoke(main, ["label", str(tmp_path / "nope"), "--generation", "1"])
    assert res.exit_code == 2 and "not a run folder" in res.output


def test_label_without_a_teacher_says_which_command_makes_it(tmp_path):
    """`label RUN --generation 5` on a run with one generation names the missing student and the command
    that makes it, instead of `checkpoint not found: .../gen-4/student/model.pt`."""
    run = RunDir(tmp_path / "run2")
    cfg = run.freeze_config(config_from_dict(tiny()))
    with pytest.raises(UserError, match=r"generation 0 has no teacher yet .*`noisystudent teacher .*config.yaml --run-dir "):
        steps.label(run, cfg, 1)
    # a run with one finished generation: teacher, then gen 1 labeled, selected, trained, promoted
    for g, names in ((0, ["teacher"]), (1, ["label", "select", "student", "evaluate", "promote"])):
        for s in names:
            run.mark_done(step_name(g, s), 1.0)
    for d in (run.teacher_dir(), run.student_dir(1)):
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"x")
    run.promote(1, run.student_dir(1) / "model.pt")

    res = CliRunner().invoke(main, ["label", str(run.root), "--generation", "5"])
    assert res.exit_code == 2
    msg = res.output.strip()
    assert msg.startswith("error: generation 4 has no student yet") and "to label generation 5" in msg
    assert "checkpoint not found" not in msg and len(msg.splitlines()) == 1
    assert f"`noisystudent label {run.root} --generation 2`" in msg, msg  # the next step of the run
    assert f"`noisystudent run {run.root / 'config.yaml'} --run-dir {run.root} --generations 4`" in msg

    # the generation right before: its own next step (labels and selection of gen 2 done -> the student)
    run.mark_done(step_name(2, "label"), 1.0)
    run.mark_done(step_name(2, "select"), 1.0)
    with pytest.raises(UserError, match=rf"generation 2 has no student yet .*its next step is `noisystudent student {run.root} --generation 2`"):
        steps.label(run, cfg, 3)
    # a model recorded as done whose file was deleted
    (run.student_dir(1) / "model.pt").unlink()
    with pytest.raises(UserError, match=r"generation 1's student is recorded as done .*--generation 1 --force`"):
        steps.label(run, cfg, 2, force=True)


def test_kill_during_student_then_run_finishes(run_copy):
    """SIGKILL the student step mid-way; `run` then completes it without redoing finished steps.

    A copy of the shared run with generation 1's student and everything after it removed, and a student of
    6 epochs: the teacher, labels and selection are the finished steps that must stay as they are."""
    import shutil

    run_dir = run_copy
    run = RunDir(run_dir)
    d = tiny(student={"generations": 1, "train": {"epochs": 6, "batch_size": 50, "lr": 0.05, "steps_per_epoch": 6}})
    cfg_file = run_dir.parent / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(d))
    for step in [s for s in run.state()["steps"] if s.startswith("gen-2/")] + ["gen-1/student", "gen-1/evaluate",
                                                                                  "gen-1/promote"]:
        run.forget(step)
    shutil.rmtree(run_dir / "gen-2")
    shutil.rmtree(run_dir / "gen-1" / "student")
    (run_dir / "gen-1" / "metrics.json").unlink()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(d))  # the student's longer schedule, as if started so
    finished = {k: v["finished"] for k, v in run.state()["steps"].items()}
    assert set(finished) == {"gen-0/teacher", "gen-1/label", "gen-1/select"}

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "noisystudent.cli", "student", str(run_dir), "-g", "1", "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "gen-1" / "student" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert last.exists(), "student never wrote its first epoch"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "gen-1" / "student" / "model.pt").exists()
    assert "gen-1/student" not in run.state()["steps"]

    res = CliRunner().invoke(main, ["run", str(cfg_file), "--run-dir", str(run_dir), "--quiet"])
    assert res.exit_code == 0, res.output
    st = run.state()["steps"]
    assert {k: st[k]["finished"] for k in finished} == finished, "finished steps were redone"
    hist = pd.read_csv(run_dir / "gen-1" / "student" / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert "gen-1/promote" in st


def test_baseline_roles_from_the_same_config(run_copy, tmp_path):
    """`teacher --role supervised/oracle` trains references into baselines/<role> and status lists them."""
    run_dir = run_copy
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny()))
    res = CliRunner().invoke(main, ["teacher", str(cfg_file), "--run-dir", str(run_dir), "--role", "oracle",
                                    "--labels-per-class", "40", "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((run_dir / "baselines" / "oracle" / "metrics.json").read_text())
    # 40 labels a class less data.val_fraction's 4 held out for validation
    assert m["labeled_images"] == 360 and m["model"] == "resnet14" and m["role"] == "oracle"
    rows = json.loads(CliRunner().invoke(main, ["status", str(run_dir), "--json"]).output)
    assert rows[-1]["generation"] == "oracle" and rows[-1]["test_acc"] == m["test_acc"]
    # the accuracy benchmark's table: gain over the teacher and share of the teacher-to-oracle gap closed
    from bench.accuracy import aggregate, headline_oracle, print_seeds_table, table

    bench_rows = {r["generation"]: r for r in table(run_dir)}
    teacher, oracle = bench_rows[0]["test_acc"], bench_rows["oracle"]["test_acc"]
    g2 = bench_rows[2]
    assert g2["gain_vs_teacher"] == pytest.approx(g2["test_acc"] - teacher)
    assert g2["gap_closed"] == (pytest.approx((g2["test_acc"] - teacher) / (oracle - teacher)) if oracle > teacher else None)
    assert bench_rows["oracle"]["gap_closed"] is None
    assert g2["gap_closed_budget"] == g2["gap_closed"] and g2["gap_closed_converged"] is None
    text = print_seeds_table(aggregate({0: list(bench_rows.values())}))
    assert "oracle" in text and f"{g2['test_acc']:.4f}" in text
    assert "headline: gap closed against the budget oracle" in text and "--oracle-only" in text
    # with a converged oracle (cached outside the run): both gaps, the headline against the converged one
    conv = {"model": "resnet14", "epochs": 30, "test_acc": max(oracle, teacher) + 0.05, "seconds": 4321.6, "dir": "cache/o"}
    rows = table(run_dir, conv)
    by = {r["generation"]: r for r in rows}
    g2 = by[2]
    assert g2["gap_closed_converged"] == pytest.approx((g2["test_acc"] - teacher) / (conv["test_acc"] - teacher))
    assert g2["gap_closed"] == g2["gap_closed_converged"]
    assert g2["gap_closed_budget"] == (pytest.approx((g2["test_acc"] - teacher) / (oracle - teacher)) if oracle > teacher else None)
    assert by["oracle-converged"]["test_acc"] == conv["test_acc"] and by["oracle-converged"]["gap_closed"] is None
    assert headline_oracle(rows) == "converged"
    text = print_seeds_table(aggregate({0: rows}))
    head = text.splitlines()[0]
    budget_epochs = RunDir(run_dir).load_config().oracle_epochs
    assert "gap closed (converged oracle, 30 ep)" in head and f"gap closed (budget oracle, {budget_epochs} ep)" in head
    assert "oracle, 30 ep (converged)" in text and f"oracle, {budget_epochs} ep (budget)" in text and "72.0" in text   # its 4,321.6 s as minutes
    assert f"headline: gap closed against the converged oracle ({conv['test_acc']:.4f}, 30 epochs" in text
    gen2 = next(line for line in text.splitlines() if line.startswith("2 "))
    assert f"{100 * g2['gap_closed_converged']:.0f} ± 0 %" in gen2
    res = CliRunner().invoke(main, ["teacher", str(cfg_file), "--run-dir", str(run_dir), "--labels-per-class", "5"])
    assert res.exit_code == 2 and "--labels-per-class" in res.output


def test_converged_oracle_cache_key():
    """The converged oracle's cache folder names the model and epochs; its digest changes with what shapes
    the model and not with the rest of the benchmark's config, Ray, the device or where the files lie."""
    base = converged_oracle_dir(config_from_dict(tiny(oracle_converged_epochs=30)), "cache")
    assert base.parent.name == "cache" and base.name.startswith("oracle-resnet14-30ep-")
    for same in (tiny(student={"generations": 7}), tiny(ray={"workers": 2, "torch_threads": 2}), tiny(device="cpu"),
                 tiny(pseudo_labels={"threshold": 0.9}), tiny(data={"root": "/elsewhere", "unlabeled_limit": 50}),
                 tiny(data={"labels_per_class": 7}), tiny(teacher_train={"num_workers": 4}), tiny(oracle_epochs=9),
                 tiny(teacher={"name": "resnet20"})):
        assert converged_oracle_dir(config_from_dict({**same, "oracle_converged_epochs": 30}), "cache") == base, same
    ladder = tiny()["student"]["ladder"]
    for other in (tiny(oracle_converged_epochs=40), tiny(seed=1), tiny(teacher_train={"lr": 0.1}),
                  tiny(data={"test_limit": 100}),
                  tiny(student={"ladder": ladder[:1] + [{**ladder[1], "drop_rate": 0.1}]}),
                  tiny(student={"ladder": ladder[:1]})):
        assert converged_oracle_dir(config_from_dict({"oracle_converged_epochs": 30, **other}), "cache") != base, other
    # a rung that starts from its teacher's weights: the oracle (and every baseline) still starts from scratch
    same_size = tiny(student={"ladder": [{**ladder[0], "init": "teacher"}, {**ladder[1], "name": "resnet8", "init": "teacher"}]})
    assert converged_oracle_config(config_from_dict(same_size)).teacher.init is None


def test_converged_oracle_is_trained_once_into_the_cache(tmp_path, require_fmnist):
    """`bench.accuracy --oracle-only` trains the last ladder model on all 60,000 labels into the cache
    folder; a later call (another benchmark config that differs only where the oracle does not care)
    reuses it without training."""
    d = tiny(teacher_train={"steps_per_epoch": 2, "epochs": 5}, oracle_converged_epochs=1,
             data={"test_limit": 200})
    cfg = config_from_dict(d)
    cache = tmp_path / "cache"
    m = train_converged_oracle(cfg, cache, progress=False)
    folder = converged_oracle_dir(cfg, cache)
    assert m["dir"] == str(folder) and m["model"] == "resnet14" and m["epochs"] == 1 and 0 <= m["test_acc"] <= 1
    metrics = json.loads((folder / "baselines" / "oracle" / "metrics.json").read_text())
    assert metrics["test_acc"] == m["test_acc"] and metrics["role"] == "oracle"
    frozen = RunDir(folder).load_config()
    assert frozen.data.labels_per_class == 6000 and frozen.teacher_train.epochs == 1 and frozen.teacher.name == "resnet14"
    finished = RunDir(folder).step_info("baselines/oracle")["finished"]
    again = train_converged_oracle(config_from_dict({**d, "student": {**d["student"], "generations": 9}}), cache)
    assert again == m and RunDir(folder).step_info("baselines/oracle")["finished"] == finished
    assert converged_oracle(tmp_path / "nothing-here") is None


def test_ray_train_worker_applies_torch_threads(monkeypatch):
    """`train` hands ``ray.torch_threads`` to every Ray Train worker, whose loop sets torch's threads
    before training (Ray's OMP_NUM_THREADS would be all of the worker's CPUs)."""
    import ray.train
    import ray.train.torch
    import torch

    import pipelines.ray_runtime
    import pipelines.train_ray as tr
    from pipelines.config import RayConfig

    seen = {}

    class FakeTrainer:  # runs the worker loop in this process, as a 1-worker Ray Train fit would
        def __init__(self, loop, train_loop_config, **kw):
            self.loop, self.config = loop, train_loop_config

        def fit(self):
            seen["config"] = dict(self.config)
            self.loop(self.config)

    class Ctx:
        def get_world_rank(self):
            return 0

        def get_world_size(self):
            return 1

    class Job:
        device, role, generation = "cpu", "teacher", 0
        teacher_ckpt = None

        def __init__(self, out):
            self.out_dir = out

    def fake_training(job, hooks):
        seen["threads"] = torch.get_num_threads()
        (job.out_dir / "metrics.json").write_text(json.dumps({"test_acc": 0.5}))
        return {}

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", FakeTrainer)
    monkeypatch.setattr(ray.train, "get_context", lambda: Ctx())
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(pipelines.ray_runtime, "init_ray", lambda *a, **k: {"CPU": 2.0})
    monkeypatch.setattr(tr, "run_training", fake_training)
    monkeypatch.setattr(tr, "warn_budget", lambda *a, **k: None)  # the fake job has no budget to plan
    before = torch.get_num_threads()
    import tempfile
    from pathlib import Path

    try:
        for threads in (1, 2):
            with tempfile.TemporaryDirectory() as d:
                assert tr.train(Job(Path(d)), RayConfig(workers=1, torch_threads=threads)) == {"test_acc": 0.5}
            assert seen["config"]["torch_threads"] == threads and seen["threads"] == threads
        torch.set_num_threads(3)
        with tempfile.TemporaryDirectory() as d:
            tr.train(Job(Path(d)), RayConfig(workers=1, torch_threads=None))  # null: left as Ray set it
        assert seen["threads"] == 3
    finally:
        torch.set_num_threads(before)


def test_accuracy_benchmark_over_seeds(finished_run, tmp_path):
    """`bench.accuracy --table-only` over seed-<S> folders: mean ± std per generation, each seed's accuracy,
    the minutes spent so far, whether every generation beat the one before in the mean; JSON and figure."""
    import shutil

    from bench.accuracy import aggregate, main as bench_main, monotone_in_mean, seeds_found, table

    bench = tmp_path / "bench"
    for s in (0, 3):
        shutil.copytree(finished_run[0], bench / f"seed-{s}", ignore=shutil.ignore_patterns("report", "tensorboard"))
    (bench / "seed-x").mkdir()  # not a seed: ignored
    assert seeds_found(bench) == [0, 3]
    m3 = bench / "seed-3" / "gen-1" / "student" / "metrics.json"
    m = json.loads(m3.read_text())
    m["test_acc"] = m["test_acc"] + 0.1
    m3.write_text(json.dumps(m))
    one, three = table(bench / "seed-0"), table(bench / "seed-3")
    rows = {r["generation"]: r for r in aggregate({0: one, 3: three})}
    g1 = rows[1]
    assert g1["test_acc"] == pytest.approx(one[1]["test_acc"] + 0.05)
    assert g1["test_acc_std"] == pytest.approx(0.1 / 2 ** 0.5) and g1["seeds"] == [0, 3]
    assert g1["test_acc_by_seed"] == {"0": one[1]["test_acc"], "3": three[1]["test_acc"]}
    assert rows[0]["test_acc_std"] == 0.0 and rows[0]["gain_vs_teacher"] == 0.0
    spent = sum(r["seconds"] for r in one if isinstance(r["generation"], int) and r["generation"] <= 1) / 60
    assert rows[1]["minutes_so_far"] == pytest.approx(spent) and rows[2]["minutes_so_far"] > rows[1]["minutes_so_far"]
    assert monotone_in_mean(list(rows.values())) == (rows[2]["test_acc"] >= rows[1]["test_acc"] >= rows[0]["test_acc"])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_run_config()))
    out = bench_main(["--run-dir", str(bench), "--table-only", "--config", str(cfg_file), "--cache-dir",
                      str(tmp_path / "cache"), "--out", str(tmp_path / "acc.json"), "--figure", str(tmp_path / "acc.png")])
    assert out["seeds"] == [0, 3] and "2 seeds" in out["table"] and f"{g1['test_acc']:.4f} ± " in out["table"]
    assert json.loads((tmp_path / "acc.json").read_text())["rows"][1]["test_acc"] == pytest.approx(g1["test_acc"])
    assert (tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="no seed-<S> run"):
        bench_main(["--run-dir", str(tmp_path / "empty"), "--table-only", "--config", str(cfg_file)])
    with pytest.raises(SystemExit, match="--seeds"):
        bench_main(["--seeds", "a,b", "--config", str(cfg_file)])
