"""Damaged artifacts of a finished step are named before a later step reads them: the file, the step that
made it and the command that rebuilds it, exit 2; ``doctor RUN_DIR`` checks a whole run. The session's
tiny real run (conftest ``finished_run``), copied and damaged per test (``run_copy``)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from noisystudent.cli import main


@pytest.fixture(autouse=True)
def _no_free_space_floor(monkeypatch):
    monkeypatch.setenv("NOISYSTUDENT_MIN_FREE_MB", "0")


def _invoke(*argv) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in argv])
    return res.exit_code, res.output


def _one_error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]


def test_doctor_on_an_intact_run(finished_run):
    code, out = _invoke("doctor", finished_run[0])
    assert code == 0 and "all intact" in out, out


def test_byte_flipped_shard_is_named_before_select_reads_it(run_copy):
    shard = run_copy / "gen-1" / "labels" / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    shard.write_bytes(bytes(data))
    code, out = _invoke("select", run_copy, "-g", "1", "--force")
    line = _one_error_line(out)
    assert code == 2
    assert str(shard) in line and "SHA-256" in line and "step gen-1/label" in line
    assert f"noisystudent label {run_copy} --generation 1 --force" in line
    code, out = _invoke("doctor", run_copy)
    assert code == 2 and f"damaged: {shard}" in out, out


def test_truncated_checkpoint_is_named_before_labeling(run_copy):
    ckpt = run_copy / "gen-0" / "teacher" / "model.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code, out = _invoke("label", run_copy, "-g", "1", "--force", "--quiet")
    line = _one_error_line(out)
    assert code == 2 and str(ckpt) in line and "bytes" in line and "step gen-0/teacher" in line, line
    assert f"noisystudent teacher {run_copy / 'config.yaml'} --run-dir {run_copy} --force" in line


def test_deleted_success_marker_is_named_before_the_student_trains(run_copy):
    marker = run_copy / "gen-1" / "selected" / "_SUCCESS"
    marker.unlink()
    code, out = _invoke("student", run_copy, "-g", "1", "--force", "--quiet")
    line = _one_error_line(out)
    assert code == 2 and f"{marker} is missing" in line and "step gen-1/select" in line, line
    assert f"noisystudent select {run_copy} --generation 1 --force" in line


def test_full_disk_while_selecting_is_one_line_and_the_same_command_resumes(run_copy, monkeypatch):
    """ENOSPC injected where the selection shard is written (the atomic writer): exit 2, one line naming the
    file; nothing recorded as done; the same command then succeeds."""
    monkeypatch.setenv("NOISYSTUDENT_FAULT_ENOSPC", "part-00000.parquet")
    code, out = _invoke("select", run_copy, "-g", "1", "--force")
    line = _one_error_line(out)
    shard = run_copy / "gen-1" / "selected" / "part-00000.parquet"
    assert code == 2 and f"could not write {shard}: no space left" in line and "MiB free" in line, line
    assert "run the same command again" in line
    assert not (run_copy / "gen-1" / "selected" / "_SUCCESS").exists()
    monkeypatch.delenv("NOISYSTUDENT_FAULT_ENOSPC")
    code, out = _invoke("select", run_copy, "-g", "1", "--force")
    assert code == 0 and (run_copy / "gen-1" / "selected" / "_SUCCESS").is_file(), out
    assert _invoke("doctor", run_copy)[0] == 0
