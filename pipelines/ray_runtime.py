"""Start Ray locally, or connect to a cluster when given an address. Never a scheduler of our own.

Security of the embedded instance (what Ray 2.60 offers, checked with ``ss -ltnp``):

- Token authentication stays on. ``RAY_AUTH_MODE=token`` is set for the embedded instance unless the
  user set the variable (before ``ray`` is imported: Ray reads it then; the Makefile exports it too);
  Ray then generates ``~/.ray/auth_token`` on first use and every RPC to the
  GCS, raylet and workers must carry it (a client with a wrong token is refused; tested).
- Ray 2.60 has no setting that binds its gRPC servers to loopback: the GCS server, raylet and core
  workers listen on all interfaces (``*:PORT``) whatever ``_node_ip_address`` says (checked: passing
  ``127.0.0.1`` changes nothing in ``ss``; the binary's only listener is ``0.0.0.0``). Upstream moved
  the binds to the node IP after 2.60 (ray-project/ray#59852). So the token, not the bind address,
  is what keeps the instance closed; a host firewall is the second line.
- After a hard kill of the driver, Ray's per-node agents (``ray::DashboardAgent``,
  ``ray::RuntimeEnvAgent``, ~200 MB, one of them busy) outlive it, parented to init. Every embedded
  instance started here tags its processes (``NOISYSTUDENT_RAY_TAG`` in their environment) and records
  itself with its session folder; the next start (and ``noisystudent doctor``) stops the processes of
  instances whose driver is dead, never those of a live instance or of another program's Ray. The tag
  alone does not find the agents: a few seconds after they start, ``setproctitle`` writes their title
  (``ray::DashboardAgent``) over the memory that ``/proc/PID/environ`` shows, so the tag is gone from it
  (measured: agents of a driver killed 6 s after start were missed and ran on). What they keep is their
  open log files in the instance's session folder, which no other Ray instance writes; a process is the
  instance's when it carries the tag or holds a file under that folder.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from noisystudent.errors import UserError

TAG_ENV = "NOISYSTUDENT_RAY_TAG"
CONNECT_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)


def registry_dir() -> Path:
    """Where embedded instances record themselves (``$NOISYSTUDENT_STATE_DIR`` or ``~/.cache/noisystudent``)."""
    root = os.environ.get("NOISYSTUDENT_STATE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "noisystudent")
    return Path(root) / "embedded-ray"


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, quiet: bool = False) -> dict:
    """Make sure Ray is up; return its cluster resources.

    ``address=None`` starts an embedded local instance (no dashboard, token authentication on).
    ``address="auto"`` or ``"ray://host:10001"`` / ``"host:6379"`` connects to an existing cluster, whose
    token comes from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (Ray's own
    lookup). An address where nothing accepts a connection fails within :data:`CONNECT_TIMEOUT_S`
    seconds instead of Ray's minutes of retries. A second call reuses the running instance. Worker
    output (per-epoch lines of Ray Train workers) reaches the driver unless ``quiet``.
    """
    if not address and "ray" not in sys.modules:
        # Ray's core reads the mode once, when ``ray`` is imported: set after the import (as
        # _start_embedded alone did), the GCS it starts wants a token the driver never sends
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if ray.is_initialized():
        return ray.cluster_resources()
    kwargs: dict = {"include_dashboard": False, "configure_logging": True, "logging_level": "WARNING"}
    if quiet:
        kwargs["log_to_driver"] = False
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
        else:
            _start_embedded(num_cpus, kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local instance"
        hint = ""
        if "auth" in str(exc).lower() or "token" in str(exc).lower():
            hint = " (token authentication: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token)"
        raise UserError(f"cannot start or reach Ray at {where}: {str(exc).splitlines()[0]}{hint}") from None
    except Exception as exc:  # Ray raises a bare Exception when its raylet misses a fixed 30 s start deadline
        if "timed out during startup" not in str(exc):
            raise
        raise UserError(f"Ray's local instance did not start within Ray's 30 s deadline (load average "
                        f"{os.getloadavg()[0]:.0f} on {os.cpu_count()} CPUs): the machine is too busy; run the same "
                        "command again when it is less loaded, it resumes where it stopped") from None
    return ray.cluster_resources()


def _start_embedded(num_cpus: Optional[int], kwargs: dict) -> None:
    import ray

    reap_orphans()
    # Never set the mode here: Ray reads it when `ray` is imported, and a GCS started with a mode the
    # driver did not load refuses the driver ("InvalidAuthToken"). Unset (ray imported before init_ray
    # could set it), Ray 2.60 turns token authentication on for a new local cluster by itself.
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode.lower() != "token":
        log.warning("RAY_AUTH_MODE=%s: the embedded Ray instance runs WITHOUT token authentication and listens on "
                    "all interfaces; anyone who can reach this machine can run code in it", mode)
    tag = uuid.uuid4().hex[:16]
    os.environ[TAG_ENV] = tag  # inherited by the GCS, raylet, agents and workers this call starts
    # no dashboard, hence no State API: see quiet_worker_logs
    ray.init(num_cpus=num_cpus, runtime_env={"worker_process_setup_hook": "pipelines.ray_runtime.quiet_worker_logs"},
             **kwargs)
    session = _session_dir()
    from .ray_watch import start_watcher

    _record(tag, session, start_watcher(tag, session))  # the watcher stops the agents soon after a hard kill


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, naming the address, when nothing accepts a TCP connection at ``host:port``.

    ``auto`` and addresses without a port are left to Ray (``auto`` already fails fast)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    host = host.strip("[]") or "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise UserError(
            f"--ray-address {address}: nothing accepted a connection at {host}:{port} within {timeout:.0f} s "
            f"({reason}); check that the head node runs `ray start --head` on that port and that no firewall "
            "blocks it, or omit --ray-address to start a local instance"
        ) from None


# ------------------------------------------------------------------------------------------------
# orphans of hard-killed drivers


def _proc_start_time(pid: int) -> Optional[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot


def _session_dir() -> Optional[str]:
    """The running instance's session folder (``/tmp/ray/session_...``), where its processes write their logs.

    Ray has no public accessor for it; the node object has had this method for years. None if that changes
    (the tag then still finds every process that has not retitled itself)."""
    try:
        import ray

        return str(ray._private.worker._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - a private API: degrade, never fail a start
        return None


def _record(tag: str, session_dir: Optional[str] = None, watcher_pid: Optional[int] = None) -> None:
    from noisystudent.io import write_json

    try:
        d = registry_dir()
        d.mkdir(parents=True, exist_ok=True)
        rec = d / f"{tag}.json"
        write_json(rec, {"tag": tag, "driver_pid": os.getpid(), "driver_start": _proc_start_time(os.getpid()),
                         "session_dir": session_dir, "started": time.time(), "watcher_pid": watcher_pid})
        atexit.register(lambda: rec.unlink(missing_ok=True))  # a clean exit leaves nothing to reap
    except OSError as exc:  # a read-only home must not stop a run
        log.warning("could not record the embedded Ray instance for later cleanup: %s", exc)


def _alive(pid: int, start: Optional[str]) -> bool:
    now = _proc_start_time(pid)
    return now is not None and (start is None or now == start)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _holds_file_under(entry: Path, folder: str) -> bool:
    """Whether process ``entry`` (a ``/proc/PID`` path) has a file open under ``folder``."""
    prefix = folder.rstrip("/") + "/"
    try:
        fds = os.listdir(entry / "fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(entry / "fd" / fd).startswith(prefix):
                return True
        except OSError:
            continue
    return False


def tagged_processes(tag: str, session_dir: Optional[str] = None) -> list[int]:
    """PIDs of the running Ray processes (``ray::*`` or a Ray binary) of the embedded instance ``tag``:
    those whose environment carries the tag, or that hold a file open under its ``session_dir``
    (Ray's agents, whose retitling wipes the environment that ``/proc`` shows). Zombies are left out."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if not (cmd.startswith(b"ray::") or b"/ray/" in cmd):
                continue
            ours = needle in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if not ours and session_dir:
            ours = _holds_file_under(entry, session_dir)
        if ours and _running(int(entry.name)):
            found.append(int(entry.name))
    return found


def reap_orphans(grace_s: float = 3.0) -> list[int]:
    """Stop what embedded instances of dead drivers left running; return the PIDs signalled.

    Only processes carrying the tag of a recorded instance whose driver is gone are touched, so a
    live run, a test session's Ray or another program's cluster is never affected. Linux only (reads
    ``/proc``); elsewhere a no-op.
    """
    d = registry_dir()
    if not Path("/proc/self/environ").exists() or not d.is_dir():
        return []
    killed: list[int] = []
    for rec_path in sorted(d.glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
            tag, pid = rec["tag"], int(rec["driver_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            rec_path.unlink(missing_ok=True)
            continue
        if _alive(pid, rec.get("driver_start")):
            continue
        pids = tagged_processes(tag, rec.get("session_dir"))
        killed.extend(pids)
        stop_processes(pids, grace_s)
        rec_path.unlink(missing_ok=True)
    return killed


def stop_processes(pids: list[int], grace_s: float = 3.0) -> None:
    """SIGTERM ``pids``, then SIGKILL those still running after ``grace_s`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.time() + grace_s
        while pids and time.time() < deadline:
            pids = [p for p in pids if _running(p)]
            time.sleep(0.1)


# Ray Train v2's detached PlacementGroupCleaner asks the State API every second whether the train
# controller is alive. The State API is served by the dashboard, which the embedded instance does not
# start (it needs ray[default]'s aiohttp/grpc stack and a process of its own), so the cleaner logs a
# warning every second of every training job: 2,301 of the 2,723 lines of a `make bench-accuracy` log.
# It cannot do its job there anyway (its job is releasing a dead controller's placement group, which
# the local instance does when the driver exits), so the embedded instance silences that one logger.
# A cluster given by --ray-address keeps its dashboard and this warning.
_PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
# Ray Train v2's controller asks its autoscaling coordinator for resources with a fixed 5 s timeout; on a
# busy small machine the call times out now and then and the client logs a WARNING with the whole
# traceback ("safe to ignore ... if it only happens transiently"), which make run and the fault matrix
# printed at load 3-15 while training went on unharmed. On the embedded instance there is no autoscaler to
# ask (the resources are the machine's), so that logger is silenced there too; a real failure to place the
# workers still ends the job with Ray Train's own error.
_AUTOSCALING_CLIENT_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"


QUIETED_LOGGERS = (_PG_CLEANER_LOGGER, _AUTOSCALING_CLIENT_LOGGER)


class _ErrorsOnly(logging.Filter):
    """Passes records of ERROR and above. A filter on the logger, not its level: Ray Train's controller runs
    ``logging.config.dictConfig`` for ``ray.train`` after this hook, which resets the level (and handlers)
    of every existing ``ray.train.*`` logger to NOTSET but leaves a logger's filters alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def quiet_worker_logs() -> None:
    """``worker_process_setup_hook`` of the embedded Ray instance (runs in every worker process)."""
    for name in QUIETED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())
    pin_own_address()


def pin_own_address() -> None:
    """Point Ray's address discovery in this worker at the instance it belongs to (``RAY_ADDRESS``).

    Code in a worker that calls Ray's State API without an address (Ray Train's placement group
    cleaner asks every second whether its controller lives) resolves "the" local instance by listing
    the GCS processes of the machine; with two runs side by side (two embedded instances) that raises
    ``ConnectionError: Found multiple active Ray instances`` and a traceback per job. The worker knows
    its own GCS, so it is passed down instead of discovered. Only workers are pinned: the driver's
    environment stays as the user left it (a later ``ray.init()`` in it must not reach a stopped
    instance)."""
    try:
        import ray

        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception as exc:  # noqa: BLE001 - a private detail must never stop a worker
        log.debug("could not pin RAY_ADDRESS in a worker: %s", exc)
