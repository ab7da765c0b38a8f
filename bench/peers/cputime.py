"""CPU seconds of a command and every process it starts (Ray's GCS, raylet and workers included).

Why sample ``/proc`` rather than ``getrusage(RUSAGE_CHILDREN)``: the kernel adds a process's time to its
parent only when the parent reaps it, and Ray's workers are children of the raylet, which is itself
killed at shutdown, so most of a Ray job's CPU never reaches the caller's rusage. Here the process tree
under the command is walked every ``interval`` seconds and each process's own user + system time is
kept at its largest value; the sum over every process seen is the command's CPU time. What a process
spends in its last ``interval`` before it exits, or a process that lives shorter than that, is missed
(under a second per process; the same method measures every arm of the bench). Linux only.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> Optional[tuple[int, float]]:
    """``(parent pid, own user+system seconds)`` of ``pid``, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _tree(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and all its descendants now."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = _stat(int(entry))
            if s is not None:
                stats[int(entry)] = s
    keep, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in keep:
            keep[pid] = stats[pid][1]
            frontier.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return keep


def run_measured(cmd: Sequence[str], env: Optional[dict] = None, log: Optional[Path] = None,
                 interval: float = 1.0) -> tuple[int, float, float]:
    """Run ``cmd`` (output to ``log``, else inherited); return ``(exit code, wall seconds, CPU seconds)``."""
    out = open(log, "w", encoding="utf-8") if log is not None else None
    seen: dict[int, float] = {}
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
        while proc.poll() is None:
            for pid, cpu in _tree(proc.pid).items():
                seen[pid] = max(cpu, seen.get(pid, 0.0))
            time.sleep(interval)
    finally:
        if out is not None:
            out.close()
    return proc.returncode, time.perf_counter() - t0, sum(seen.values())
