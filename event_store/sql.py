"""The SQLAlchemy implementation of the event store shared by the SQL backends.

Owns the migration of the schema (its tables and steps are in ``sql_schema``, reached
through this module too), the prebuilt statements, the reads, the preparation of an
append (its rows, the version keys it checks, what it returns) and the one translation of
database errors into the port's. Backends subclass
``SqlEventStore`` to configure the engine and to write an append's transaction (``_write``)
on their driver's connection, with the locking that keeps positions in commit order.

Tags are found through two tables: ``event_tags``, keyed by ``(tag, recorded_at,
position)``, and ``event_tag_log``, rows in the order they were appended with no index of
their own. A tag row carries its event's ``recorded_at``, so that a read seeks straight to
a time or to the event a page ended with. An append may write its tag rows to either
table; a backend that uses the log moves it into the index, sorted, once it has grown to a
set size, in the transaction of the append that crossed it (so a tag row is always in
exactly one of the two). Reads look in both.

Leases (``leases``) are written by appends, in their transaction (see ``leases.py``), and
claimed, renewed and handed back in short transactions of their own.

Snapshots live in a table of their own, one row per stream, written in short
transactions of their own: an upsert that keeps whichever version is higher. Checkpoints
(``checkpoints``) are many per stream, one per version, written in the transaction of the
append that reaches their version (or later, by ``save_checkpoints``, taking the time of
the event at their version), and found by version or by time through their two keys.

Optimistic concurrency: versions of one append are ``expected_version + 1 ..``, and the
UNIQUE key on ``(stream_id, version)`` refuses any second writer of the same version. A
cheap existence check inside the transaction also refuses an ``expected_version`` that is
ahead of the stream, which the key alone would accept (it would leave a gap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from .kept import KeptConnection
from .port import (
    AppendRequest,
    Checkpoint,
    ConcurrencyConflict,
    EventStoreError,
    LeaseWrite,
    NewCheckpoint,
    NewEvent,
    OwnedByAnother,
    RecordedEvent,
    Snapshot,
    StoreUnavailable,
    check_append,
    check_batch,
    check_checkpoints,
    check_lease,
    check_owner,
    check_snapshot,
    check_time,
    decode_data,
    encode_data,
    micros_to_datetime,
    now_micros,
)
from .sql_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    checkpoints,
    event_tag_log,
    event_tags,
    events,
    leases,
    metadata,
    schema_version,
    snapshots,
    store_owner,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SqlEventStore",
    "checkpoints",
    "event_tag_log",
    "event_tags",
    "events",
    "leases",
    "metadata",
    "schema_version",
    "snapshots",
    "store_owner",
]


_MAX_POSITION = 2**63 - 1

_EVENT_COLUMNS = (
    events.c.position,
    events.c.stream_id,
    events.c.version,
    events.c.type,
    events.c.data,
    events.c.recorded_at,
)

# ORDER BY .. LIMIT 1 rather than max(): one seek to the end of the stream's index range
# on every planner, however long the stream.
_STREAM_VERSION = (
    select(events.c.version)
    .where(events.c.stream_id == bindparam("stream_id"))
    .order_by(events.c.version.desc())
    .limit(1)
)
# Versions have no gaps, so the next ``limit`` events are those up to ``after + limit``:
# bounded on both sides, the range costs what it returns on any plan. With only its lower
# bound, Postgres planned a table it had no statistics of yet (a store just filled) as a
# scan of the whole rest of the stream, sorted for the limit.
_READ_STREAM = (
    select(*_EVENT_COLUMNS)
    .where(
        events.c.stream_id == bindparam("stream_id"),
        events.c.version > bindparam("after", type_=BigInteger),
        events.c.version <= bindparam("upto", type_=BigInteger),
    )
    .order_by(events.c.version)
    .limit(bindparam("limit", type_=BigInteger))
)
_READ_ALL = (
    select(*_EVENT_COLUMNS)
    .where(events.c.position > bindparam("after"))
    .order_by(events.c.position)
    .limit(bindparam("limit", type_=BigInteger))
)
# A page of a tag, in either order: the first ``limit`` rows of the index between its two
# bounds (one walk down its ``(tag, recorded_at, position)`` range from one bound, stopped
# at the limit or at the other bound), and every match from the short log, joined to
# their events by position; then the first ``limit`` of those. A join, not
# ``position IN (..) OR position IN (..)``, which Postgres answers by walking the whole
# events table. Both bounds are (recorded_at, position) pairs, so that the cursor and
# the times make one range of the key (see ``SqlEventStore.read_tag``).
_TAG_LIMIT = bindparam("limit", type_=BigInteger)


def _tag_rows(table: Table) -> Any:
    key = tuple_(table.c.recorded_at, table.c.position)
    low, low_at, high, high_at = (
        bindparam(name, type_=BigInteger) for name in ("low", "low_at", "high", "high_at")
    )
    return select(table.c.position).where(
        table.c.tag == bindparam("tag"),
        key > tuple_(low_at, low),
        key < tuple_(high_at, high),
    )


def _read_tag(newest_first: bool) -> Any:
    def order(table: Table) -> tuple[Any, ...]:
        columns = (table.c.recorded_at, table.c.position)
        return tuple(c.desc() for c in columns) if newest_first else columns

    indexed = (
        _tag_rows(event_tags).order_by(*order(event_tags)).limit(_TAG_LIMIT).subquery("indexed")
    )
    tagged = union_all(select(indexed.c.position), _tag_rows(event_tag_log)).subquery("tagged")
    return (
        select(*_EVENT_COLUMNS)
        .select_from(tagged.join(events, events.c.position == tagged.c.position))
        .order_by(*order(events))
        .limit(_TAG_LIMIT)
    )


_READ_TAG = {newest_first: _read_tag(newest_first) for newest_first in (True, False)}
_RECORDED_AT = select(events.c.recorded_at).where(events.c.position == bindparam("position"))
_LOAD_SNAPSHOT = select(snapshots.c.version, snapshots.c.data).where(
    snapshots.c.stream_id == bindparam("stream_id")
)
_CHECKPOINT_COLUMNS = (checkpoints.c.version, checkpoints.c.recorded_at, checkpoints.c.data)
_CHECKPOINT_AT_VERSION = (
    select(*_CHECKPOINT_COLUMNS)
    .where(
        checkpoints.c.stream_id == bindparam("stream_id"),
        checkpoints.c.version <= bindparam("version"),
    )
    .order_by(checkpoints.c.version.desc())
    .limit(1)
)
_CHECKPOINT_AT_TIME = (
    select(*_CHECKPOINT_COLUMNS)
    .where(
        checkpoints.c.stream_id == bindparam("stream_id"),
        checkpoints.c.recorded_at <= bindparam("time"),
    )
    .order_by(checkpoints.c.recorded_at.desc(), checkpoints.c.version.desc())
    .limit(1)
)


def _insert_checkpoint_late(dialect: str) -> Any:
    """INSERT .. SELECT of a checkpoint at a version the stream has, unless one is there."""
    row = select(
        events.c.stream_id,
        events.c.version,
        events.c.recorded_at,
        bindparam("data", type_=Text),
    ).where(events.c.stream_id == bindparam("stream_id"), events.c.version == bindparam("v"))
    if dialect == "postgresql":
        statement: Any = postgresql.insert(checkpoints)
    elif dialect == "sqlite":
        statement = sqlite.insert(checkpoints)
    else:  # pragma: no cover - only the two backends exist
        raise NotImplementedError(f"no checkpoint insert for {dialect}")
    columns = ["stream_id", "version", "recorded_at", "data"]
    return statement.from_select(columns, row).on_conflict_do_nothing()


def _upsert_snapshot(dialect: str) -> Any:
    """INSERT .. ON CONFLICT DO UPDATE that only ever moves a snapshot forward."""
    if dialect == "postgresql":
        statement: Any = postgresql.insert(snapshots)
    elif dialect == "sqlite":
        statement = sqlite.insert(snapshots)
    else:  # pragma: no cover - only the two backends exist
        raise NotImplementedError(f"no snapshot upsert for {dialect}")
    return statement.on_conflict_do_update(
        index_elements=[snapshots.c.stream_id],
        set_={"version": statement.excluded.version, "data": statement.excluded.data},
        where=statement.excluded.version > snapshots.c.version,
    )


_CURRENT_SCHEMA_VERSION = select(func.max(schema_version.c.version))
_OWNER = select(store_owner.c.service)
_PING = text("SELECT 1")

# PEP 249 gives every driver these two: the database unreachable, down, or locked beyond
# the busy timeout, which waiting and retrying may cure.
_UNAVAILABLE = frozenset({"OperationalError", "InterfaceError"})


def translate_error(exc: Exception) -> EventStoreError:
    """A database error, SQLAlchemy's or the driver's own (appends run on the driver's
    connection), as the port's; raw database errors never escape."""
    source = getattr(exc, "orig", None) or exc
    # The driver's message without SQLAlchemy's appended statement and parameters.
    lines = str(source).strip().splitlines()
    detail = f"{type(source).__name__}: {lines[0]}" if lines else type(source).__name__
    # sqlite3 raises OperationalError for a missing table too; that is a usage error
    # (migrate() not called), not an outage.
    if getattr(source, "sqlite_errorname", None) == "SQLITE_ERROR":
        return EventStoreError(detail)
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free
        return StoreUnavailable(detail)
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return StoreUnavailable(detail)
    if any(cls.__name__ in _UNAVAILABLE for cls in type(exc).__mro__):
        return StoreUnavailable(detail)
    return EventStoreError(detail)


