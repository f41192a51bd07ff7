"""Postgres schemas as separate databases: several services in one Postgres database, each
in a schema of its own, for a server that offers a single database.

``python -m event_store.schemas URL SCHEMA...`` creates each schema that is missing and
prints, one per line, the URL that puts every connection of a store in that schema
(``?options=-csearch_path%3D<schema>``, which libpq passes to the server).
"""

from __future__ import annotations

import argparse
import re
import sys

import psycopg
from psycopg import sql
from sqlalchemy.exc import ArgumentError

from .postgres import DEFAULT_CONNECT_TIMEOUT_S as _CONNECT_TIMEOUT
from .postgres import postgres_url

# Plain lower-case identifiers: they need no quoting in a search_path.
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def schema_url(url: str, schema: str) -> str:
    """``url`` with every connection's search_path set to ``schema`` (other libpq
    ``options`` in it are kept)."""
    _check(schema)
    parsed = postgres_url(url)
    options = parsed.query.get("options", "")
    if isinstance(options, tuple):
        options = " ".join(options)
    options = f"{options} -csearch_path={schema}".strip()
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


def create_schemas(url: str, schemas: list[str]) -> None:
    """Creates each of ``schemas`` that the database at ``url`` does not have yet."""
    for schema in schemas:
        _check(schema)
    # libpq does not know SQLAlchemy's "+driver" suffix.
    parsed = postgres_url(url).set(drivername="postgresql")
    conninfo = parsed.render_as_string(hide_password=False)
    timeout = {} if "connect_timeout" in parsed.query else {"connect_timeout": _CONNECT_TIMEOUT}
    with psycopg.connect(conninfo, autocommit=True, **timeout) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def _check(schema: str) -> None:
    if not _SCHEMA.fullmatch(schema):
        raise ValueError(f"schema {schema!r}: expected a lower-case identifier")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m event_store.schemas")
    parser.add_argument("url", metavar="URL", help="the Postgres database")
    parser.add_argument("schemas", nargs="+", metavar="SCHEMA")
    args = parser.parse_args(argv)
    try:
        shown = postgres_url(args.url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError) as exc:
        parser.error(f"{args.url!r}: not a postgresql:// URL ({exc})")
    try:
        create_schemas(args.url, args.schemas)
    except ValueError as exc:
        parser.error(str(exc))
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"cannot create the schemas in {shown}: {first}", file=sys.stderr)
        return 1
    for schema in args.schemas:
        print(schema_url(args.url, schema))
    return 0


if __name__ == "__main__":
    sys.exit(main())
