"""Throwaway Postgres schemas, so every test (or test process) gets an empty database.

The server comes from ``BANK_TEST_POSTGRES_URL``. A schema URL carries
``?options=-csearch_path%3D<schema>``, which every connection made from it honours.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "PostgresUnreachable",
    "base_url",
    "create_schema",
    "drop_schema",
    "schema_url",
    "skip_or_fail",
    "temporary_schema",
]

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class PostgresUnreachable(Exception):
    """The test Postgres server did not accept a connection."""


def skip_or_fail(message: str) -> NoReturn:
    """Skip the test, or fail it when ``REQUIRE_POSTGRES=1`` says Postgres must be tested."""
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(message)
    pytest.skip(f"{message}; set REQUIRE_POSTGRES=1 to make this a failure")


def base_url() -> str:
    return os.environ.get("BANK_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _connect(url: str) -> psycopg.Connection:
    # libpq does not know SQLAlchemy's "+driver" suffix.
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        raise PostgresUnreachable(f"Postgres not reachable at {url}: {exc}") from exc


def create_schema(url: str | None = None) -> str:
    """Create an empty schema ``t_<random hex>`` and return its name."""
    schema = f"t_{uuid.uuid4().hex}"
    with _connect(url or base_url()) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return schema


def drop_schema(schema: str, url: str | None = None) -> None:
    with _connect(url or base_url()) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def schema_url(schema: str, url: str | None = None) -> str:
    """``url`` with every connection's search_path set to ``schema``."""
    url = url or base_url()
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def temporary_schema(url: str | None = None) -> Iterator[str]:
    """A URL onto a fresh schema, dropped (with everything in it) afterwards."""
    url = url or base_url()
    schema = create_schema(url)
    try:
        yield schema_url(schema, url)
    finally:
        drop_schema(schema, url)
