"""``SqliteEventStore``: the embedded default backend, one database file.

Durability: WAL journal with ``synchronous=FULL``, so a commit survives power loss.
Concurrency: write transactions start with ``BEGIN IMMEDIATE`` and so take the file's
write lock up front; a deferred transaction that reads first and then upgrades to a
writer can fail with SQLITE_BUSY without waiting, which immediate ones never do.
Holding the write lock for the whole append also makes positions commit in order.
Several processes may share one file; each waits up to the busy timeout for the lock.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from sqlalchemy import (
    URL,
    Connection,
    Text,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    literal_column,
    make_url,
    select,
)
from sqlalchemy.pool import QueuePool

from .sql import SqlEventStore, events

__all__ = ["SqliteEventStore"]

# Connections checked out through the read engine carry this execution option and run
# each SELECT in autocommit: no BEGIN, so readers never queue behind the writer.
_READ_ONLY = "event_store_read_only"

# SQLite plans a row-value IN list as a scan of the whole index; a join against the
# keys, passed as one JSON array, probes the unique index once per key instead.
_KEYS = func.json_each(bindparam("keys", type_=Text)).table_valued("value").alias("k")
_EXISTING_VERSIONS = select(events.c.stream_id, events.c.version).select_from(
    _KEYS.join(
        events,
        and_(
            events.c.stream_id == func.json_extract(_KEYS.c.value, literal_column("'$[0]'")),
            events.c.version == func.json_extract(_KEYS.c.value, literal_column("'$[1]'")),
        ),
    )
)

# INSERT .. RETURNING, which hands back the positions of one append in one statement.
MIN_SQLITE_VERSION = (3, 35, 0)


def sqlite_url(url_or_path: str) -> URL:
    """A ``sqlite:///`` URL for a file; ``ValueError`` for in-memory databases."""
    if "://" not in url_or_path:
        url = URL.create("sqlite", database=url_or_path)
    else:
        url = make_url(url_or_path)
    if url.get_backend_name() != "sqlite" or url.get_driver_name() != "pysqlite":
        raise ValueError(f"not a sqlite:/// URL: {url_or_path!r}")
    database = url.database or ""
    if (
        database in ("", ":memory:")
        or "mode=memory" in database
        or url.query.get("mode") == ("memory")
    ):
        raise ValueError(
            "in-memory SQLite is not supported: every pooled connection would see its own "
            "empty database. Use sqlite:///path/to/file.db, or memory:// for the "
            "in-memory store."
        )
    return url


class SqliteEventStore(SqlEventStore):
    """An event store in one SQLite file. Thread-safe; connections come from a pool."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        busy_timeout_ms: int = 5000,
        **engine_options: Any,
    ) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:  # pragma: no cover - platform
            raise RuntimeError(f"SQLite >= 3.35 is required, found {sqlite3.sqlite_version}")
        self.busy_timeout_ms = int(busy_timeout_ms)
        engine = create_engine(
            sqlite_url(url),
            poolclass=QueuePool,
            pool_size=pool_size,
            max_overflow=max_overflow,
            connect_args={"check_same_thread": False, "timeout": self.busy_timeout_ms / 1000},
            **engine_options,
        )
        event.listen(engine, "connect", self._on_connect)
        event.listen(engine, "begin", _on_begin)
        super().__init__(engine, engine.execution_options(**{_READ_ONLY: True}))

    def _existing_versions(
        self, conn: Connection, keys: list[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        params = {"keys": json.dumps(keys, ensure_ascii=False)}
        return {(s, v) for s, v in conn.execute(_EXISTING_VERSIONS, params)}

    def _on_connect(self, dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # The driver must not issue its own BEGINs; _on_begin does, with the right mode.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            # WAL is a property of the file: the first connection switches it, later
            # ones find it set. Readers and the writer then no longer block each other.
            cursor.execute("PRAGMA journal_mode = WAL")
            # Per connection. FULL also syncs the WAL on every commit: without it a
            # power loss can undo commits that were reported durable.
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()


def _on_begin(conn: Any) -> None:
    if not conn.get_execution_options().get(_READ_ONLY, False):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