def check_versions(requests: Sequence[AppendRequest], found: set[tuple[str, int]]) -> None:
    """Raises ``ConcurrencyConflict`` for the first request whose stream is not at its
    expected version, given which of its (stream_id, version) keys exist."""
    for request in requests:
        expected = request.expected_version
        if (request.stream_id, expected + 1) in found or (
            expected and (request.stream_id, expected) not in found
        ):
            raise ConcurrencyConflict(request.stream_id, expected)


def tag_rows_for(
    requests: Sequence[AppendRequest],
    positions: Mapping[tuple[str, int], int],
    recorded_at: int,
) -> list[dict[str, Any]]:
    """The ``event_tags`` rows of an append, once its events have positions."""
    tag_rows = []
    for request in requests:
        version = request.expected_version
        for event in request.events:
            version += 1
            if event.tags:
                position = positions[(request.stream_id, version)]
                # dict.fromkeys: a tag repeated on one event is indexed once.
                tag_rows.extend(
                    {"tag": tag, "position": position, "recorded_at": recorded_at}
                    for tag in dict.fromkeys(event.tags)
                )
    return tag_rows


def checkpoint_rows_for(
    requests: Sequence[AppendRequest], recorded_at: int
) -> list[dict[str, Any]]:
    """The ``checkpoints`` rows of an append."""
    return [
        {
            "stream_id": request.stream_id,
            "version": checkpoint.version,
            "recorded_at": recorded_at,
            "data": encode_data(checkpoint.data, "checkpoint data"),
        }
        for request in requests
        for checkpoint in request.checkpoints
    ]


