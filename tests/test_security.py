"""Security: checkpoints never run code, the Ray instance keeps its token, a dead driver's agents are reaped."""

from __future__ import annotations

import json
import os
import socket
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import write_png_folder
from noisystudent.cli import main

CLASSES = {"a": 6, "b": 6}


class Evil:
    """What an attacker puts in a checkpoint: unpickling it calls ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, marker: Path, **extra) -> Path:
    torch.save({"format_version": 1, "x": Evil(marker), **extra}, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny labeled/unlabeled PNG folder, its config, and one real trained checkpoint."""
    tmp = tmp_path_factory.mktemp("sec")
    write_png_folder(tmp / "train", CLASSES, size=12)
    write_png_folder(tmp / "test", CLASSES, size=12, seed=1)
    write_png_folder(tmp / "unl" / "x", CLASSES, size=12, seed=2)
    cfg = {
        "name": "sec",
        "data": {"kind": "folder", "labeled": str(tmp / "train"), "unlabeled": str(tmp / "unl"), "test": str(tmp / "test"),
                 "image_size": 12, "in_chans": 1, "mean": [0.5], "std": [0.25]},
        "teacher": {"name": "resnet8"},
        "teacher_train": {"epochs": 1, "batch_size": 4, "lr": 0.05},
        "pseudo_labels": {"num_actors": 1, "batch_size": 8},
        "student": {"generations": 1, "ladder": [{"name": "resnet8"}], "train": {"epochs": 1, "batch_size": 4}},
        "ray": {"workers": 0},
    }
    cfg_file = tmp / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["teacher", str(cfg_file), "--run-dir", str(tmp / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    return tmp, cfg_file


def _invoke(argv) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in argv])
    return res.exit_code, res.output


@pytest.mark.parametrize("command", ["evaluate", "predict", "label", "resume"])
def test_crafted_pickle_is_refused_and_never_runs(world, tmp_path, command):
    tmp, cfg_file = world
    marker = tmp_path / "MARKER"
    evil = _evil(tmp_path / "evil.pt", marker)
    if command == "evaluate":
        code, out = _invoke(["evaluate", evil, "--data", tmp / "test"])
    elif command == "predict":
        code, out = _invoke(["predict", evil, tmp / "test" / "a" / "img_0000.png", "-o", tmp_path / "p.parquet"])
    elif command == "label":
        code, out = _invoke(["label", tmp / "run", "-g", "1", "--teacher", evil])
    else:  # a run folder whose resume state was replaced: the next start must not unpickle it
        run = tmp_path / "run"
        (run / "gen-0" / "teacher").mkdir(parents=True)
        _evil(run / "gen-0" / "teacher" / "last.pt", marker)
        code, out = _invoke(["teacher", cfg_file, "--run-dir", run, "--quiet"])
    assert code == 2, out
    assert not marker.exists(), "the pickle's payload ran"
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "weights-only" in lines[0] and "posix.system" in lines[0], out
    assert "Traceback" not in out


def test_missing_or_mistyped_field_is_one_line_naming_it(world, tmp_path):
    tmp, _ = world
    good = torch.load(tmp / "run" / "gen-0" / "teacher" / "model.pt", weights_only=True)
    cases = {
        "spec": {k: v for k, v in good.items() if k != "spec"},
        "spec.classes": {**good, "spec": {k: v for k, v in good["spec"].items() if k != "classes"}},
        "spec.num_classes": {**good, "spec": {**good["spec"], "num_classes": "two"}},
        "state_dict": {**good, "state_dict": [1, 2]},
    }
    for field, payload in cases.items():
        path = tmp_path / f"{field}.pt"
        torch.save(payload, path)
        code, out = _invoke(["evaluate", path, "--data", tmp / "test"])
        assert code == 2, out
        assert f"field '{field}'" in out and str(path) in out and "Traceback" not in out, out


def test_genuine_checkpoint_still_evaluates(world):
    tmp, _ = world
    code, out = _invoke(["evaluate", tmp / "run" / "gen-0" / "teacher", "--data", tmp / "test", "--quiet"])
    assert code == 0 and "top-1" in out, out


