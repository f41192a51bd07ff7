"""The SQLAlchemy implementation of the event store shared by the SQL backends.

Owns the schema (``events``, ``event_tags``, ``event_tag_log``, ``snapshots``,
``store_owner``, ``schema_version``), its migration steps, the prebuilt statements, the
reads, the preparation of an append (its rows, the version keys it checks, what it
returns) and the one translation of database errors into the port's. Backends subclass
``SqlEventStore`` to configure the engine and to write an append's transaction (``_write``)
on their driver's connection, with the locking that keeps positions in commit order.

Tags are found through two tables: ``event_tags``, keyed by ``(tag, position)``, and
``event_tag_log``, rows in the order they were appended with no index of their own. An
append may write its tag rows to either; a backend that uses the log moves it into the
index, sorted, once it has grown to a set size, in the transaction of the append that
crossed it (so a tag row is always in exactly one of the two). Reads look in both.

Leases (``leases``) are written by appends, in their transaction (see ``leases.py``), and
claimed, renewed and handed back in short transactions of their own.

Snapshots live in a table of their own, one row per stream, written in short
transactions of their own: an upsert that keeps whichever version is higher.

Optimistic concurrency: versions of one append are ``expected_version + 1 ..``, and the
UNIQUE key on ``(stream_id, version)`` refuses any second writer of the same version. A
cheap existence check inside the transaction also refuses an ``expected_version`` that is
ahead of the stream, which the key alone would accept (it would leave a gap).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    union_all,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from .port import (
    MAX_OWNER_LENGTH,
    MAX_STREAM_ID_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TYPE_LENGTH,
    AppendRequest,
    ConcurrencyConflict,
    EventStoreError,
    LeaseWrite,
    NewEvent,
    OwnedByAnother,
    RecordedEvent,
    Snapshot,
    StoreUnavailable,
    check_append,
    check_batch,
    check_lease,
    check_owner,
    check_snapshot,
    decode_data,
    encode_data,
    micros_to_datetime,
    now_micros,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SqlEventStore",
    "event_tag_log",
    "event_tags",
    "events",
    "leases",
    "metadata",
    "schema_version",
    "snapshots",
    "store_owner",
]

metadata = MetaData()

events = Table(
    "events",
    metadata,
    # INTEGER on SQLite so the column aliases the rowid and AUTOINCREMENT applies: a
    # position is never handed out twice, even after the newest events are rolled back.
    Column(
        "position",
        BigInteger().with_variant(Integer(), "sqlite"),
        Identity(),
        primary_key=True,
    ),
    Column("stream_id", String(MAX_STREAM_ID_LENGTH), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("type", String(MAX_TYPE_LENGTH), nullable=False),
    Column("data", Text, nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
    UniqueConstraint("stream_id", "version", name="events_stream_version_key"),
    sqlite_autoincrement=True,
)

event_tags = Table(
    "event_tags",
    metadata,
    Column("tag", String(MAX_TAG_LENGTH), primary_key=True),
    Column("position", BigInteger, primary_key=True),
    sqlite_with_rowid=False,
)

# Tag rows not yet in ``event_tags``, in append order (see the module's docstring). On
# SQLite a rowid table, so a row goes in at the end of the table's one B-tree: a batch of
# appends whose tags are spread over thousands of keys changes a page or two here, where
# ``event_tags`` would change a page per key. Read by scanning it whole, which stays cheap
# because it is kept short.
event_tag_log = Table(
    "event_tag_log",
    metadata,
    Column("tag", String(MAX_TAG_LENGTH), nullable=False),
    Column("position", BigInteger, nullable=False),
)

# One row per stream: the newest snapshot only. Not referenced by the events, so it can be
# emptied at any time without losing anything but the time it saves.
snapshots = Table(
    "snapshots",
    metadata,
    Column("stream_id", String(MAX_STREAM_ID_LENGTH), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
)

# Which service keeps its events here: one row, written by the first ``migrate(owner)``.
store_owner = Table(
    "store_owner",
    metadata,
    Column("service", String(MAX_OWNER_LENGTH), primary_key=True),
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, nullable=False),
)

# At most one lease per stream, keyed by its stream id (see ``port.Lease`` and ``leases``).
leases = Table(
    "leases",
    metadata,
    Column("key", String(MAX_STREAM_ID_LENGTH), primary_key=True),
    Column("owner", String(MAX_STREAM_ID_LENGTH), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("leases_expires_at", "expires_at"),
    Index("leases_owner", "owner"),
)


def _create_events_and_tags(conn: Connection) -> None:
    metadata.create_all(conn, tables=[events, event_tags], checkfirst=True)


def _create_snapshots(conn: Connection) -> None:
    metadata.create_all(conn, tables=[snapshots], checkfirst=True)


def _create_tag_log(conn: Connection) -> None:
    metadata.create_all(conn, tables=[event_tag_log], checkfirst=True)


def _create_store_owner(conn: Connection) -> None:
    metadata.create_all(conn, tables=[store_owner], checkfirst=True)


def _create_leases(conn: Connection) -> None:
    metadata.create_all(conn, tables=[leases], checkfirst=True)


# Step i upgrades the schema from version i to i + 1. Append only; never edit a step
# that has shipped.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _create_events_and_tags,
    _create_snapshots,
    _create_tag_log,
    _create_store_owner,
    _create_leases,
)
SCHEMA_VERSION = len(MIGRATIONS)

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
_READ_STREAM = (
    select(*_EVENT_COLUMNS)
    .where(events.c.stream_id == bindparam("stream_id"), events.c.version > bindparam("after"))
    .order_by(events.c.version)
    .limit(bindparam("limit", type_=BigInteger))
)
_READ_ALL = (
    select(*_EVENT_COLUMNS)
    .where(events.c.position > bindparam("after"))
    .order_by(events.c.position)
    .limit(bindparam("limit", type_=BigInteger))
)
# The newest ``limit`` positions from the index (one walk down its range, stopped at the
# limit) and every match from the short log, joined to their events by position; then
# the newest ``limit`` of those. A join, not ``position IN (..) OR position IN (..)``,
# which Postgres answers by walking the whole events table.
_TAG_LIMIT = bindparam("limit", type_=BigInteger)
_INDEXED = (
    select(event_tags.c.position)
    .where(event_tags.c.tag == bindparam("tag"), event_tags.c.position < bindparam("before"))
    .order_by(event_tags.c.position.desc())
    .limit(_TAG_LIMIT)
    .subquery("indexed")
)
_TAGGED = union_all(
    select(_INDEXED.c.position),
    select(event_tag_log.c.position).where(
        event_tag_log.c.tag == bindparam("tag"), event_tag_log.c.position < bindparam("before")
    ),
).subquery("tagged")
_READ_TAG = (
    select(*_EVENT_COLUMNS)
    .select_from(_TAGGED.join(events, events.c.position == _TAGGED.c.position))
    .order_by(events.c.position.desc())
    .limit(_TAG_LIMIT)
)
_LOAD_SNAPSHOT = select(snapshots.c.version, snapshots.c.data).where(
    snapshots.c.stream_id == bindparam("stream_id")
)


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
    requests: Sequence[AppendRequest], positions: Mapping[tuple[str, int], int]
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
                    {"tag": tag, "position": position} for tag in dict.fromkeys(event.tags)
                )
    return tag_rows


class KeptConnection:
    """One pooled connection kept between appends by the thread that appends (the store's
    writer), which saves the pool's checkout and checkin (and its reset) per append.

    A thread appends within ``turn``: if no other thread is appending on the kept
    connection it may ``take`` it (``None`` when there is none yet) and ``give_back`` the
    one it used to be kept for the next append; a thread that finds another appending uses
    a connection of the pool's own. A connection that failed is not given back but
    invalidated, so the next append checks out a fresh one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pooled: Any = None
        self._closed = False

    @property
    def connection(self) -> Any:
        """The kept connection, or ``None`` (to look at; it stays kept)."""
        return self._pooled

    @contextlib.contextmanager
    def turn(self) -> Iterator[bool]:
        """Whether this thread may take and keep the connection until the block ends."""
        if not self._lock.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            self._lock.release()

    def take(self) -> Any:
        """The kept connection (no longer kept), or ``None``; only on a ``turn`` that said
        True."""
        pooled, self._pooled = self._pooled, None
        return pooled

    def give_back(self, pooled: Any, keep: bool) -> None:
        """Keeps ``pooled`` for the next append (``keep``: on a ``turn`` that said True),
        or returns it to the pool."""
        if keep and not self._closed:
            self._pooled = pooled
        else:
            pooled.close()

    def close(self) -> None:
        """Returns the kept connection to the pool and keeps none from now on."""
        with self._lock:
            self._closed = True
            if self._pooled is not None:
                self._pooled.close()
                self._pooled = None


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

    # --- backend hooks -----------------------------------------------------------------

    def _lock_migrations(self, conn: Connection) -> None:
        """Serialise ``migrate()`` across processes."""

    def _write(
        self,
        requests: Sequence[AppendRequest],
        keys: list[tuple[str, int]],
        rows: list[dict[str, Any]],
    ) -> dict[tuple[str, int], int]:
        """One transaction: check the versions (``keys``, see ``_append``), insert the rows
        and their tags (``tag_rows_for``), with positions committed in order.

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
    ) -> list[RecordedEvent]:
        check_append(stream_id, expected_version, events)
        check_lease(lease)
        return self._append((AppendRequest(stream_id, expected_version, events, lease),))[0]

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
        return self._read(
            _READ_STREAM, {"stream_id": stream_id, "after": after_version, "limit": limit}
        )

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
        self, tag: str, before_position: int | None = None, limit: int = 50
    ) -> list[RecordedEvent]:
        _check_limit(limit)
        before = _MAX_POSITION if before_position is None else before_position
        return self._read(_READ_TAG, {"tag": tag, "before": before, "limit": limit})

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
        positions = self._write(requests, keys, rows)

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
                        # Decoded from the stored text so the caller sees exactly what a
                        # later read returns (tuples become lists, keys become strings).
                        decode_data(row["data"]),
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
        return [
            RecordedEvent(p, s, v, t, decode_data(d), micros_to_datetime(r))
            for p, s, v, t, d, r in rows
        ]


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError("limit must be >= 0")
