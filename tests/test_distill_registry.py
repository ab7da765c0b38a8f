"""Method discovery: every file of distill/methods/ is imported and registers a method (a file that
does not would be silently missing from `noisystudent methods` and from configs)."""

from __future__ import annotations

from pathlib import Path

import pytest

import noisystudent.distill.methods as methods_pkg
from noisystudent.distill import get_method, list_methods

FOLDER = Path(methods_pkg.__file__).parent
FILES = sorted(p.stem for p in FOLDER.glob("*.py") if not p.stem.startswith("_"))


def test_discovery_finds_every_file_in_the_folder():
    assert list(methods_pkg.MODULES) == FILES and len(FILES) >= 12


@pytest.mark.parametrize("module", FILES)
def test_every_method_file_registers_a_method(module):
    owners = {get_method(n).__module__ for n in list_methods()}
    assert f"noisystudent.distill.methods.{module}" in owners, f"methods/{module}.py registers no method"


def test_every_registered_method_lives_in_the_folder():
    assert all(get_method(n).__module__.startswith("noisystudent.distill.methods.") for n in list_methods())
