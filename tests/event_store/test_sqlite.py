"""The SQLite store against the conformance suite, plus what only SQLite has."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from event_store import (
    AppendRequest,
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    LeaseChange,
    NewEvent,
    SqliteEventStore,
    StoreUnavailable,
    open_store,
)
from event_store.leases import _SQLITE as _SQLITE_LEASES
from event_store.sql import _READ_TAG
from tests.event_store.conformance import EventStoreConformance
from tests.event_store.schema_conformance import SchemaConformance


def handles(sqlite_url: str, **options: Any) -> Iterator[Callable[[], EventStore]]:
    """A store factory for the conformance suite: handles on one file, closed after."""
    opened: list[SqliteEventStore] = []

    def open_handle() -> EventStore:
        opened.append(SqliteEventStore(sqlite_url, **options))
        return opened[-1]

    yield open_handle
    for store in opened:
        store.close()


class TestSqliteEventStore(EventStoreConformance, SchemaConformance):
    @pytest.fixture
    def store_factory(self, sqlite_url: str) -> Iterator[Callable[[], EventStore]]:
        yield from handles(sqlite_url)


class TestSqliteEventStoreShortTagLog(EventStoreConformance, SchemaConformance):
    """The same suite with a tag log of two rows: most appends with tags move it into the
    index, and reads find tags in both."""

    @pytest.fixture
    def store_factory(self, sqlite_url: str) -> Iterator[Callable[[], EventStore]]:
        yield from handles(sqlite_url, tag_log_rows=2)


@contextlib.contextmanager
def migrated(sqlite_url: str, **options: Any) -> Iterator[SqliteEventStore]:
    """One migrated store on the file, closed after."""
    store = SqliteEventStore(sqlite_url, **options)
    try:
        store.migrate()
        yield store
    finally:
        store.close()


@pytest.fixture
def store(sqlite_url: str) -> Iterator[SqliteEventStore]:
    with migrated(sqlite_url) as store:
        yield store


def pragma(store: SqliteEventStore, name: str) -> object:
    with store.engine.connect() as conn:
        return conn.execute(text(f"PRAGMA {name}")).scalar()


def test_journal_mode_is_wal(store: SqliteEventStore) -> None:
    assert pragma(store, "journal_mode") == "wal"


def test_synchronous_is_full(store: SqliteEventStore) -> None:
    assert pragma(store, "synchronous") == 2


def test_busy_timeout_is_applied(store: SqliteEventStore) -> None:
    assert pragma(store, "busy_timeout") == 5000


def test_positions_are_not_reused_after_a_rollback(store: SqliteEventStore) -> None:
    (first,) = store.append("a", 0, [NewEvent("Happened", {})])
    with pytest.raises(ConcurrencyConflict):
        store.append("a", 0, [NewEvent("Happened", {})])
    (second,) = store.append("b", 0, [NewEvent("Happened", {})])
    assert second.position == first.position + 1


def test_a_second_store_on_the_same_file_sees_the_events(sqlite_url: str) -> None:
    first, second = SqliteEventStore(sqlite_url), SqliteEventStore(sqlite_url)
    try:
        first.migrate()
        recorded = first.append("a", 0, [NewEvent("Happened", {"n": 1})])
        assert second.read_stream("a") == recorded
        second.append("a", 1, [NewEvent("Happened", {"n": 2})])
        assert first.stream_version("a") == 2
    finally:
        first.close()
        second.close()


def test_write_lock_held_beyond_busy_timeout_is_store_unavailable(sqlite_url: str) -> None:
    store = SqliteEventStore(sqlite_url, busy_timeout_ms=50)
    store.migrate()
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable):
            store.append("a", 0, [NewEvent("Happened", {})])
        # Readers are not blocked by a writer in WAL mode.
        assert store.stream_version("a") == 0
        blocker.execute("ROLLBACK")
        assert [e.version for e in store.append("a", 0, [NewEvent("Happened", {})])] == [1]
    finally:
        blocker.close()
        store.close()


def test_appends_in_a_row_are_made_on_one_kept_connection(store: SqliteEventStore) -> None:
    checked_out: list[object] = []
    event.listen(store.engine.pool, "checkout", lambda dbapi, *_: checked_out.append(dbapi))
    for version in range(3):
        store.append("a", version, [NewEvent("Happened", {})])
    with pytest.raises(ConcurrencyConflict):
        store.append("a", 1, [NewEvent("Happened", {})])
    store.append_batch([AppendRequest("a", 3, [NewEvent("Happened", {})])])
    assert len(checked_out) == 1
    assert store._kept.connection.driver_connection is checked_out[0]
    assert store.stream_version("a") == 4


def test_an_append_that_fails_gives_up_its_connection_and_the_next_takes_a_fresh_one(
    sqlite_url: str,
) -> None:
    with migrated(sqlite_url, busy_timeout_ms=50) as store:
        store.append("a", 0, [NewEvent("Happened", {})])
        first = store._kept.connection.driver_connection
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable):
                store.append("a", 1, [NewEvent("Happened", {})])
            assert store._kept.connection is None
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        store.append("a", 1, [NewEvent("Happened", {})])
        assert store._kept.connection.driver_connection is not first
        assert store.stream_version("a") == 2


def test_unopenable_file_is_store_unavailable(tmp_path: Path) -> None:
    store = SqliteEventStore(f"sqlite:///{tmp_path}/missing-dir/events.db")
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.append("a", 0, [NewEvent("Happened", {})])
    store.close()


def test_using_an_unmigrated_database_is_an_error_not_an_outage(tmp_path: Path) -> None:
    store = SqliteEventStore(f"sqlite:///{tmp_path}/unmigrated.db")
    with pytest.raises(EventStoreError) as caught:
        store.read_all()
    assert not isinstance(caught.value, StoreUnavailable)
    store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="in-memory SQLite is not supported"):
        open_store(url)


def test_open_store_sqlite_url(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    assert isinstance(store, SqliteEventStore)
    store.close()


def test_a_plain_path_is_accepted(tmp_path: Path) -> None:
    store = SqliteEventStore(str(tmp_path / "events.db"))
    store.migrate()
    store.append("a", 0, [NewEvent("Happened", {})])
    assert (tmp_path / "events.db").exists()
    store.close()


# --- the tag log -------------------------------------------------------------------------


def tag_rows(store: SqliteEventStore) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(the log's rows in append order, the index's rows)."""
    with store.engine.connect() as conn:
        log = conn.execute(text("SELECT tag, position FROM event_tag_log ORDER BY rowid"))
        index = conn.execute(text("SELECT tag, position FROM event_tags ORDER BY tag, position"))
        return [tuple(row) for row in log], [tuple(row) for row in index]


