"""A watcher beside each embedded Ray instance that stops its agents soon after the driver dies.

After ``kill -9`` of a driver, Ray 2.60's per-node agents (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``, ~180 MB together) notice their raylet is gone within a second but then
spend 60 s trying to tell the dead GCS about it (``publish_error_to_driver`` has a fixed 60 s
timeout) before exiting; measured here: both still running 49 s after the kill, gone after ~65 s.
Earlier the issue saw them run until the next start. The driver cannot clean up after a SIGKILL, so
:func:`start_watcher` starts one small process per instance (stdlib only, no Ray, its own session so a
Ctrl-C or a kill of the driver's process group does not take it along) that polls the driver's pid
and, once the driver is gone, stops what is left of that instance (the same rule as
:func:`pipelines.ray_runtime.reap_orphans`: the instance's tag or its session folder, never another
instance) and removes its record. It also ends when the instance's processes are all gone (a
``ray.shutdown()`` in a driver that lives on). The reaping at the next start stays, for a watcher
killed along with its driver (an OOM kill of the whole cgroup).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

POLL_S = 0.5
IDLE_CHECK_S = 10.0  # how often it looks whether the instance still has processes


def start_watcher(tag: str, session_dir: Optional[str]) -> Optional[int]:
    """Start the watcher of the embedded instance ``tag`` for this driver; return its pid (None on failure)."""
    from .ray_runtime import _proc_start_time, log

    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    args = [sys.executable, "-m", "pipelines.ray_watch", tag, session_dir or "", str(os.getpid()),
            _proc_start_time(os.getpid()) or ""]
    try:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as exc:  # never stop a run for it: the next start reaps instead
        log.warning("could not start the watcher of the embedded Ray instance: %s", exc)
        return None
    return proc.pid


def watch(tag: str, session_dir: Optional[str], driver_pid: int, driver_start: Optional[str]) -> list[int]:
    """Block until the driver is gone, then stop the instance's processes; return the pids stopped."""
    from .ray_runtime import _alive, _running, registry_dir, stop_processes, tagged_processes

    last_check = time.monotonic()
    while _alive(driver_pid, driver_start) and _running(driver_pid):  # a zombie driver is dead too
        time.sleep(POLL_S)
        if time.monotonic() - last_check > IDLE_CHECK_S:
            last_check = time.monotonic()
            if not tagged_processes(tag, session_dir):
                return []  # the instance was shut down; the driver lives on without it
    pids = tagged_processes(tag, session_dir)
    stop_processes(pids)
    (registry_dir() / f"{tag}.json").unlink(missing_ok=True)
    return pids


def main(argv: list[str]) -> None:
    tag, session, pid, start = argv
    watch(tag, session or None, int(pid), start or None)


if __name__ == "__main__":
    main(sys.argv[1:])
