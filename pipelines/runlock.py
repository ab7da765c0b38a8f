"""One writer per run folder: an OS lock held by every command that writes into a run.

Two ``noisystudent run`` on the same folder (a second terminal, a job submitted twice) would write the
same artifacts at once; Ray Train of one then finds the other's checkpoint folder half gone. Every
writing command therefore holds ``RUN_DIR/.writer.lock`` for its whole life (:func:`run_lock`, applied
once per command by :func:`writes_run`). Reading commands (``status``, ``report``, ``labels inspect``,
``doctor``) never take it and never wait.

Why ``fcntl.flock`` and not a pid file alone: the kernel drops the lock when its holder ends, however it
ends (``kill -9`` included), so a lock can never be left held by a dead process, and there is no window
between "is the holder alive?" and "take it". The file also records who holds it (pid, host, start time,
the command) so the refused second writer can say whom to wait for. The record is cleared on a clean
release; a record still present when the lock is free means its holder was killed: the lock is taken
over and a warning says so.

What it guarantees on a shared file system (several machines, one run folder): Linux maps ``flock`` on
NFS (v3 with NLM, v4) to byte-range locks the server arbitrates, so a writer on another node is refused
too; file systems mounted with ``nolock`` / ``local_lock=all`` (and some FUSE mounts) keep locks local to
one machine, where only writers on the same machine exclude each other.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import functools
import json
import os
import socket
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from noisystudent.errors import NoisyStudentWarning, UserError

LOCK_NAME = ".writer.lock"

# folders this process holds, with how many nested holders: a command that calls another writing
# entry point (run -> a step) must not refuse itself (flock is per open file, not per process)
_HELD: dict[str, list] = {}


class RunLockedError(UserError):
    """Another live command writes into this run folder."""


class StaleLockWarning(NoisyStudentWarning):
    """The run folder's previous writer was killed without releasing; its lock was taken over."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_record(fd: int) -> Optional[dict]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 1 << 16)
        return json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return None


def _write_record(fd: int, record: Optional[dict]) -> None:
    os.ftruncate(fd, 0)
    if record is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)


def _holder(rec: Optional[dict]) -> str:
    if not rec:
        return "another process (it recorded nothing yet)"
    where = rec.get("host", "?")
    other_host = where != socket.gethostname()
    return (f"`{rec.get('command', '?')}` (pid {rec.get('pid', '?')} on {'another machine, ' if other_host else ''}"
            f"host {where}, since {rec.get('since', '?')})")


def _open(root: Path) -> int:
    try:
        root.mkdir(parents=True, exist_ok=True)
        return os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise UserError(f"run directory {root} is not writable: {exc.strerror or exc}") from None


@contextmanager
def run_lock(root: str | os.PathLike, command: Optional[str] = None) -> Iterator[Path]:
    """Hold the writer lock of run folder ``root`` (created if missing) for the ``with`` block.

    Raises :class:`RunLockedError` at once (never waits) when a live process holds it, naming the holder
    and what to do. Re-entrant within one process. ``command`` is what the record shows (default: argv).
    """
    root = Path(root).resolve()
    key = str(root)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield root
        finally:
            _HELD[key][1] -= 1
        return
    fd = _open(root)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"run folder {root} is being written by {_holder(_read_record(fd))}; wait for it to finish, or "
                "stop it and run this command again (it resumes where the run stopped). Reading commands "
                "(status, report) work meanwhile") from None
        stale = _read_record(fd)
        if stale:
            warnings.warn(f"run folder {root}: its previous writer {_holder(stale)} ended without releasing the "
                          "lock (killed?); taking it over and resuming", StaleLockWarning, stacklevel=3)
        _write_record(fd, {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(),
                           "command": command or _argv()})
        _HELD[key] = [fd, 1]
        try:
            yield root
        finally:
            del _HELD[key]
            try:
                _write_record(fd, None)  # a clean release leaves no record: a record means a killed holder
            except OSError:
                pass
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def _argv() -> str:
    args = sys.argv[1:]
    return " ".join(["noisystudent", *args]) if args else f"python (pid {os.getpid()})"


def writes_run(param: str) -> Callable:
    """Decorator of a CLI command that writes into the folder given by its keyword argument ``param``:
    the command runs holding that folder's lock. Put it under the decorator that turns UserError into
    exit code 2, so a refused writer exits 2 with one line."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with run_lock(kwargs[param]):
                return fn(*args, **kwargs)

        return wrapper

    return wrap
