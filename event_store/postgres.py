"""``PostgresEventStore``: the server backend, psycopg 3 through SQLAlchemy.

Positions come from an identity column, and a sequence hands out numbers in the order
transactions *ask*, not the order they *commit*. A reader of ``read_all`` could then see
position 12 committed while 11 is still in flight, move past 11, and miss it forever.
Each append therefore takes a transaction-scoped advisory lock (one per schema) before
it checks versions and inserts, so append transactions commit in position order. The
commit is the costly part either way; callers batch appends (see ``aio``) to share it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    URL,
    BigInteger,
    Connection,
    String,
    and_,
    bindparam,
    create_engine,
    func,
    make_url,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

from .sql import SqlEventStore, events

__all__ = ["PostgresEventStore", "postgres_url"]

# Advisory lock keys: (class, hashtext(schema)). Distinct classes so that a long
# migration and appends do not look like the same lock in pg_locks.
_APPEND_LOCK = text(
    "SELECT pg_advisory_xact_lock(720501, hashtext(coalesce(current_schema(), '')))"
)
_MIGRATE_LOCK = text(
    "SELECT pg_advisory_xact_lock(720502, hashtext(coalesce(current_schema(), '')))"
)

# Keys as two arrays joined against the table: one statement text whatever the batch
# size, so the server-side prepared plan is reused.
_KEYS = (
    func.unnest(
        bindparam("stream_ids", type_=ARRAY(String)),
        bindparam("versions", type_=ARRAY(BigInteger)),
    )
    .table_valued("stream_id", "version")
    .render_derived()
    .alias("k")
)
_EXISTING_VERSIONS = select(events.c.stream_id, events.c.version).select_from(
    _KEYS.join(
        events,
        and_(events.c.stream_id == _KEYS.c.stream_id, events.c.version == _KEYS.c.version),
    )
)

DEFAULT_CONNECT_TIMEOUT_S = 10


def postgres_url(url: str | URL) -> URL:
    """The URL with the psycopg 3 driver; ``postgresql://`` and ``postgres://`` map to it."""
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a postgresql URL: {parsed.render_as_string()!r}")
    driver = parsed.get_driver_name()
    if "+" not in parsed.drivername:
        return parsed.set(drivername="postgresql+psycopg")
    if driver != "psycopg":
        raise ValueError(f"unsupported Postgres driver {driver!r}; use postgresql+psycopg://")
    return parsed


class PostgresEventStore(SqlEventStore):
    """An event store in a Postgres database (the schema first on the search_path).

    Connection options in the URL are passed to libpq, e.g.
    ``?options=-csearch_path%3Dmyschema`` selects the schema.
    """

    ordered_returning = True

    def __init__(
        self,
        url: str | URL,
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        connect_args: dict[str, Any] | None = None,
        **engine_options: Any,
    ) -> None:
        parsed = postgres_url(url)
        args = dict(connect_args or {})
        if "connect_timeout" not in parsed.query:
            # Without one, a host that drops packets holds a caller for minutes.
            args.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)
        engine = create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            connect_args=args,
            **engine_options,
        )
        # Reads are single statements: autocommit saves the BEGIN and ROLLBACK round trips.
        super().__init__(engine, engine.execution_options(isolation_level="AUTOCOMMIT"))

    def _existing_versions(
        self, conn: Connection, keys: list[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        params = {"stream_ids": [k[0] for k in keys], "versions": [k[1] for k in keys]}
        return {(s, v) for s, v in conn.execute(_EXISTING_VERSIONS, params)}

    def _lock_appends(self, conn: Connection) -> None:
        conn.execute(_APPEND_LOCK)

    def _lock_migrations(self, conn: Connection) -> None:
        conn.execute(_MIGRATE_LOCK)
