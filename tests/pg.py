"""The test Postgres server: where it is, and what a test does when it cannot be reached.

The server comes from ``BANK_TEST_POSTGRES_URL``; a test gets throwaway schemas on it from
``schemas()`` (``bank_cli.harness.Schemas``), each URL set to its own schema.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

from bank_cli.harness import DEFAULT_POSTGRES_URL, PostgresUnreachable, Schemas

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "PostgresUnreachable",
    "base_url",
    "schemas",
    "skip_or_fail",
]


def skip_or_fail(message: str) -> NoReturn:
    """Skip the test, or fail it when ``REQUIRE_POSTGRES=1`` says Postgres must be tested."""
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(message)
    pytest.skip(f"{message}; set REQUIRE_POSTGRES=1 to make this a failure")


def base_url() -> str:
    return os.environ.get("BANK_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def schemas() -> Schemas:
    """Throwaway schemas on the test server; ``drop`` removes them all."""
    return Schemas(base_url())
