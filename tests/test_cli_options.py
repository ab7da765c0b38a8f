"""Every command keeps its options: the CLI's parameters (names, types, defaults, help) against a snapshot.

``tests/cli_options.json`` is what the commands offered when it was written; a change to a command's
options shows here as a diff, and is made on purpose by regenerating the snapshot:
``PYTHONPATH=. python tests/test_cli_options.py > tests/cli_options.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner

from noisystudent.cli import main

SNAPSHOT = Path(__file__).with_name("cli_options.json")


def _commands(cmd: click.Command, path: tuple[str, ...] = ()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _commands(cmd.commands[name], (*path, name))


def _param(p: click.Parameter) -> dict:
    """The parameter as click describes it (name, opts, type with its choices or range, default, help), as JSON."""
    return json.loads(json.dumps(p.to_info_dict(), default=str))


def describe() -> dict:
    """``{"group sub": {"help": docstring's first line, "params": [...]}}`` for every command of the CLI."""
    return {" ".join(path): {"help": cmd.get_short_help_str(200), "params": [_param(p) for p in cmd.params]}
            for path, cmd in _commands(main)}


def test_every_command_keeps_its_options():
    want = json.loads(SNAPSHOT.read_text())
    got = describe()
    assert sorted(got) == sorted(want), "commands added or removed"
    for name in want:
        assert got[name] == want[name], name


def test_every_command_has_help():
    for path, _ in _commands(main):
        res = CliRunner().invoke(main, [*path, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output, path


if __name__ == "__main__":
    print(json.dumps(describe(), indent=1))