@pytest.fixture
def short_log(sqlite_url: str) -> Iterator[SqliteEventStore]:
    with migrated(sqlite_url, tag_log_rows=5) as store:
        yield store


def test_tags_gather_in_the_log_until_an_append_fills_it(short_log: SqliteEventStore) -> None:
    a = short_log.append("a", 0, [NewEvent("Happened", {"n": 1}, ("x", "y"))])
    b = short_log.append("b", 0, [NewEvent("Happened", {"n": 2}, ("y",))])
    assert tag_rows(short_log) == (
        [("x", a[0].position), ("y", a[0].position), ("y", b[0].position)],
        [],
    )
    assert short_log.read_tag("y") == b + a
    # Two more rows make five: this append moves all of them into the index, sorted.
    c = short_log.append("c", 0, [NewEvent("Happened", {"n": 3}, ("x", "z"))])
    everything = [
        ("x", a[0].position),
        ("x", c[0].position),
        ("y", a[0].position),
        ("y", b[0].position),
        ("z", c[0].position),
    ]
    assert tag_rows(short_log) == ([], everything)
    assert short_log.read_tag("x") == c + a
    # The log starts again from nothing; reads take the newest from both tables.
    d = short_log.append("d", 0, [NewEvent("Happened", {"n": 4}, ("x",))])
    assert tag_rows(short_log) == ([("x", d[0].position)], everything)
    assert short_log.read_tag("x") == d + c + a
    assert short_log.read_tag("x", limit=2) == d + c
    assert short_log.read_tag("x", start_after=d[0].position, limit=1) == c
    assert short_log.read_tag("x", start_after=c[0].position) == a


