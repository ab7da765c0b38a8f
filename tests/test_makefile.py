"""`make clean` removes only what can be rebuilt; results go only with `make clean-runs`, which says so."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(target: str) -> str:
    """The commands ``make TARGET`` would run, without running them (``make -n``)."""
    res = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _removed_paths(commands: str) -> set[str]:
    return {p for line in commands.splitlines() if line.startswith("rm ") for p in line.split()[1:] if not p.startswith("-")}


def test_clean_keeps_runs():
    out = _dry_run("clean")
    removed = _removed_paths(out)
    assert {".venv", "bench/results", ".pytest_cache", "*.egg-info"} <= removed
    assert not any(re.match(r"^(\./)?runs(/|$)", p) for p in removed), out
    assert "runs" not in out.split()


def test_clean_runs_says_what_it_deletes_and_deletes_runs():
    out = _dry_run("clean-runs")
    assert _removed_paths(out) == {"runs"}
    echo = [line for line in out.splitlines() if line.startswith("echo")]
    assert echo and "runs/" in echo[0] and "results" in echo[0]


def test_help_lists_both_targets():
    res = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, timeout=60)
    assert "make clean-runs" in res.stdout and "keeps runs/" in res.stdout


def test_the_converged_oracle_cache_survives_make_clean():
    """bench-accuracy caches its converged oracle under runs/ (default ``runs/cache``), which `clean` keeps."""
    from pipelines.loop import ORACLE_CACHE

    assert ORACLE_CACHE.parts[0] == "runs" and "runs" not in _removed_paths(_dry_run("clean"))
