"""The public field validators (noisystudent.validate): ranges, choices, field kinds, and the layering
that keeps the core config free of the method registry."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from noisystudent import validate
from noisystudent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Section:
    rate: float = field(default=0.5, metadata=validate.range(0, 1, hi_open=True))
    count: Optional[int] = field(default=None, metadata=validate.range(1))
    mode: Literal["a", "b"] = "a"


@dataclass
class Root:
    section: Section = field(default_factory=Section)
    names: list[str] = field(default_factory=list)


@pytest.mark.parametrize("data, where, words", [
    ({"section": {"rate": 1.0}}, "section.rate", "must be < 1"),
    ({"section": {"rate": -0.1}}, "section.rate", "must be >= 0"),
    ({"section": {"count": 0}}, "section.count", "must be >= 1"),
    ({"section": {"count": 1.5}}, "section.count", "integer"),
    ({"section": {"mode": "c"}}, "section.mode", "one of a, b"),
    ({"section": {"rat": 0.1}}, "section.rat", "unknown key"),
    ({"names": ["x", 3]}, "names[1]", "string"),
    ({"section": 3}, "section", "mapping"),
])
def test_build_names_the_dotted_field(data, where, words):
    with pytest.raises(ConfigError) as err:
        validate.build(Root, data, "")
    assert err.value.field == where and words in str(err.value)


def test_build_converts_and_keeps_defaults():
    cfg = validate.build(Root, {"section": {"rate": 0, "count": None}}, "")
    assert cfg.section.rate == 0.0 and isinstance(cfg.section.rate, float) and cfg.section.count is None
    assert cfg.section.mode == "a" and cfg.names == []


def test_a_field_kind_is_validated_by_its_registered_owner():
    @dataclass
    class WithKind:
        thing: Optional[dict] = field(default=None, metadata=validate.kind("test-upper"))

    with pytest.raises(RuntimeError, match="test-upper"):
        validate.build(WithKind, {"thing": {"x": 1}}, "")
    validate.register_kind("test-upper", lambda v, name: {k.upper(): val for k, val in v.items()})
    assert validate.build(WithKind, {"thing": {"x": 1}}, "").thing == {"X": 1}
    assert validate.build(WithKind, {"thing": None}, "").thing is None


def test_core_config_imports_neither_the_method_registry_nor_torch():
    """config -> registry -> config was a cycle hidden by function-local imports; the registry now
    registers the `method` field kind with validate, and config imports only validate."""
    code = ("import sys, noisystudent.config; "
            "print(sorted(m for m in sys.modules if m.startswith('noisystudent.distill') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.strip() == "[]", out.stdout