def test_old_checkpoint_with_numpy_metrics_loads(world, tmp_path):
    """Earlier versions stored numpy floats in metrics; the allow-list covers numpy scalars only."""
    import numpy as np

    from noisystudent.checkpoint import load_checkpoint

    tmp, _ = world
    payload = torch.load(tmp / "run" / "gen-0" / "teacher" / "model.pt", weights_only=True)
    payload["metrics"] = {"test_acc": np.float64(0.5), "n": np.int64(3)}
    torch.save(payload, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.metrics["test_acc"] == 0.5


def test_session_ray_requires_its_token(ray_session):
    """The suite's instance runs with token authentication; a client holding a wrong token is refused."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    gcs = ray_session.get_runtime_context().gcs_address
    code = f"import ray; ray.init(address={gcs!r}); print('CONNECTED')"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token-" + "0" * 20)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode != 0 and "CONNECTED" not in r.stdout
    assert "auth" in (r.stdout + r.stderr).lower()


def test_unreachable_address_fails_fast_naming_it():
    from noisystudent.errors import UserError
    from pipelines.ray_runtime import check_reachable

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=f"--ray-address 127.0.0.1:{port}: nothing accepted a connection"):
        check_reachable(f"127.0.0.1:{port}", timeout=2)
    assert time.perf_counter() - t0 < 10


def _agents(pids: list[int]) -> list[int]:
    """The Ray per-node agents among ``pids`` once they have retitled themselves (``ray::DashboardAgent``,
    ``ray::RuntimeEnvAgent``): what outlives a hard-killed driver."""
    out = []
    for p in pids:
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::") and b"Agent" in cmd:
            out.append(p)
    return out


@pytest.mark.parametrize("watcher_killed_too", [pytest.param(False, marks=pytest.mark.slow), True])
def test_hard_killed_driver_leaves_nothing_behind(ray_session, tmp_path, watcher_killed_too):
    """kill -9 of a driver with an embedded instance orphans Ray's agents: its watcher stops them within
    seconds (Ray's own agents take ~65 s); with the watcher killed too, the next start reaps them,
    and only them: the session's own Ray instance keeps running.

    The driver is killed after its agents have retitled themselves, as in a real run killed minutes in:
    by then ``setproctitle`` has wiped the environment that ``/proc/PID/environ`` shows, so the tag alone
    misses them (it did: they ran on); the session folder recorded at start finds them."""
    from pipelines.ray_runtime import reap_orphans, registry_dir, tagged_processes

    state = tmp_path / "state"
    env = dict(os.environ, NOISYSTUDENT_STATE_DIR=str(state), PYTHONPATH=os.getcwd())
    env.pop("NOISYSTUDENT_RAY_TAG", None)
    script = textwrap.dedent("""
        import os, time
        from pipelines.ray_runtime import init_ray
        init_ray(num_cpus=1, quiet=True)
        print("TAG", os.environ["NOISYSTUDENT_RAY_TAG"], flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        tag = None
        deadline = time.time() + 120
        while time.time() < deadline and tag is None:
            line = proc.stdout.readline()
            if line.startswith("TAG"):
                tag = line.split()[1]
        assert tag, "the driver did not start Ray"
        record = json.loads((state / "embedded-ray" / f"{tag}.json").read_text())
        session = record["session_dir"]
        assert session and Path(session).is_dir(), record
        assert record["watcher_pid"] and Path(f"/proc/{record['watcher_pid']}").exists(), record
        if watcher_killed_too:
            os.kill(record["watcher_pid"], signal.SIGKILL)
        deadline = time.time() + 120  # the raylet starts its agents after ray.init returns; wait for them
        while time.time() < deadline and len(_agents(tagged_processes(tag, session))) < 2:
            time.sleep(0.5)
        agents = _agents(tagged_processes(tag, session))
        assert len(agents) >= 2, "the embedded instance's agents never came up"
    finally:
        proc.kill()
        proc.wait()
    if not watcher_killed_too:
        deadline = time.time() + 30
        while time.time() < deadline and tagged_processes(tag, session):
            time.sleep(0.5)
        assert tagged_processes(tag, session) == [], "the watcher left the agents of a killed driver running"
        assert not (state / "embedded-ray" / f"{tag}.json").exists()
        return
    time.sleep(3)
    orphans = tagged_processes(tag, session)
    assert set(agents) <= set(orphans), "expected Ray's agents to outlive a kill -9 of the driver (Ray changed? then this is moot)"
    os.environ["NOISYSTUDENT_STATE_DIR"] = str(state)
    try:
        assert registry_dir() == state / "embedded-ray"
        reaped = reap_orphans()
    finally:
        del os.environ["NOISYSTUDENT_STATE_DIR"]
    assert set(orphans) <= set(reaped)
    assert tagged_processes(tag, session) == []
    for p in agents:  # gone, or a zombie waiting for init
        stat = Path(f"/proc/{p}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"), p
    assert not list((state / "embedded-ray").glob("*.json"))
    assert ray_session.is_initialized() and ray_session.cluster_resources().get("CPU")


@pytest.mark.parametrize("import_ray_first", [False, True])
def test_embedded_instance_starts_with_token_auth_and_its_workers_know_its_address(ray_session, tmp_path,
                                                                                   import_ray_first):
    """Ray reads RAY_AUTH_MODE when imported: init_ray must never leave the driver and its GCS disagreeing
    ("InvalidAuthToken"), whether or not ray was imported before it and with the variable unset.

    With two instances on the machine (this session's and the subprocess's), code in a worker that
    resolves "the" local instance (Ray Train's placement group cleaner, through the State API) gets its
    own instead of ``ConnectionError: Found multiple active Ray instances``."""
    script = textwrap.dedent(f"""
        {'import ray' if import_ray_first else ''}
        import os
        from pipelines.ray_runtime import init_ray
        init_ray(num_cpus=1, quiet=True)
        import ray
        from ray._raylet import AuthenticationMode, get_authentication_mode
        @ray.remote
        def f():
            return 41 + 1
        print("RESULT", ray.get(f.remote()), get_authentication_mode() == AuthenticationMode.TOKEN)

        @ray.remote
        def resolve():
            from ray._private.services import canonicalize_bootstrap_address_or_die, find_gcs_addresses
            return len(find_gcs_addresses()), canonicalize_bootstrap_address_or_die(None)

        n, got = ray.get(resolve.remote())
        print("ADDRESS", n, got, ray.get_runtime_context().gcs_address, "RAY_ADDRESS" in os.environ, flush=True)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "NOISYSTUDENT_RAY_TAG", "RAY_ADDRESS")}
    env.update(NOISYSTUDENT_STATE_DIR=str(tmp_path), PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "RESULT 42 True" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("ADDRESS")), None)
    assert line, r.stdout + r.stderr
    _, n, got, own, driver_pinned = line.split()
    assert int(n) >= 2, "expected two Ray instances on the machine"
    assert got == own
    assert driver_pinned == "False"  # the driver's environment is left as the user set it
