"""Databases written by earlier versions of the schema, migrated: run against the SQL
backends (mixed into their ``EventStoreConformance`` classes; the memory store keeps no
schema)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, func, insert, inspect, select, text

from event_store import (
    EventStore,
    EventStoreError,
    OwnedByAnother,
    Snapshot,
    SqliteEventStore,
)
from event_store.port import MAX_TAG_LENGTH
from event_store.sql import MIGRATIONS, SCHEMA_VERSION, SqlEventStore, schema_version, store_owner
from tests.event_store.common import ev
from tests.event_store.history_conformance import cp, numbers


def sql(store: EventStore) -> SqlEventStore:
    assert isinstance(store, SqlEventStore)
    return store


class SchemaConformance:
    def test_a_schema_version_1_database_migrates_with_its_events(
        self, store_factory: Callable[[], EventStore]
    ) -> None:
        old = sql(store_factory())
        # What the code of schema version 1 created: its one migration step, recorded.
        _at_version(old, 1)
        if isinstance(old, SqliteEventStore):
            old.tag_log_rows = 0  # as that code did: tags straight into the index
        recorded = old.append("a", 0, [ev(n=1, tags=("x",)), ev(n=2)])
        recorded += old.append("b", 0, [ev(n=3)])
        with pytest.raises(EventStoreError):
            old.load_snapshot("a")  # no snapshots table yet

        new = sql(store_factory())
        new.migrate()
        with new.engine.connect() as conn:
            assert conn.execute(select(func.max(schema_version.c.version))).scalar() == 8
            assert conn.execute(select(func.count()).select_from(schema_version)).scalar() == 1
        assert SCHEMA_VERSION == 8
        assert new.read_all() == recorded
        assert new.read_stream("a") == recorded[:2]
        assert new.read_tag("x") == recorded[:1]
        assert new.load_snapshot("a") is None
        new.save_snapshot("a", 2, {"n": 2})
        assert old.load_snapshot("a") == Snapshot("a", 2, {"n": 2})
        assert [e.version for e in new.append("a", 2, [ev(n=4)])] == [3]
        assert new.lease("a") is None  # the leases table came with the migration
        new.migrate()  # at the current version: nothing to do
        assert new.stream_version("a") == 3

    def test_a_schema_version_3_database_is_claimed_by_the_first_owner_to_migrate(
        self, store_factory: Callable[[], EventStore]
    ) -> None:
        old = sql(store_factory())
        # What the code of schema version 3 created: no store_owner table.
        _at_version(old, 3)
        recorded = old.append("a", 0, [ev(n=1)])

        first = sql(store_factory())
        first.migrate("account-service")
        with first.engine.connect() as conn:
            assert conn.execute(select(store_owner.c.service)).scalars().all() == [
                "account-service"
            ]
        assert first.read_all() == recorded
        with pytest.raises(OwnedByAnother):
            store_factory().migrate("transfer-service")

    def test_a_schema_version_5_database_gets_tag_times_and_checkpoints(
        self, store_factory: Callable[[], EventStore]
    ) -> None:
        # What the code of schema version 5 left: tag rows without times, no checkpoints;
        # one tag row in the index, one in the log.
        def as_left(conn: Connection) -> None:
            _tags_keyed_by_position(conn, with_time=False)
            conn.execute(text("ALTER TABLE event_tag_log DROP COLUMN recorded_at"))
            rows = ((1, 1_000, "event_tags"), (2, 2_000, "event_tag_log"))
            for position, recorded_at, table in rows:
                conn.execute(
                    text(
                        "INSERT INTO events (stream_id, version, type, data, recorded_at)"
                        " VALUES (:s, 1, 'Happened', :data, :at)"
                    ),
                    {"s": f"s{position}", "data": f'{{"n": {position}}}', "at": recorded_at},
                )
                conn.execute(
                    text(f"INSERT INTO {table} (tag, position) VALUES ('t', :p)"),
                    {"p": position},
                )

        _at_version(sql(store_factory()), 5, as_left)
        new = sql(store_factory())
        new.migrate()
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        assert numbers(new.read_tag("t")) == [2, 1]
        assert numbers(new.read_tag("t", oldest_first=True)) == [1, 2]
        middle = epoch + timedelta(microseconds=1_500)
        assert numbers(new.read_tag("t", recorded_after=middle)) == [2]
        assert numbers(new.read_tag("t", recorded_before=middle)) == [1]
        assert new.load_checkpoint("s1") is None
        new.save_checkpoints("s1", [cp(1, n=1)])
        assert new.load_checkpoint("s1", time=epoch + timedelta(microseconds=1_000)).version == 1

    def test_a_schema_version_7_database_gets_its_tags_keyed_by_time(
        self, store_factory: Callable[[], EventStore]
    ) -> None:
        old = sql(store_factory())
        # What the code of schema version 7 left: tags keyed by (tag, position), with a
        # second index by time.
        _at_version(old, 7, lambda conn: _tags_keyed_by_position(conn, with_time=True))
        if isinstance(old, SqliteEventStore):
            old.tag_log_rows = 0  # every tag row in the table being rekeyed
        recorded = [old.append(f"s{n}", 0, [ev(n=n, tags=("t", f"u{n}"))])[0] for n in range(4)]

        new = sql(store_factory())
        new.migrate()
        with new.engine.connect() as conn:
            key = inspect(conn).get_pk_constraint("event_tags")["constrained_columns"]
            indexes = [index["name"] for index in inspect(conn).get_indexes("event_tags")]
            rows = conn.execute(text("SELECT count(*) FROM event_tags")).scalar()
        assert (key, indexes, rows) == (["tag", "recorded_at", "position"], [], 8)
        assert new.read_tag("t") == recorded[::-1]
        assert new.read_tag("t", oldest_first=True, limit=2) == recorded[:2]
        assert new.read_tag("t", recorded_after=recorded[1].recorded_at) == recorded[:1:-1]
        assert new.read_tag("u2") == recorded[2:3]
        (later,) = new.append("s9", 0, [ev(n=9, tags=("t",))])
        assert new.read_tag("t", limit=1) == [later]


def _at_version(
    store: SqlEventStore, version: int, then: Callable[[Connection], None] = lambda _: None
) -> None:
    """A database as the code of schema ``version`` made it: its steps run, ``then`` undoing
    what those steps do differently now, the version recorded, in one transaction."""
    with store.engine.begin() as conn:
        schema_version.create(conn)
        for step in MIGRATIONS[:version]:
            step(conn)
        then(conn)
        conn.execute(insert(schema_version).values(version=version))


def _tags_keyed_by_position(conn: Connection, *, with_time: bool) -> None:
    """``event_tags`` as earlier code made it: keyed by ``(tag, position)``, and from schema
    version 6 on with the event's time and an index by it."""
    conn.execute(text("DROP TABLE event_tags"))
    time = " recorded_at BIGINT NOT NULL DEFAULT 0," if with_time else ""
    rowid = " WITHOUT ROWID" if conn.dialect.name == "sqlite" else ""
    conn.execute(
        text(
            f"CREATE TABLE event_tags (tag VARCHAR({MAX_TAG_LENGTH}) NOT NULL,"
            f" position BIGINT NOT NULL,{time} PRIMARY KEY (tag, position)){rowid}"
        )
    )
    if with_time:
        conn.execute(
            text("CREATE INDEX event_tags_by_time ON event_tags (tag, recorded_at, position)")
        )
