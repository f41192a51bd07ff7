"""``SqliteEventStore``: the embedded default backend, one database file.

Durability: WAL journal with ``synchronous=FULL``, so a commit survives power loss.
Concurrency: write transactions start with ``BEGIN IMMEDIATE`` and so take the file's
write lock up front; a deferred transaction that reads first and then upgrades to a
writer can fail with SQLITE_BUSY without waiting, which immediate ones never do.
Holding the write lock for the whole append also makes positions commit in order.
Several processes may share one file; each waits up to the busy timeout for the lock.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    URL,
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

from .leases import SqlLeases, lease_writes_sqlite
from .port import AppendRequest, ConcurrencyConflict, encode_rows
from .sql import (
    _STREAM_VERSION,
    SqlEventStore,
    check_versions,
    checkpoints,
    event_tag_log,
    event_tags,
    events,
    tag_rows_for,
    translate_error,
)

__all__ = ["SqliteEventStore"]

# Connections checked out through the read engine carry this execution option and run
# each SELECT in autocommit: no BEGIN, so readers never queue behind the writer.
_READ_ONLY = "event_store_read_only"

# The keys, passed as one JSON array, joined against the table: SQLite plans a row-value
# IN list as a scan of the whole index, and this join probes the unique index once per key.
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
# How many of the keys exist, as one row: the version check (see ``_check_versions``).
_COUNT_EXISTING = select(func.count()).select_from(_EXISTING_VERSIONS.subquery())

MIN_SQLITE_VERSION = (3, 35, 0)

# The append's statements as the driver takes them (see ``SqliteEventStore._write``).
# OR ROLLBACK: a row that breaks a key ends the whole transaction, which is what the append
# does with any failure anyway. With the default (ABORT) SQLite must be able to undo the
# failing statement alone, and keeps a statement journal of every page it changes; past
# 64 KiB that journal is a temporary file, created and deleted once per batch when the
# batch's appends are spread over many streams.
_EVENT_ROW = ("stream_id", "version", "type", "data", "recorded_at")
_INSERT_EVENTS_HEAD = f"INSERT OR ROLLBACK INTO {events.name} ({', '.join(_EVENT_ROW)}) VALUES "
_TAG_ROW = ("tag", "position", "recorded_at")
_INSERT_TAGS_HEAD = f"INSERT OR ROLLBACK INTO {event_tags.name} ({', '.join(_TAG_ROW)}) VALUES "
_LOG_TAGS_HEAD = f"INSERT OR ROLLBACK INTO {event_tag_log.name} ({', '.join(_TAG_ROW)}) VALUES "
# The log into the index, in its key's order, so that each of its pages is changed once.
_FOLD_TAG_LOG = (
    f"INSERT OR ROLLBACK INTO {event_tags.name} ({', '.join(_TAG_ROW)}) "
    f"SELECT {', '.join(_TAG_ROW)} FROM {event_tag_log.name} ORDER BY tag, recorded_at, position"
)
_EMPTY_TAG_LOG = f"DELETE FROM {event_tag_log.name}"
_CHECKPOINT_ROW = ("stream_id", "version", "recorded_at", "data")
_INSERT_CHECKPOINTS_HEAD = (
    f"INSERT OR ROLLBACK INTO {checkpoints.name} ({', '.join(_CHECKPOINT_ROW)}) VALUES "
)
# Well below SQLite's default limit of 32,766 bound values per statement.
_INSERT_ROWS_PER_STATEMENT = 256


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


class SqliteEventStore(SqlLeases, SqlEventStore):
    """An event store in one SQLite file. Thread-safe; connections come from a pool."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        busy_timeout_ms: int = 5000,
        tag_log_rows: int = 4096,
        **engine_options: Any,
    ) -> None:
        """``tag_log_rows``: how many tag rows appends let gather in ``event_tag_log``
        before the append that reaches that many moves them into the index; 0 writes them
        straight into the index. A tag read scans the log, so this bounds what that scan
        costs."""
        if tag_log_rows < 0:
            raise ValueError("tag_log_rows must be >= 0")
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:  # pragma: no cover - platform
            raise RuntimeError(f"SQLite >= 3.35 is required, found {sqlite3.sqlite_version}")
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.tag_log_rows = tag_log_rows
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
        # The version check's statements, compiled once for the driver (see ``_write``).
        self._existing_versions_sql = _for_driver(_EXISTING_VERSIONS, engine.dialect)
        self._count_existing_sql = _for_driver(_COUNT_EXISTING, engine.dialect)
        self._stream_version_sql = _for_driver(_STREAM_VERSION, engine.dialect)

    def _write(
        self,
        requests: Sequence[AppendRequest],
        keys: list[tuple[str, int]],
        rows: list[dict[str, Any]],
        checkpoint_rows: list[dict[str, Any]],
    ) -> dict[tuple[str, int], int]:
        """The append's transaction on the pooled driver connection itself.

        Written without SQLAlchemy's per-statement machinery, which on a one-event append
        cost more than the durable commit, and every protocol step waits for one append.

        It is also written for few driver calls, whatever the batch holds: the driver
        lets go of the interpreter lock in every call and for every row it steps through,
        and in a busy service each time it does the writer thread may wait a whole
        switch interval to get it back. So the version check counts in one row (the
        stream behind; a stream already past its version trips the unique key on insert),
        the events go in as one statement per 256 rows whose positions follow from the
        last one (AUTOINCREMENT under the write lock hands out consecutive positions in
        row order), and the tags as one statement per 256 rows (into the log, see
        ``_write_tags``), both without a statement journal (``OR ROLLBACK``, see the
        statements above).

        The connection is kept between appends by the thread that appends (the store's
        writer; ``KeptConnection``): the pool's checkout and checkin, with its reset, took
        about a fifth of the writer's time holding the interpreter lock. One that failed,
        or that is left inside a transaction, is invalidated instead, and the next append
        takes a fresh one.
        """
        with self._kept.turn() as keep:
            pooled = self._kept.take() if keep else None
            if pooled is None:
                try:
                    pooled = self.engine.raw_connection()
                except sqlite3.Error as exc:
                    raise translate_error(exc) from exc
            return self._write_on(pooled, requests, rows, checkpoint_rows, keep)

    def _write_on(
        self,
        pooled: Any,
        requests: Sequence[AppendRequest],
        rows: list[dict[str, Any]],
        checkpoint_rows: list[dict[str, Any]],
        keep: bool,
    ) -> dict[tuple[str, int], int]:
        driver = pooled.driver_connection
        try:
            driver.execute("BEGIN IMMEDIATE")
            try:
                self._check_versions(driver, requests)
                lease_writes_sqlite(driver, requests)
                positions: dict[tuple[str, int], int] = {}
                for chunk, last in _insert_rows(driver, _INSERT_EVENTS_HEAD, _EVENT_ROW, rows):
                    for position, row in enumerate(chunk, last - len(chunk) + 1):
                        positions[(row["stream_id"], row["version"])] = position
                tag_rows = tag_rows_for(requests, positions, rows[0]["recorded_at"])
                if tag_rows:
                    self._write_tags(driver, tag_rows)
                if checkpoint_rows:
                    _insert_rows(driver, _INSERT_CHECKPOINTS_HEAD, _CHECKPOINT_ROW, checkpoint_rows)
                driver.execute("COMMIT")
            except BaseException:
                if driver.in_transaction:
                    driver.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            if exc.sqlite_errorname in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
                raise self._conflict_after_race(requests) from exc
            raise translate_error(exc) from exc
        except sqlite3.Error as exc:
            pooled.invalidate()
            raise translate_error(exc) from exc
        finally:
            if pooled.is_valid and driver.in_transaction:
                pooled.invalidate()  # left mid-transaction: never used again
            if pooled.is_valid:
                self._kept.give_back(pooled, keep)
            else:
                pooled.close()
        return positions

    def _write_tags(self, driver: sqlite3.Connection, tag_rows: list[dict[str, Any]]) -> None:
        """An append's tag rows, into the log, which goes into the index when it is full.

        Tags of transfers between many accounts land on as many pages of the
        ``(tag, position)`` index, each a frame in the WAL at the next commit: a batch of
        a few dozen transfers changed a few dozen scattered pages. In the log they change
        one or two, and a fold of a few thousand rows, sorted, changes each page of the
        index at most once."""
        if not self.tag_log_rows:
            _insert_rows(driver, _INSERT_TAGS_HEAD, _TAG_ROW, tag_rows)
            return
        inserted = _insert_rows(driver, _LOG_TAGS_HEAD, _TAG_ROW, tag_rows)
        # The log is only ever emptied whole, and a new row's rowid is one past the
        # highest there: the last rowid is the number of rows in the log.
        if inserted[-1][1] >= self.tag_log_rows:
            driver.execute(_FOLD_TAG_LOG)
            driver.execute(_EMPTY_TAG_LOG)

    def _check_versions(
        self, driver: sqlite3.Connection, requests: Sequence[AppendRequest]
    ) -> None:
        """Raises ``ConcurrencyConflict`` for a stream behind its request's version.

        Only the keys that must exist are looked up, and only counted: a stream past its
        version is found by the unique key when its events are inserted.
        """
        if len(requests) == 1:
            request = requests[0]
            sql, params = self._stream_version_sql
            last = driver.execute(sql, params(stream_id=request.stream_id)).fetchone()
            if (0 if last is None else last[0]) != request.expected_version:
                raise ConcurrencyConflict(request.stream_id, request.expected_version)
            return
        must_exist = [(r.stream_id, r.expected_version) for r in requests if r.expected_version]
        if not must_exist:
            return
        keys = encode_rows(must_exist)
        sql, params = self._count_existing_sql
        (found,) = driver.execute(sql, params(keys=keys)).fetchone()
        if found != len(must_exist):  # name the request that is behind
            sql, params = self._existing_versions_sql
            check_versions(requests, {(s, v) for s, v in driver.execute(sql, params(keys=keys))})

    def _on_connect(self, dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # The driver must not issue its own BEGINs; _on_begin does, with the right mode.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            # WAL is a property of the file: the first connection switches it, later
            # ones find it set. Readers and the writer then no longer block each other.
            self._use_wal(cursor)
            # Per connection. FULL also syncs the WAL on every commit: without it a
            # power loss can undo commits that were reported durable.
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    def _use_wal(self, cursor: sqlite3.Cursor) -> None:
        # Switching needs the file to itself, and SQLite does not wait for that: several
        # connections opening a new file at once can see SQLITE_BUSY. Retry within the
        # busy timeout; once one has switched, the others find WAL set.
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                cursor.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorname != "SQLITE_BUSY" or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def _for_driver(statement: Any, dialect: Any) -> tuple[str, Callable[..., tuple[Any, ...]]]:
    """``statement`` as SQL text for the driver, and a function that turns named values
    (defaults as compiled, e.g. a LIMIT) into its positional parameters."""
    compiled = statement.compile(dialect=dialect)
    names, defaults = compiled.positiontup or [], compiled.params

    def parameters(**values: Any) -> tuple[Any, ...]:
        return tuple(values[name] if name in values else defaults[name] for name in names)

    return str(compiled), parameters


def _insert_rows(
    driver: sqlite3.Connection, head: str, columns: Sequence[str], rows: list[dict[str, Any]]
) -> list[tuple[list[dict[str, Any]], int]]:
    """Inserts ``rows`` with one multi-row statement per 256; returns each chunk of rows
    with the rowid of its last row."""
    inserted = []
    for start in range(0, len(rows), _INSERT_ROWS_PER_STATEMENT):
        chunk = rows[start : start + _INSERT_ROWS_PER_STATEMENT]
        params = [row[column] for row in chunk for column in columns]
        last = driver.execute(_values_sql(head, len(columns), len(chunk)), params).lastrowid
        assert last is not None
        inserted.append((chunk, last))
    return inserted


@functools.lru_cache(maxsize=128)
def _values_sql(head: str, width: int, rows: int) -> str:
    """``head`` followed by ``rows`` placeholder tuples of ``width`` values."""
    row = "(" + ", ".join(["?"] * width) + ")"
    return head + ", ".join([row] * rows)


def _on_begin(conn: Any) -> None:
    if not conn.get_execution_options().get(_READ_ONLY, False):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
