"""Command-line settings: every flag has an environment variable and a working default."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any


def env_flag(parser: argparse.ArgumentParser, flag: str, env: str, default: str, help: str) -> None:
    parser.add_argument(
        flag, default=os.environ.get(env, default), help=f"{help} (${env}; default {default})"
    )


def common_parser(prog: str, description: str, listen: str, db: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    env_flag(parser, "--listen", "BANK_LISTEN", listen, "address to serve on, HOST:PORT")
    env_flag(parser, "--db", "BANK_DB", db, "SQLAlchemy URL of this service's database")
    env_flag(parser, "--grace", "BANK_GRACE", "10", "seconds to finish calls in flight on SIGTERM")
    env_flag(parser, "--log-level", "BANK_LOG_LEVEL", "INFO", "log level")
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Runs the service's main coroutine, on uvloop when it is installed.

    ``BANK_EVENT_LOOP=asyncio`` forces the standard loop (for comparison or debugging).
    """
    if os.environ.get("BANK_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
