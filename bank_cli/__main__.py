"""``bank <command>``: each command lives in a module of this package and registers itself."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define ``register(subparsers)``; each adds one or more commands whose
# parser sets ``func`` to a callable taking the parsed arguments and returning an exit code.
# A module may also define ``EPILOG``, text shown at the end of ``bank --help``.
COMMAND_MODULES: list[str] = ["commands", "audit", "bench", "chaos"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bank",
        description="Bank accounts and transfers from the command line, and tools to check them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    epilogs = []
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"bank_cli.{name}")
        module.register(commands)
        if getattr(module, "EPILOG", None):
            epilogs.append(module.EPILOG)
    parser.epilog = "\n\n".join(epilogs) or None
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