def test_a_failed_append_leaves_the_log_and_the_index_as_they_were(
    short_log: SqliteEventStore,
) -> None:
    short_log.append("a", 0, [NewEvent("Happened", {}, ("x", "y", "z"))])
    before = tag_rows(short_log)
    assert len(before[0]) == 3
    # Its first request alone would fill the log; the second conflicts.
    with pytest.raises(ConcurrencyConflict):
        short_log.append_batch(
            [
                AppendRequest("b", 0, [NewEvent("Happened", {}, ("x", "y"))]),
                AppendRequest("a", 0, [NewEvent("Happened", {}, ("x",))]),
            ]
        )
    assert tag_rows(short_log) == before
    assert [e.stream_id for e in short_log.read_tag("x")] == ["a"]


def test_an_append_whose_fold_fails_stores_nothing(short_log: SqliteEventStore) -> None:
    (first,) = short_log.append("a", 0, [NewEvent("Happened", {}, ("x", "y", "z", "w"))])
    log, index = tag_rows(short_log)
    # The index refuses the rows the next append's fold moves into it.
    with short_log.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_v BEFORE INSERT ON event_tags WHEN NEW.tag = 'v'"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    with pytest.raises(EventStoreError):
        short_log.append("b", 0, [NewEvent("Happened", {}, ("v",))])
    assert short_log.stream_version("b") == 0
    assert short_log.read_all() == [first]
    assert tag_rows(short_log) == (log, index)


def test_no_tag_log_writes_tags_straight_into_the_index(sqlite_url: str) -> None:
    with migrated(sqlite_url, tag_log_rows=0) as store:
        (event,) = store.append("a", 0, [NewEvent("Happened", {}, ("x",))])
        assert tag_rows(store) == ([], [("x", event.position)])


def test_a_negative_tag_log_size_is_value_error(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="tag_log_rows"):
        SqliteEventStore(sqlite_url, tag_log_rows=-1)


@pytest.mark.parametrize("newest_first", [True, False])
def test_a_tag_read_walks_the_index_only_between_its_bounds(
    short_log: SqliteEventStore, newest_first: bool
) -> None:
    compiled = _READ_TAG[newest_first].compile(dialect=short_log.engine.dialect)
    values = compiled.construct_params(
        {"tag": "x", "low_at": 1, "low": 2, "high_at": 3, "high": 4, "limit": 3}
    )
    with short_log.engine.connect() as conn:
        plan = conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {compiled}",
            tuple(values[name] for name in compiled.positiontup or []),
        ).all()
    details = " / ".join(row[-1] for row in plan)
    # The index is searched between both bounds, never scanned; only the short log is.
    assert (
        "SEARCH event_tags USING PRIMARY KEY"
        " (tag=? AND (recorded_at,position)>(?,?) AND (recorded_at,position)<(?,?))"
    ) in details, details
    assert "SCAN event_tags" not in details, details


@pytest.mark.parametrize("change", [LeaseChange.KEEP, LeaseChange.REST, LeaseChange.DROP])
def test_an_append_finds_its_lease_rows_by_key_never_scanning_the_table(
    store: SqliteEventStore, change: LeaseChange
) -> None:
    # Leases at rest (pending holds) can be many: a scan per append would grow with them.
    head, row, tail = _SQLITE_LEASES[change]
    statement = head + ", ".join([row] * 2) + tail
    arguments = [1] * (statement.count("?"))
    with store.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", tuple(arguments)).all()
    steps = [row[-1] for row in plan]
    assert any("USING INDEX sqlite_autoindex_leases_1 (key=?)" in s for s in steps), steps
    assert not {"SCAN leases", "SCAN l"} & set(steps), steps
