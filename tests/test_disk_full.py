"""A full disk, a quota or a read-only file system while writing an artifact: one line naming the file,
the free space and that the same command resumes; the old file intact, no temporary left. Tested on a
real small tmpfs where the tests may mount one (root), and by injecting the errno into the atomic writer."""

from __future__ import annotations

import errno
import gc
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from noisystudent.diskspace import FAULT_ENV, DiskFullError, find_user_error
from noisystudent.errors import UserError
from noisystudent.io import atomic_path, write_bytes, write_json


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _assert_message(exc: BaseException, path: Path) -> None:
    msg = str(exc)
    assert "\n" not in msg
    assert str(path) in msg and "MiB free" in msg and "run the same command again" in msg, msg


def test_real_full_disk_bytes_and_parquet(small_fs):
    old = small_fs / "model.pt"
    write_bytes(old, b"the previous checkpoint")
    with pytest.raises(DiskFullError) as info:
        write_bytes(old, bytes(2 << 20))  # 2 MiB into 1 MiB
    _assert_message(info.value, old)
    assert old.read_bytes() == b"the previous checkpoint"
    table = pa.table({"x": np.random.default_rng(0).random(400_000)})  # ~3 MiB of incompressible doubles
    shard = small_fs / "part-00000.parquet"
    with pytest.raises(DiskFullError) as info:  # pyarrow says "[errno 28]" only in its text
        with atomic_path(shard) as tmp:
            pq.write_table(table, tmp, compression="none")
    _assert_message(info.value, shard)
    assert sorted(p.name for p in small_fs.iterdir()) == ["model.pt"]  # no temporary left


def test_read_only_file_system(small_fs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(DiskFullError, match="read-only") as info:
        write_json(small_fs / "state.json", {"steps": {}})
    assert str(small_fs / "state.json") in str(info.value)


def test_injected_enospc_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "gen-1" / "labels" / "part-00003.parquet"
    write_bytes(path, b"old")
    monkeypatch.setenv(FAULT_ENV, "part-00003")
    with pytest.raises(DiskFullError) as info:
        write_bytes(path, b"new")
    _assert_message(info.value, path)
    assert path.read_bytes() == b"old" and [p.name for p in path.parent.iterdir()] == [path.name]
    write_bytes(tmp_path / "other.json", b"{}")  # other files are written as usual


def test_other_os_errors_are_not_disguised(tmp_path):
    with pytest.raises(IsADirectoryError):
        with atomic_path(tmp_path / "x") as tmp:
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(tmp))


def test_found_inside_ray_wrappers(ray_session, tmp_path):
    """What a Ray worker raised reaches the CLI wrapped in RayTaskError: the one line is dug out of it."""

    def fail_in_worker(kind: str, where: str):  # defined here: pickled by value (workers cannot import tests/)
        if kind == "user":
            from noisystudent.diskspace import out_of_space

            raise out_of_space(where, errno.ENOSPC)
        raise OSError(errno.EDQUOT, "Disk quota exceeded", where)

    remote = ray_session.remote(fail_in_worker)
    target = str(tmp_path / f"{uuid.uuid4().hex}.pt")
    for kind, needle in (("user", "no space left"), ("raw", "disk quota exceeded")):
        with pytest.raises(Exception) as info:
            ray_session.get(remote.remote(kind, target))
        found = find_user_error(info.value)
        assert isinstance(found, UserError) and target in str(found) and needle in str(found), str(found)
        assert "\n" not in str(found) and "Traceback" not in str(found)
    assert find_user_error(ValueError("unrelated")) is None


def test_found_inside_ray_data_wrappers(ray_session, tmp_path):
    """Ray Data keeps an actor's exception only as text (UserCodeException's traceback): still one line."""
    import ray.data

    target = str(tmp_path / "part-00000.parquet")

    class Writer:  # a callable class: an actor pool, like the labeling job
        def __call__(self, batch):
            from noisystudent.diskspace import out_of_space

            raise out_of_space(target, errno.ENOSPC)

    # num_cpus=0: under pytest the failed job's actor outlives the test (the log records pytest keeps for the
    # report hold the exception's traceback, and with it the dataset), and a reserved CPU would starve the
    # suite's later two-worker Ray Train jobs
    ds = ray.data.from_items([{"x": 1}]).map_batches(Writer, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0)
    with pytest.raises(Exception) as info:
        ds.take_all()
    found = find_user_error(info.value)
    message = repr(info.value)[:2000]
    del ds, info
    gc.collect()
    assert isinstance(found, DiskFullError) and f"could not write {target}" in str(found), message
    assert "\n" not in str(found)
