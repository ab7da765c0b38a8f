"""One writer per run folder: a second writing command is refused naming the holder; a reader never
waits; a killed holder's lock is taken over and said so. Real processes hold the lock (flock is per
open file, and the kernel releases it when its holder dies)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from noisystudent.cli import main
from pipelines.runlock import LOCK_NAME, RunLockedError, StaleLockWarning, run_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from pipelines.runlock import run_lock
    with run_lock(sys.argv[1], command="noisystudent run cfg.yaml --run-dir X"):
        print("HELD", flush=True)
        time.sleep(120)
""")


def _hold(run_dir: Path) -> subprocess.Popen:
    """A separate process holding ``run_dir``'s lock until killed."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def _run_folder(tmp_path: Path) -> Path:
    """A run folder with a frozen config and no finished step (status can read it)."""
    from pipelines.config import load_config
    from pipelines.state import RunDir

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"name": "lock", "data": {"kind": "fashion_mnist", "labels_per_class": 1}}))
    run = RunDir(tmp_path / "run")
    run.freeze_config(load_config(str(cfg_file), {}))
    return run.root


@pytest.fixture
def held(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISYSTUDENT_MIN_FREE_MB", "0")
    run_dir = _run_folder(tmp_path)
    proc = _hold(run_dir)
    yield run_dir, proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("argv", [
    ["select", "{run}", "-g", "1"],
    ["label", "{run}", "-g", "1"],
    ["student", "{run}", "-g", "1"],
    ["run", "{cfg}", "--run-dir", "{run}"],
    ["teacher", "{cfg}", "--run-dir", "{run}"],
])
def test_second_writer_exits_2_naming_the_holder(held, argv):
    run_dir, proc = held
    argv = [a.format(run=run_dir, cfg=run_dir / "config.yaml") for a in argv]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: run folder")
    assert f"pid {proc.pid}" in line and "noisystudent run cfg.yaml" in line and "since" in line
    assert "wait for it to finish" in line
    assert proc.poll() is None  # the holder was not disturbed


def test_readers_never_wait(held):
    run_dir, _ = held
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, ["status", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert time.perf_counter() - t0 < 30  # refused writers fail at once too; a reader must not block at all
    res = CliRunner().invoke(main, ["doctor", str(run_dir)])
    assert res.exit_code == 0 and "all intact" in res.output, res.output


def test_killed_holder_is_taken_over_and_said_so(tmp_path):
    run_dir = tmp_path / "run"
    proc = _hold(run_dir)
    record = json.loads((run_dir / LOCK_NAME).read_text())
    assert record["pid"] == proc.pid and record["host"] and record["since"]
    with pytest.raises(RunLockedError):
        with run_lock(run_dir):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.warns(StaleLockWarning, match=f"pid {proc.pid}.*ended without releasing"):
        with run_lock(run_dir) as root:
            assert json.loads((root / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (run_dir / LOCK_NAME).read_text() == ""  # released cleanly: no record, no warning next time


def test_lock_is_reentrant_and_released_on_error(tmp_path, recwarn):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError):
        with run_lock(run_dir):
            with run_lock(run_dir):  # a command calling another writing entry point
                pass
            raise ValueError("crash inside the command")
    with run_lock(run_dir):  # free again, and no stale-lock warning after a crash that unwound
        pass
    assert not [w for w in recwarn if issubclass(w.category, StaleLockWarning)]


def test_refused_writer_leaves_the_lock_to_its_holder(held):
    run_dir, proc = held
    CliRunner().invoke(main, ["select", str(run_dir), "-g", "1"])
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == proc.pid
