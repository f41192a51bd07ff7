"""The SQLite store against the conformance suite, plus what only SQLite has."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from event_store import (
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    NewEvent,
    SqliteEventStore,
    StoreUnavailable,
    open_store,
)
from tests.event_store.conformance import EventStoreConformance


class TestSqliteEventStore(EventStoreConformance):
    @pytest.fixture
    def store_factory(self, sqlite_url: str) -> Iterator[Callable[[], EventStore]]:
        opened: list[SqliteEventStore] = []

        def open_handle() -> EventStore:
            opened.append(SqliteEventStore(sqlite_url))
            return opened[-1]

        yield open_handle
        for store in opened:
            store.close()


class TestSqliteEventStoreCoreAppends(EventStoreConformance):
    """The same suite with appends through SQLAlchemy Core instead of the driver."""

    @pytest.fixture
    def store_factory(self, sqlite_url: str) -> Iterator[Callable[[], EventStore]]:
        opened: list[SqliteEventStore] = []

        def open_handle() -> EventStore:
            opened.append(SqliteEventStore(sqlite_url, driver_appends=False))
            return opened[-1]

        yield open_handle
        for store in opened:
            store.close()


@pytest.fixture
def store(sqlite_url: str) -> Iterator[SqliteEventStore]:
    store = SqliteEventStore(sqlite_url)
    store.migrate()
    yield store
    store.close()


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
