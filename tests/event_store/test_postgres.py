"""The Postgres store against the conformance suite, plus what only Postgres has."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from event_store import (
    AppendRequest,
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    NewEvent,
    PostgresEventStore,
    StoreUnavailable,
    open_store,
    schemas,
)
from event_store.postgres import _APPEND_LOCK, _EXISTING_VERSIONS
from event_store.sql import _READ_STREAM, _READ_TAG
from tests import pg
from tests.event_store.conformance import EventStoreConformance
from tests.event_store.schema_conformance import SchemaConformance

pytestmark = pytest.mark.postgres

CLOSED_PORT_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"


class TestPostgresEventStore(EventStoreConformance, SchemaConformance):
    @pytest.fixture
    def store_factory(self, postgres_url: str) -> Iterator[Callable[[], EventStore]]:
        opened: list[PostgresEventStore] = []

        def open_handle() -> EventStore:
            opened.append(PostgresEventStore(postgres_url, pool_size=2))
            return opened[-1]

        yield open_handle
        for store in opened:
            store.close()


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresEventStore]:
    store = PostgresEventStore(postgres_url, pool_size=2)
    store.migrate()
    yield store
    store.close()


def test_tables_live_in_the_schema_named_by_the_url(
    store: PostgresEventStore, postgres_url: str
) -> None:
    schema = postgres_url.rpartition("%3D")[2]
    with store.engine.connect() as conn:
        tables = conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        ).scalars()
        assert set(tables) == {
            "events",
            "event_tags",
            "event_tag_log",
            "snapshots",
            "checkpoints",
            "store_owner",
            "schema_version",
            "leases",
        }


def test_positions_of_a_batch_increase_in_request_order(store: PostgresEventStore) -> None:
    results = store.append_batch(
        [AppendRequest(f"s{n}", 0, [NewEvent("Happened", {}) for _ in range(3)]) for n in range(5)]
    )
    positions = [e.position for r in results for e in r]
    assert positions == sorted(set(positions))
    assert positions[-1] - positions[0] == len(positions) - 1


def test_using_an_unmigrated_schema_is_an_error_not_an_outage(postgres_url: str) -> None:
    store = PostgresEventStore(postgres_url)
    with pytest.raises(EventStoreError) as caught:
        store.append("a", 0, [NewEvent("Happened", {})])
    assert not isinstance(caught.value, StoreUnavailable)
    store.close()


def test_closed_port_ping_is_store_unavailable() -> None:
    store = PostgresEventStore(CLOSED_PORT_URL, connect_args={"connect_timeout": 2})
    with pytest.raises(StoreUnavailable):
        store.ping()
    store.close()


def test_closed_port_append_is_store_unavailable() -> None:
    store = PostgresEventStore(CLOSED_PORT_URL, connect_args={"connect_timeout": 2})
    with pytest.raises(StoreUnavailable):
        store.append("a", 0, [NewEvent("Happened", {})])
    with pytest.raises(StoreUnavailable):
        store.read_all()
    store.close()


def test_closed_port_migrate_is_store_unavailable() -> None:
    store = PostgresEventStore(CLOSED_PORT_URL, connect_args={"connect_timeout": 2})
    with pytest.raises(StoreUnavailable):
        store.migrate()
    store.close()


def test_open_store_treats_postgresql_as_psycopg(postgres_url: str) -> None:
    store = open_store(postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    assert isinstance(store, PostgresEventStore)
    assert store.engine.url.drivername == "postgresql+psycopg"
    store.migrate()
    store.append("a", 0, [NewEvent("Happened", {})])
    store.close()


def test_other_postgres_drivers_are_refused() -> None:
    with pytest.raises(ValueError, match="psycopg"):
        open_store("postgresql+asyncpg://postgres@127.0.0.1/test")


def test_an_append_on_a_connection_closed_meanwhile_is_made_on_a_fresh_one(
    store: PostgresEventStore,
) -> None:
    store.append("s", 0, [NewEvent("Happened", {"n": 1})])
    kept = store._kept.connection
    assert kept is not None  # the writer's connection, kept for the next append
    with store.engine.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(:pid)"),
            {"pid": kept.driver_connection.info.backend_pid},
        )
        conn.commit()
    # Closed under the store (a restart, an idle timeout): nothing was sent on it yet, so
    # the append is made once, on a new connection, and no caller sees the failure.
    recorded = store.append("s", 1, [NewEvent("Happened", {"n": 2})])
    assert [e.version for e in recorded] == [2]
    connection = store._kept.connection
    assert connection is not None and connection is not kept
    assert [e.data["n"] for e in store.read_stream("s")] == [1, 2]


def test_a_conflict_leaves_the_kept_connection_usable(store: PostgresEventStore) -> None:
    store.append("s", 0, [NewEvent("Happened", {})])
    with pytest.raises(ConcurrencyConflict):
        store.append("s", 0, [NewEvent("Happened", {})])
    with pytest.raises(ConcurrencyConflict):
        store.append("s", 5, [NewEvent("Happened", {})])  # ahead of the stream
    assert store.append("s", 1, [NewEvent("Happened", {})])[0].version == 2
    assert store.stream_version("s") == 2


def test_statements_keep_being_planned_for_their_values_as_the_table_grows(
    store: PostgresEventStore,
) -> None:
    # Appends run often enough that psycopg prepares their statements on the writer's
    # connection, while the table is nearly empty: a plan kept from now would be made for
    # an empty table (a version check that reads the whole table).
    for n in range(12):
        store.append(f"s-{n % 3}", n // 3, [NewEvent("Happened", {"n": n})])
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO events (stream_id, version, type, data, recorded_at)"
                " SELECT 'bulk-' || g, 1, 'Bulk', '{}', 0 FROM generate_series(1, 20000) g"
            )
        )
    for n in range(12, 18):
        store.append(f"s-{n % 3}", n // 3, [NewEvent("Happened", {"n": n})])

    kept = store._kept.connection
    assert kept is not None
    writer = kept.driver_connection
    try:
        plans = writer.execute(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
        ).fetchall()
        version_check = writer.execute(
            "EXPLAIN (FORMAT JSON) " + _EXISTING_VERSIONS, (["s-0", "s-1"], [5, 5])
        ).fetchone()
    finally:
        writer.rollback()
    with_values = [(generic, custom) for statement, generic, custom in plans if "$1" in statement]
    assert len(with_values) >= 2, plans  # the version check and the insert, prepared
    # Every execution planned for its values: none from a plan made once and kept. (A
    # statement without values, the lock, has one plan only.)
    assert all(generic == 0 and custom > 0 for generic, custom in with_values), plans
    # ... which, for the version check on the grown table, looks each key up in the index.
    assert "Seq Scan" not in str(version_check), version_check
    with store.engine.connect() as conn:  # and the readers' connections alike
        assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"


def test_schemas_are_created_once_and_their_urls_keep_each_store_in_its_own(
    postgres_url: str,
) -> None:
    base = pg.base_url()
    names = [f"t_{uuid.uuid4().hex}" for _ in range(2)]
    try:
        schemas.create_schemas(base, names)
        schemas.create_schemas(base, names)  # already there: nothing to do
        for name, owner in zip(names, ("account-service", "transfer-service"), strict=True):
            store = PostgresEventStore(schemas.schema_url(base, name), pool_size=1)
            try:
                store.migrate(owner)
                with store.engine.connect() as conn:
                    assert conn.execute(text("SELECT current_schema()")).scalar() == name
            finally:
                store.close()
    finally:
        throwaway = pg.schemas()
        throwaway.names.extend(names)
        throwaway.drop()


def test_a_schema_url_keeps_the_other_options_of_the_url() -> None:
    url = "postgres://u:p@h/db?options=-cstatement_timeout%3D5000&connect_timeout=3"
    parsed = make_url(schemas.schema_url(url, "reservebank_accounts"))
    assert parsed.query["options"] == "-cstatement_timeout=5000 -csearch_path=reservebank_accounts"
    assert (parsed.query["connect_timeout"], parsed.password) == ("3", "p")
    with pytest.raises(ValueError):
        schemas.schema_url(url, "Robert'); DROP TABLE events;--")


@pytest.mark.parametrize("newest_first", [True, False])
def test_a_tag_read_walks_the_index_only_between_its_bounds(
    store: PostgresEventStore, newest_first: bool
) -> None:
    compiled = _READ_TAG[newest_first].compile(dialect=store.engine.dialect)
    values = compiled.construct_params(
        {"tag": "x", "low_at": 1, "low": 2, "high_at": 3, "high": 4, "limit": 3}
    )
    with store.engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # an empty table would be scanned
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", values))
    assert "Index Only Scan" in plan and "using event_tags_pkey" in plan, plan
    # Both bounds are conditions of the index, not filters of what it returns.
    assert (
        """Index Cond: ((tag = 'x'::text) AND (ROW(recorded_at, "position") > ROW('1'::bigint,"""
        """ '2'::bigint)) AND (ROW(recorded_at, "position") < ROW('3'::bigint, '4'::bigint)))"""
    ) in plan, plan


def test_a_page_of_a_stream_reads_only_that_page_before_the_table_is_analyzed(
    store: PostgresEventStore,
) -> None:
    # A long history just written: the planner has no statistics of the table yet, and a
    # page bounded below only was planned as a scan of the whole rest of the stream.
    for start in range(0, 20_000, 5_000):
        batch = [
            NewEvent("Deposited", {"amount": 1, "reference": f"r-{start + n}"})
            for n in range(5_000)
        ]
        store.append("long", start, batch)
    compiled = _READ_STREAM.compile(dialect=store.engine.dialect)
    params = {"stream_id": "long", "after": 100, "upto": 200, "limit": 100}
    with store.engine.connect() as conn:
        plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN ANALYZE {compiled}", params)]
    rows = [int(n) for line in plan for n in re.findall(r"actual time=\S+ rows=(\d+)", line)]
    # No step of the plan touches more rows than the page holds.
    assert rows and max(rows) <= 100, "\n".join(plan)
    assert [e.version for e in store.read_stream("long", 100, 100)] == list(range(101, 201))


def test_a_transaction_left_idle_is_ended_and_its_locks_freed(store: PostgresEventStore) -> None:
    frozen = store.engine.connect()
    try:
        frozen.begin()
        frozen.execute(text(_APPEND_LOCK))
        # Idle inside the transaction, holding the append lock, as a frozen process would.
        time.sleep(3)
        with store.engine.begin() as other:
            other.execute(text("SET LOCAL lock_timeout = '2s'"))
            other.execute(text(_APPEND_LOCK))
        with pytest.raises(DBAPIError):
            frozen.execute(text("SELECT 1"))
    finally:
        frozen.invalidate()
        frozen.close()
    store.append("after-the-freeze", 0, [NewEvent("E", {})])
    assert [e.type for e in store.read_stream("after-the-freeze")] == ["E"]
