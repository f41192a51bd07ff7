"""The SQL schema of the event store, shared by the SQL backends: its tables and the steps
that create and upgrade it (``MIGRATIONS``, run in order by ``SqlEventStore.migrate``).

Tables: ``events``; ``event_tags`` and ``event_tag_log`` (how tags are found, see
``sql``); ``snapshots`` (one per stream) and ``checkpoints`` (many per stream);
``store_owner``; ``leases``; ``schema_version``.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
    text,
)

from .port import MAX_OWNER_LENGTH, MAX_STREAM_ID_LENGTH, MAX_TAG_LENGTH, MAX_TYPE_LENGTH

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
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

# Keyed in the order reads walk (a tag's rows by time), so that a tag row changes one
# B-tree; the event's ``recorded_at`` is part of the key (see _time_tags, _key_tags_by_time).
event_tags = Table(
    "event_tags",
    metadata,
    Column("tag", String(MAX_TAG_LENGTH), primary_key=True),
    Column("recorded_at", BigInteger, primary_key=True, server_default="0"),
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
    Column("recorded_at", BigInteger, nullable=False, server_default="0"),
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

# Many rows per stream, one per version: states to rebuild the past from (``port.Checkpoint``).
# A rowid table: a checkpoint may be several KiB, too big to sit in a key's pages.
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("stream_id", String(MAX_STREAM_ID_LENGTH), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("recorded_at", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
    Index("checkpoints_by_time", "stream_id", "recorded_at", "version"),
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


def _create_checkpoints(conn: Connection) -> None:
    metadata.create_all(conn, tables=[checkpoints], checkfirst=True)


def _time_tags(conn: Connection) -> None:
    """Tag rows get their event's ``recorded_at``, and the index gets a key by time.

    The earlier steps create the tables as they are defined now, so a database made by
    them already has the columns: only one made by older code needs them added and filled.
    """
    for table in (event_tags, event_tag_log):
        columns = {column["name"] for column in inspect(conn).get_columns(table.name)}
        if "recorded_at" in columns:
            continue
        conn.execute(
            text(f"ALTER TABLE {table.name} ADD COLUMN recorded_at BIGINT NOT NULL DEFAULT 0")
        )
        recorded_at = (
            select(events.c.recorded_at)
            .where(events.c.position == table.c.position)
            .scalar_subquery()
        )
        conn.execute(table.update().values(recorded_at=recorded_at))
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS event_tags_by_time"
            " ON event_tags (tag, recorded_at, position)"
        )
    )


def _key_tags_by_time(conn: Connection) -> None:
    """``event_tags`` keyed by ``(tag, recorded_at, position)``, the order of the index
    ``_time_tags`` added, which goes: one B-tree per tag row written instead of two.

    A database made by the earlier steps as they are defined now has the key already.
    """
    key = inspect(conn).get_pk_constraint(event_tags.name)
    if key["constrained_columns"] != [c.name for c in event_tags.primary_key.columns]:
        if conn.dialect.name == "sqlite":
            # A WITHOUT ROWID table keeps its key for life: the rows move to a new table.
            conn.execute(text("ALTER TABLE event_tags RENAME TO event_tags_keyed_by_position"))
            event_tags.create(conn)
            conn.execute(
                text(
                    "INSERT INTO event_tags (tag, recorded_at, position)"
                    " SELECT tag, recorded_at, position FROM event_tags_keyed_by_position"
                )
            )
            conn.execute(text("DROP TABLE event_tags_keyed_by_position"))
        else:
            conn.execute(
                text(
                    f"ALTER TABLE event_tags DROP CONSTRAINT {key['name']},"
                    " ADD PRIMARY KEY (tag, recorded_at, position)"
                )
            )
    conn.execute(text("DROP INDEX IF EXISTS event_tags_by_time"))


# Step i upgrades the schema from version i to i + 1. Append only; never edit a step
# that has shipped.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _create_events_and_tags,
    _create_snapshots,
    _create_tag_log,
    _create_store_owner,
    _create_leases,
    _create_checkpoints,
    _time_tags,
    _key_tags_by_time,
)
SCHEMA_VERSION = len(MIGRATIONS)
