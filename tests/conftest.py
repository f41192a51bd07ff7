"""Fixtures shared by every test package: database URLs for each backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg

_unreachable: str | None = None  # remembered so that later tests do not wait again


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL onto an empty Postgres schema of its own, dropped afterwards.

    Skips when Postgres is unreachable, or fails if ``REQUIRE_POSTGRES=1``.
    """
    global _unreachable
    if _unreachable is not None:
        pg.skip_or_fail(_unreachable)
    schemas = pg.schemas()
    try:
        url = schemas.new()
    except pg.PostgresUnreachable as exc:
        _unreachable = str(exc).splitlines()[0]
        pg.skip_or_fail(_unreachable)
    try:
        yield url
    finally:
        schemas.drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL onto a new SQLite file in the test's temporary directory."""
    return f"sqlite:///{tmp_path}/events.db"
