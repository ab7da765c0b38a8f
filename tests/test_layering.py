"""Dependencies point one way (DESIGN.md): pipelines -> pseudo_labels -> noisystudent. The core imports
neither pipelines, pseudo_labels nor Ray, except the CLI, the outermost layer; nothing imports the CLI.
Checked on every import statement, function-local ones included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTER = ("pipelines", "pseudo_labels", "ray")


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in ``path`` (relative imports stay in their package)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _hits(files, banned) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in files for line, mod in _imports(p)
            if mod.split(".")[0] in banned]


def test_the_core_imports_neither_pipelines_pseudo_labels_nor_ray():
    cli = ROOT / "noisystudent" / "cli"
    core = [p for p in (ROOT / "noisystudent").rglob("*.py") if cli not in p.parents]
    assert core and _hits(core, OUTER) == []


def test_pseudo_labels_does_not_import_pipelines():
    assert _hits((ROOT / "pseudo_labels").rglob("*.py"), ("pipelines",)) == []


def test_nothing_imports_the_cli():
    cli = ROOT / "noisystudent" / "cli"
    files = [p for d in ("noisystudent", "pseudo_labels", "pipelines") for p in (ROOT / d).rglob("*.py")
             if cli not in p.parents]
    hits = [f"{p.relative_to(ROOT)}:{line}" for p in files for line, mod in _imports(p)
            if mod == "noisystudent.cli" or mod.startswith("noisystudent.cli.")]
    assert hits == []
