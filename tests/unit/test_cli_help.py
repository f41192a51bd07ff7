"""``bank --help`` and every command's ``--help`` load only what the parser needs.

Checked by the modules a fresh interpreter has imported once the help is printed, not by
timing: gRPC, protobuf, SQLAlchemy and psycopg are what made the help slow.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bank_cli.__main__ import COMMANDS, build_parser

# Runs ``bank <argv>`` and prints its exit status and the modules it imported.
_SCRIPT = """
import contextlib, io, json, sys
from bank_cli.__main__ import main
shown = io.StringIO()
with contextlib.redirect_stdout(shown):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit_:
        code = exit_.code
print(json.dumps({"code": code, "help": shown.getvalue(), "modules": sorted(sys.modules)}))
"""
DATABASES = ("sqlalchemy", "psycopg")
RPC = ("grpc", "google.protobuf")
# bench and chaos import gRPC when their module is imported.
RPC_AT_IMPORT = {"bench", "chaos"}


def bank_help(*argv: str) -> tuple[str, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["code"] == 0, answer
    return answer["help"], set(answer["modules"])


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The modules of ``packages`` among ``modules``."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_bank_help_lists_every_command_without_grpc_or_a_database_driver():
    shown, modules = bank_help("--help")
    for command in COMMANDS:
        assert f"\n    {command}" in shown
    assert "2    usage" in shown
    assert loaded(modules, (*DATABASES, *RPC)) == []
    assert loaded(modules, ("bank_cli",)) == ["bank_cli", "bank_cli.__main__", "bank_cli.options"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_commands_help_loads_no_database_driver(command):
    shown, modules = bank_help(command, "--help")
    assert f"usage: bank {command}" in shown
    assert loaded(modules, DATABASES) == []
    if command not in RPC_AT_IMPORT:
        assert loaded(modules, RPC) == []


def test_the_summaries_listed_without_importing_are_the_commands_own():
    def summaries(parser) -> dict[str, str]:
        (subparsers,) = [a for a in parser._actions if a.dest == "command"]
        return {action.dest: action.help for action in subparsers._choices_actions}

    assert summaries(build_parser([])) == summaries(build_parser())
    assert list(summaries(build_parser([]))) == list(COMMANDS)