class SqlEventStore:
    """An ``EventStore`` over a SQLAlchemy engine.

    ``engine`` runs the write transactions; ``read_engine`` (by default the same) runs
    single-statement reads, which subclasses point at a cheaper mode (no explicit BEGIN).
    """

    def __init__(self, engine: Engine, read_engine: Engine | None = None) -> None:
        self.engine = engine
        # The writer's connection, kept between appends (see ``KeptConnection``).
        self._kept = KeptConnection()
        self.read_engine = read_engine if read_engine is not None else engine
        self._upsert_snapshot = _upsert_snapshot(engine.dialect.name)
        self._insert_checkpoint_late = _insert_checkpoint_late(engine.dialect.name)

    # --- backend hooks -----------------------------------------------------------------

    def _lock_migrations(self, conn: Connection) -> None:
        """Serialise ``migrate()`` across processes."""

    def _write(
        self,
        requests: Sequence[AppendRequest],
        keys: list[tuple[str, int]],
        rows: list[dict[str, Any]],
        checkpoint_rows: list[dict[str, Any]],
    ) -> dict[tuple[str, int], int]:
        """One transaction: check the versions (``keys``, see ``_append``), insert the rows,
        their tags (``tag_rows_for``) and the checkpoints, with positions committed in
        order.

        Returns each row's position by (stream_id, version); raises ``ConcurrencyConflict``
        (``check_versions``, ``_conflict_after_race``) or the port's errors
        (``translate_error``)."""
        raise NotImplementedError

    # --- EventStore ----------------------------------------------------------------------

    def migrate(self, owner: str | None = None) -> None:
        if owner is not None:
            check_owner(owner)
        try:
            with self.engine.begin() as conn:
                self._lock_migrations(conn)
                schema_version.create(conn, checkfirst=True)
                current = conn.execute(_CURRENT_SCHEMA_VERSION).scalar() or 0
                if current > SCHEMA_VERSION:
                    raise EventStoreError(
                        f"database schema version {current} is newer than this code "
                        f"({SCHEMA_VERSION})"
                    )
                if current < SCHEMA_VERSION:
                    for step in MIGRATIONS[current:]:
                        step(conn)
                    conn.execute(delete(schema_version))
                    conn.execute(insert(schema_version).values(version=SCHEMA_VERSION))
                if owner is not None:
                    # Under the migration lock: of two services racing, one claims first.
                    claimed = conn.execute(_OWNER).scalar()
                    if claimed is None:
                        conn.execute(insert(store_owner).values(service=owner))
                    elif claimed != owner:
                        raise OwnedByAnother(claimed, owner)
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc

    def ping(self) -> None:
        try:
            with self.read_engine.connect() as conn:
                conn.execute(_PING)
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[NewEvent],
        lease: LeaseWrite | None = None,
        checkpoints: Sequence[NewCheckpoint] = (),
    ) -> list[RecordedEvent]:
        check_append(stream_id, expected_version, events)
        check_lease(lease)
        request = AppendRequest(stream_id, expected_version, events, lease, checkpoints)
        check_checkpoints(request)
        return self._append((request,))[0]

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]:
        if not requests:
            return []
        check_batch(requests)
        return self._append(requests)

    def read_stream(
        self, stream_id: str, after_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        if limit is None:
            limit = _MAX_POSITION
        _check_limit(limit)
        upto = min(max(after_version, 0) + limit, _MAX_POSITION)
        params = {"stream_id": stream_id, "after": after_version, "upto": upto, "limit": limit}
        return self._read(_READ_STREAM, params)

    def stream_version(self, stream_id: str) -> int:
        try:
            with self.read_engine.connect() as conn:
                version = conn.execute(_STREAM_VERSION, {"stream_id": stream_id}).scalar()
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc
        return 0 if version is None else int(version)

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        _check_limit(limit)
        return self._read(_READ_ALL, {"after": after_position, "limit": limit})

    def read_tag(
        self,
        tag: str,
        start_after: int | None = None,
        limit: int = 50,
        *,
        oldest_first: bool = False,
        recorded_after: datetime | None = None,
        recorded_before: datetime | None = None,
    ) -> list[RecordedEvent]:
        _check_limit(limit)
        after = check_time(recorded_after, "recorded_after")
        before = check_time(recorded_before, "recorded_before")
        # Exclusive bounds on (recorded_at, position): past every key when not given.
        low = (-_MAX_POSITION, -_MAX_POSITION) if after is None else (after, _MAX_POSITION)
        high = (_MAX_POSITION, _MAX_POSITION) if before is None else (before, -_MAX_POSITION)
        try:
            with self.read_engine.connect() as conn:
                if start_after is not None:
                    cursor_at = conn.execute(_RECORDED_AT, {"position": start_after}).scalar()
                    if cursor_at is None:
                        raise ValueError(f"no event at position {start_after}")
                    # The cursor narrows the bound the page walks away from.
                    cursor = (int(cursor_at), start_after)
                    low, high = (
                        (max(low, cursor), high) if oldest_first else (low, min(high, cursor))
                    )
                params = {
                    "tag": tag,
                    "low_at": low[0],
                    "low": low[1],
                    "high_at": high[0],
                    "high": high[1],
                    "limit": limit,
                }
                rows = conn.execute(_READ_TAG[not oldest_first], params).all()
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc
        return _recorded(rows)

    def save_snapshot(self, stream_id: str, version: int, data: Mapping[str, Any]) -> None:
        check_snapshot(stream_id, version)
        params = {
            "stream_id": stream_id,
            "version": version,
            "data": encode_data(data, "snapshot data"),
        }
        try:
            # Its own short transaction: never part of an append's.
            with self.engine.begin() as conn:
                conn.execute(self._upsert_snapshot, params)
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        try:
            with self.read_engine.connect() as conn:
                row = conn.execute(_LOAD_SNAPSHOT, {"stream_id": stream_id}).first()
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc
        if row is None:
            return None
        return Snapshot(stream_id, int(row[0]), decode_data(row[1]))

    def save_checkpoints(self, stream_id: str, checkpoints: Sequence[NewCheckpoint]) -> None:
        rows = []
        for checkpoint in checkpoints:
            check_snapshot(stream_id, checkpoint.version)
            data = encode_data(checkpoint.data, "checkpoint data")
            rows.append({"stream_id": stream_id, "v": checkpoint.version, "data": data})
        if not rows:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(self._insert_checkpoint_late, rows)
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc

    def load_checkpoint(
        self, stream_id: str, *, version: int | None = None, time: datetime | None = None
    ) -> Checkpoint | None:
        if version is not None and time is not None:
            raise ValueError("a checkpoint is found by version or by time, not both")
        if time is not None:
            statement = _CHECKPOINT_AT_TIME
            params: dict[str, Any] = {"stream_id": stream_id, "time": check_time(time, "time")}
        else:
            statement = _CHECKPOINT_AT_VERSION
            at_most = _MAX_POSITION if version is None else version
            params = {"stream_id": stream_id, "version": at_most}
        try:
            with self.read_engine.connect() as conn:
                row = conn.execute(statement, params).first()
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc
        if row is None:
            return None
        found, recorded_at, data = row
        return Checkpoint(stream_id, int(found), decode_data(data), micros_to_datetime(recorded_at))

    def close(self) -> None:
        self._kept.close()
        self.engine.dispose()

    # --- internals -----------------------------------------------------------------------

    def _append(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]:
        recorded_at = now_micros()
        rows: list[dict[str, Any]] = []
        keys: list[tuple[str, int]] = []
        for request in requests:
            stream_id = request.stream_id
            version = request.expected_version
            # (s, v + 1) must not exist (the stream is not past v) and, for v > 0,
            # (s, v) must exist (the stream is not behind v).
            keys.append((stream_id, version + 1))
            if version:
                keys.append((stream_id, version))
            for event in request.events:
                version += 1
                rows.append(
                    {
                        "stream_id": stream_id,
                        "version": version,
                        "type": event.type,
                        "data": encode_data(event.data),
                        "recorded_at": recorded_at,
                    }
                )
        positions = self._write(requests, keys, rows, checkpoint_rows_for(requests, recorded_at))

        when = micros_to_datetime(recorded_at)
        results: list[list[RecordedEvent]] = []
        row_iter = iter(rows)
        for request in requests:
            recorded = []
            for event in request.events:
                row = next(row_iter)
                stream_id, version = row["stream_id"], row["version"]
                recorded.append(
                    RecordedEvent(
                        positions[(stream_id, version)],
                        stream_id,
                        version,
                        event.type,
                        event.data,  # as given: decoding what was just encoded is waste
                        when,
                    )
                )
            results.append(recorded)
        return results

    def _conflict_after_race(self, requests: Sequence[AppendRequest]) -> ConcurrencyConflict:
        """Name the request that lost a race the existence check could not see."""
        for request in requests:
            try:
                if self.stream_version(request.stream_id) != request.expected_version:
                    return ConcurrencyConflict(request.stream_id, request.expected_version)
            except EventStoreError:
                break
        return ConcurrencyConflict(requests[0].stream_id, requests[0].expected_version)

    def _read(self, statement: Any, params: dict[str, Any]) -> list[RecordedEvent]:
        try:
            with self.read_engine.connect() as conn:
                rows = conn.execute(statement, params).all()
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc
        return _recorded(rows)


def _recorded(rows: Sequence[Any]) -> list[RecordedEvent]:
    return [
        RecordedEvent(p, s, v, t, decode_data(d), micros_to_datetime(r))
        for p, s, v, t, d, r in rows
    ]


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError("limit must be >= 0")
