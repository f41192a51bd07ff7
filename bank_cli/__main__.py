"""``bank <command>``: each command lives in a module of this package and registers itself.

Only the module of the command being run is imported: ``bank --help`` imports none, and
``bank open --help`` no gRPC, database driver or audit. ``COMMANDS`` lists every command
with its module and its line in ``bank --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence

from bank_cli.options import EXIT_STATUS_HELP

# Command -> (module defining ``register(subparsers)``, its line in ``bank --help``). The
# module's ``register`` adds the command, with a parser that sets ``func`` to a callable
# taking the parsed arguments and returning an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "open": ("commands", "open an account"),
    "deposit": ("commands", "put money into an account"),
    "withdraw": ("commands", "take money out of an account"),
    "transfer": ("commands", "move money from one account to another"),
    "hold": ("commands", "hold money for a transfer, to post or void later"),
    "post": ("commands", "move the money of a hold, all of it or part"),
    "void": ("commands", "release a hold: nothing moves"),
    "reverse": ("commands", "send the money of a completed transfer back"),
    "show": ("commands", "show an account and its open reservations"),
    "history": ("commands", "list an account's events, oldest first"),
    "watch": ("commands", "print an account's events as they happen"),
    "transfers": ("commands", "list an account's transfers, newest first"),
    "close": ("commands", "close an empty account"),
    "overdraft": ("commands", "set how far below zero an account may go"),
    "statement": ("commands", "an account's movements between two instants, with its balances"),
    "audit": ("audit", "check the account and transfer stores against each other"),
    "bench": ("bench", "run the seed experiment and more: reservation protocol vs naive locking"),
    "chaos": ("chaos", "run thousands of transfers while killing the services, then audit"),
}


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser of ``bank``. With ``commands``, only their modules are imported and the
    other commands are listed by name and summary; without, every module is."""
    parser = argparse.ArgumentParser(
        prog="bank",
        description="Bank accounts and transfers from the command line, and tools to check them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_STATUS_HELP,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = COMMANDS if commands is None else [c for c in commands if c in COMMANDS]
    for module in dict.fromkeys(COMMANDS[command][0] for command in wanted):
        importlib.import_module(f"bank_cli.{module}").register(subparsers)
    # The rest by name only; in the order of COMMANDS when none was imported.
    for command, (_, summary) in COMMANDS.items():
        if command not in subparsers.choices:
            subparsers.add_parser(command, help=summary)
    return parser


def _command_in(argv: Sequence[str]) -> list[str]:
    """The command named in ``argv`` (its first word that is not an option), if any."""
    return [arg for arg in argv if not arg.startswith("-")][:1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_in(argv)).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
