"""A full disk (or quota, or a read-only file system) as one line naming the file, not a traceback.

Writing an artifact that fails with ENOSPC, EDQUOT or EROFS is something the user fixes (free space,
raise the quota, remount), and everything written before stays intact (artifacts are written to a
temporary name and renamed), so the same command resumes afterwards. :func:`out_of_space` builds that
message where the file is known (the atomic writer); :func:`find_user_error` digs it, or a raw
out-of-space ``OSError``, out of the wrappers Ray puts around a worker's exception (``RayTaskError``,
Ray Train's ``WorkerGroupError``, Ray Data's ``UserCodeException``), so the CLI can print the one line
and exit 2 wherever the write happened: driver, Ray Train worker or labeling actor.

``NOISYSTUDENT_FAULT_ENOSPC=NAME`` makes the atomic writer fail with ENOSPC when it writes a file whose
name contains NAME (after the data went to the temporary file, as a real full disk would): the fault
injection of the reliability tests, inherited by Ray workers. A real small file system (tmpfs) is tested
too where the tests may mount one.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Optional

from .errors import UserError

OUT_OF_SPACE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the file system is read-only"}
FAULT_ENV = "NOISYSTUDENT_FAULT_ENOSPC"
# pyarrow's OSError carries the errno only in its text: "[errno 28] No space left on device"
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)


_DISK_FULL_IN_TEXT = re.compile(r"DiskFullError: (could not write [^\n]*)")


class DiskFullError(UserError):
    """An artifact could not be written for lack of space, quota or a writable file system."""


def out_of_space_errno(exc: BaseException) -> Optional[int]:
    """ENOSPC / EDQUOT / EROFS when ``exc`` is an OSError for one of them, else None."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in OUT_OF_SPACE:
        return exc.errno
    m = _ERRNO_IN_TEXT.search(str(exc))
    return int(m.group(1)) if m and int(m.group(1)) in OUT_OF_SPACE else None


def _free(path: Path) -> str:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return f"{shutil.disk_usage(p).free / (1 << 20):,.1f} MiB free"
            except OSError:
                break
    return "free space unknown"


def out_of_space(path: str | os.PathLike, code: int) -> DiskFullError:
    """The one-line error for writing ``path`` failing with ``code`` (an errno of :data:`OUT_OF_SPACE`)."""
    path = Path(path)
    return DiskFullError(f"could not write {path}: {OUT_OF_SPACE[code]} ({_free(path.parent)} on that file system); "
                         "nothing written before is damaged: free space (or raise the quota, or remount it "
                         "writable) and run the same command again, it resumes where it stopped")


def maybe_inject(path: Path) -> None:
    """Raise ENOSPC when :data:`FAULT_ENV` names part of ``path``'s file name (fault-injection tests)."""
    needle = os.environ.get(FAULT_ENV)
    if needle and needle in path.name:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: causes, contexts and Ray's wrappers, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), getattr(e, "controller_failure", None), e.__cause__, e.__context__]
        todo += list((getattr(e, "worker_failures", None) or {}).values())


def find_user_error(exc: BaseException) -> Optional[UserError]:
    """The user's error inside ``exc``: a :class:`UserError` it wraps (Ray re-raises a worker's exception
    as a subclass of both its own wrapper and the original type, so the original, when there, is
    preferred), or an out-of-space ``OSError`` turned into :class:`DiskFullError`. None when neither."""
    found: list[BaseException] = list(_chain(exc))
    originals = [e for e in found if type(e).__module__.split(".")[0] != "ray"]  # Ray's wrappers say it all twice
    users = [e for e in originals if isinstance(e, UserError)]
    if users:
        return users[0]  # type: ignore[return-value]
    for e in originals:
        code = out_of_space_errno(e)
        if code is not None:
            name = getattr(e, "filename", None)
            if name:
                return out_of_space(name, code)
            return DiskFullError(f"a write failed: {OUT_OF_SPACE[code]} ({str(e).splitlines()[0]}); free space and "
                                 "run the same command again, it resumes where it stopped")
    for e in found:  # Ray Data keeps a worker's exception only as text in its UserCodeException's traceback
        m = _DISK_FULL_IN_TEXT.search(str(e))
        if m:
            return DiskFullError(m.group(1))
    return None
