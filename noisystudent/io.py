"""Atomic file writing and checksums.

Every artifact of a run is written to a temporary name in its destination folder and renamed, so a
killed process leaves either the old file or the new one, never half of one. Readers can therefore
trust any file whose final name exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .diskspace import maybe_inject, out_of_space, out_of_space_errno

TMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary file starts with ``.tmp-`` so globbing readers (``*.parquet``) never see it.
    On an exception the temporary file is removed and ``path`` is untouched; a full disk, quota or
    read-only file system becomes :class:`~noisystudent.diskspace.DiskFullError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    except OSError as exc:
        code = out_of_space_errno(exc)
        if code is not None:
            raise out_of_space(path, code) from None
        raise
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts should be readable like any file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        maybe_inject(path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        code = out_of_space_errno(exc)
        if code is not None:  # a full disk is the user's to fix: one line naming the file (see diskspace)
            raise out_of_space(path, code) from None
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def link_folder(src: str | os.PathLike, dst: str | os.PathLike, keep: Callable[[Path], bool] = lambda f: True) -> None:
    """Make ``dst`` a folder of hard links to the files of ``src`` that ``keep`` accepts (copies where the file
    system has no hard links), built under a temporary name and renamed into place, so ``dst`` is never half made."""
    import shutil

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(dst.name + ".link-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and keep(f):
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def clean_temporaries(folder: str | os.PathLike) -> int:
    """Remove leftover ``.tmp-*`` files of a killed process in ``folder``; return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(TMP_PREFIX + "*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
