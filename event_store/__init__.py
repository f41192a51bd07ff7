"""Append-only event streams with optimistic concurrency, behind one port.

Backends: SQLite (embedded default), Postgres, in-memory (tests). ``open_store`` picks one
by URL; ``AsyncEventStore`` runs any of them for asyncio code with group commit, and
``open_async_store`` opens one that way, ready to use. The SQL backends (SQLAlchemy,
psycopg) are imported when first used, so that code which only reads recorded events (the
audit's checks) or drives a store it is given loads neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .aio import AppendObserver, AsyncEventStore
from .memory import InMemoryEventStore
from .port import (
    AppendRequest,
    Checkpoint,
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    Lease,
    LeaseChange,
    LeaseLost,
    LeaseWrite,
    NewCheckpoint,
    NewEvent,
    OwnedByAnother,
    RecordedEvent,
    Snapshot,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from .postgres import PostgresEventStore
    from .sqlite import SqliteEventStore

__all__ = [
    "AppendObserver",
    "AppendRequest",
    "AsyncEventStore",
    "Checkpoint",
    "ConcurrencyConflict",
    "EventStore",
    "EventStoreError",
    "InMemoryEventStore",
    "Lease",
    "LeaseChange",
    "LeaseLost",
    "LeaseWrite",
    "NewCheckpoint",
    "NewEvent",
    "OwnedByAnother",
    "PostgresEventStore",
    "RecordedEvent",
    "Snapshot",
    "SqliteEventStore",
    "StoreUnavailable",
    "open_async_store",
    "open_store",
]


def open_store(url: str, **options: Any) -> EventStore:
    """The store named by ``url``; ``options`` go to its constructor.

    ``sqlite:///path/to/file.db`` (in-memory SQLite is refused), ``postgresql://`` or
    ``postgresql+psycopg://...``, ``memory://``. Opens no connection and does not migrate:
    call ``migrate()`` before the first use.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    backend = scheme.partition("+")[0]
    if scheme == "memory":
        if options:
            raise TypeError(f"memory:// takes no options, got {sorted(options)}")
        return InMemoryEventStore()
    if backend == "sqlite":
        from .sqlite import SqliteEventStore

        return SqliteEventStore(url, **options)
    if backend in ("postgresql", "postgres"):
        from .postgres import PostgresEventStore

        return PostgresEventStore(url, **options)
    raise ValueError(
        f"unsupported event store URL {url!r}: use sqlite:///<file>, "
        "postgresql+psycopg://..., or memory://"
    )


async def open_async_store(
    url: str, *, owner: str | None = None, observer: AppendObserver | None = None
) -> AsyncEventStore:
    """The store named by ``url`` for asyncio code, started, its schema created or migrated
    once the database answers (it waits for that as long as it takes).

    ``owner``: the service that keeps its events here; a database another service has
    claimed raises ``OwnedByAnother`` (see ``EventStore.migrate``). ``observer``: told of
    every append (see ``AsyncEventStore``).
    """
    store = AsyncEventStore(open_store(url), observer=observer)
    await store.start()
    try:
        await store.migrate_when_ready(owner)
    except BaseException:
        await store.close()
        raise
    return store


def __getattr__(name: str) -> Any:
    """The SQL backends' classes, imported on first use (see the module's docstring)."""
    if name == "SqliteEventStore":
        from .sqlite import SqliteEventStore

        return SqliteEventStore
    if name == "PostgresEventStore":
        from .postgres import PostgresEventStore

        return PostgresEventStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
