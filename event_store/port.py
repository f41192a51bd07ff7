"""The event store port: the value types, the ``EventStore`` protocol and its errors.

Every adapter (SQLite, Postgres, in-memory) implements the same protocol with the same
semantics; ``tests/event_store/conformance.py`` is the executable form of this contract.

The values made for every event of every append and read (``NewEvent``, ``RecordedEvent``,
``AppendRequest``, ``LeaseWrite``) are NamedTuples: as immutable as the frozen dataclasses
beside them, and built in a third of the time.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol, runtime_checkable

import orjson

__all__ = [
    "MAX_STREAM_ID_LENGTH",
    "MAX_TAG_LENGTH",
    "MAX_TYPE_LENGTH",
    "AppendRequest",
    "Checkpoint",
    "ConcurrencyConflict",
    "EventStore",
    "EventStoreError",
    "Lease",
    "LeaseChange",
    "LeaseLost",
    "LeaseWrite",
    "NewCheckpoint",
    "NewEvent",
    "OwnedByAnother",
    "RecordedEvent",
    "Snapshot",
    "StoreUnavailable",
]

# Column widths of the SQL schema. Every adapter enforces them so that a value accepted
# by the in-memory store is never refused by a database later.
MAX_STREAM_ID_LENGTH = 200
MAX_TYPE_LENGTH = 100
MAX_TAG_LENGTH = 300
MAX_OWNER_LENGTH = 100


class NewEvent(NamedTuple):
    """An event to append. ``tags`` are secondary index keys, e.g. ``("account:<uuid>",)``."""

    type: str
    data: Mapping[str, Any]
    tags: tuple[str, ...] = ()


class RecordedEvent(NamedTuple):
    """An event as stored.

    ``position`` is the global order (strictly increasing, > 0); ``version`` counts the
    events of one stream from 1. ``recorded_at`` is UTC and shared by all events written
    in one append transaction. ``data`` is decoded from storage on reads; an append
    returns the data it was given.
    """

    position: int
    stream_id: str
    version: int
    type: str
    data: Mapping[str, Any]
    recorded_at: datetime


class LeaseChange(enum.Enum):
    """What an append does to its stream's lease, in the same transaction."""

    CREATE = "create"  # a new stream's lease: ``owner`` holds it at epoch 1 until ``until``
    KEEP = "keep"  # only if the writer still holds it at ``epoch``
    REST = "rest"  # at ``epoch``: nobody holds it now; it falls due at ``until``
    DROP = "drop"  # at ``epoch``: the work is done, the lease goes


class LeaseWrite(NamedTuple):
    change: LeaseChange
    epoch: int = 0
    owner: str = ""
    until: int = 0  # microseconds since the Unix epoch


@dataclass(frozen=True, slots=True)
class Lease:
    """Who does the work a stream stands for: ``owner`` ('' when nobody, at rest) at
    ``epoch``, until ``expires_at`` (microseconds since the Unix epoch): after it the lease
    may be claimed by another. The epoch goes up whenever someone else claims it."""

    key: str
    owner: str
    epoch: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class NewCheckpoint:
    """A stream's state as of ``version``, to keep as a checkpoint (see ``Checkpoint``)."""

    version: int
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The state of one stream as of ``version``, in whatever form its owner chose, kept
    beside its events: a stream has any number of checkpoints, one per version at most, so
    that its state as of any version is rebuilt from the nearest one at or below it and the
    events after. ``recorded_at`` is when the event at ``version`` was recorded.

    Like a snapshot, a cache of a fold: the events stay the truth.
    """

    stream_id: str
    version: int
    data: dict[str, Any]
    recorded_at: datetime


class AppendRequest(NamedTuple):
    """One stream's part of ``append_batch``: ``expected_version`` is 0 for a new stream.
    ``lease``: what the append does to the stream's lease (nothing when None).
    ``checkpoints``: kept in the same transaction, each at a version the append writes."""

    stream_id: str
    expected_version: int
    events: Sequence[NewEvent]
    lease: LeaseWrite | None = None
    checkpoints: Sequence[NewCheckpoint] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A cache of the state of one stream as of ``version``, in whatever form its owner chose.

    Events stay the truth: a snapshot only saves folding events ``1..version`` again.
    """

    stream_id: str
    version: int
    data: dict[str, Any]


class EventStoreError(Exception):
    """Base of every error an event store raises besides ``ValueError`` for bad input."""


class ConcurrencyConflict(EventStoreError):
    """The stream is not at the expected version; nothing was stored."""

    def __init__(self, stream_id: str, expected_version: int) -> None:
        super().__init__(f"stream {stream_id!r} is not at expected version {expected_version}")
        self.stream_id = stream_id
        self.expected_version = expected_version

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the exception picklable (e.g. across process pools) despite the
        # two-argument constructor.
        return (type(self), (self.stream_id, self.expected_version))


class StoreUnavailable(EventStoreError):
    """The database cannot be reached, is down, or stayed locked beyond the busy timeout."""


class OwnedByAnother(EventStoreError):
    """``migrate(owner)`` found the database claimed by another service; nothing changed."""

    def __init__(self, owner: str, claimant: str) -> None:
        super().__init__(
            f"the database belongs to {owner}, not to {claimant}: each service keeps its"
            f" events in a database of its own; give {claimant} another --db (on Postgres,"
            " a schema of its own: ?options=-csearch_path%3D<schema>)"
        )
        self.owner = owner
        self.claimant = claimant

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.owner, self.claimant))


class LeaseLost(EventStoreError):
    """The lease is held at another epoch than the writer's (or is gone): someone else has
    taken the work over. Nothing was stored."""

    def __init__(self, key: str, epoch: int) -> None:
        super().__init__(f"lease {key!r} is no longer held at epoch {epoch}")
        self.key = key
        self.epoch = epoch

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.epoch))


@runtime_checkable
class EventStore(Protocol):
    """Append-only event streams with optimistic concurrency.

    ``append``/``append_batch`` store nothing unless every stream is at its
    ``expected_version``; otherwise they raise ``ConcurrencyConflict``. ``append_batch``
    is one transaction: all requests are stored or none is, and its results are in
    request order.
    """

    def migrate(self, owner: str | None = None) -> None:
        """Create or upgrade the schema. Idempotent; safe when two processes race.

        ``owner``: the service that keeps its events here. The first to migrate with one
        claims the database; a different owner later raises ``OwnedByAnother`` and changes
        nothing. Without one, nothing is claimed or checked (tools that only read)."""
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the database does not answer."""
        ...

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[NewEvent],
        lease: LeaseWrite | None = None,
        checkpoints: Sequence[NewCheckpoint] = (),
    ) -> list[RecordedEvent]:
        """Also does ``lease`` to the stream's lease, or stores nothing and raises
        ``LeaseLost`` (a lease held at another epoch, or none) or ``ConcurrencyConflict``
        (creating a lease that exists). Keeps ``checkpoints`` (each at a version this
        append writes) in the same transaction."""
        ...

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]: ...

    # Leases: one per stream at most, keyed by its stream id (see ``Lease``). ``now`` and
    # ``until`` are microseconds since the Unix epoch, on the caller's clock.

    def claim(self, key: str, owner: str, now: int, until: int) -> int | None:
        """Takes the lease for ``owner`` until ``until`` if nobody holds it, its holder's
        time ran out (``expires_at <= now``) or ``owner`` holds it already; its epoch
        (up by one when it changed hands), else None (also when there is no lease)."""
        ...

    def claim_due(self, owner: str, now: int, until: int, limit: int) -> list[tuple[str, int]]:
        """Takes up to ``limit`` leases that fell due (``expires_at <= now``) and that
        ``owner`` does not hold, oldest due first, skipping any another claimer is taking
        at the same moment; (key, epoch) of each."""
        ...

    def renew(self, owner: str, until: int) -> dict[str, int]:
        """Moves every lease ``owner`` holds forward to ``until``; their epochs by key."""
        ...

    def rest(self, key: str, epoch: int, until: int) -> bool:
        """Hands the lease back (no owner) to fall due at ``until``, if held at ``epoch``."""
        ...

    def abandon(self, owner: str | None, now: int) -> int:
        """Makes every lease ``owner`` holds (None: every held lease) due at ``now``; how
        many."""
        ...

    def lease(self, key: str) -> Lease | None: ...

    def read_stream(
        self, stream_id: str, after_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events of the stream with version > ``after_version``, ascending."""
        ...

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version; 0 if it has no events."""
        ...

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """Events of every stream with position > ``after_position``, ascending."""
        ...

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
        """Events carrying ``tag`` in the order they were recorded (by ``recorded_at``,
        then position): newest first, or ``oldest_first``.

        ``start_after``: the position of an event (the last of the previous page): the
        page goes on past it, in the order asked. ``recorded_after``, ``recorded_before``:
        only events recorded strictly after, strictly before. A page costs what it holds,
        however many events carry the tag outside those bounds."""
        ...

    def save_snapshot(self, stream_id: str, version: int, data: Mapping[str, Any]) -> None:
        """Keep ``data`` as the stream's snapshot at ``version``, unless the stored one is at
        the same or a later version: then this one is ignored (never an error). One
        snapshot per stream. Not checked against the stream: the caller vouches for it."""
        ...

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stream's snapshot, or None if it has none."""
        ...

    def save_checkpoints(self, stream_id: str, checkpoints: Sequence[NewCheckpoint]) -> None:
        """Keeps each checkpoint at a version the stream has reached and that has none yet;
        the others are ignored (never an error). For checkpoints found missing after the
        events were stored; each gets the ``recorded_at`` of the event at its version."""
        ...

    def load_checkpoint(
        self, stream_id: str, *, version: int | None = None, time: datetime | None = None
    ) -> Checkpoint | None:
        """The stream's newest checkpoint at or below ``version``, or the newest recorded at
        or before ``time`` (the latest time, then the highest version); without either, its
        newest. None if there is none."""
        ...

    def close(self) -> None: ...


# --- shared by the adapters -------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_VERSION = 2**63 - 1


def now_micros() -> int:
    """The current time as microseconds since the epoch, the stored form of ``recorded_at``."""
    return time.time_ns() // 1000


def micros_to_datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


# orjson writes event data in about an eighth of the standard encoder's time. Types outside
# JSON raise, datetimes and dataclasses included (orjson would write them otherwise).
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# The standard encoder decides what orjson refuses (integers beyond 64 bits are JSON too)
# and output with a null: orjson writes NaN and infinities as null, this encoder refuses them.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_data(data: Mapping[str, Any], what: str = "event data") -> str:
    """Compact JSON; ``ValueError`` if the data is not a JSON object of JSON values."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a mapping, not {type(data).__name__}")
    try:
        encoded: bytes | None = orjson.dumps(data, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        encoded = None
    if encoded is not None and b"null" not in encoded:
        return encoded.decode()
    try:
        text = _encode_json(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from exc
    _check_encodable(text, what)
    return text


def encode_rows(rows: object) -> str:
    """Rows of strings and integers already checked (stream ids, versions, stored data) as
    one JSON text, for the stores that take a batch's rows as one parameter."""
    return orjson.dumps(rows).decode()


# The standard decoder: orjson reads integers beyond 64 bits as floats.
decode_data = json.loads


def _check_encodable(text: str, what: str) -> None:
    # Lone surrogates cannot be encoded as UTF-8 for the database.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} is not valid Unicode text: {exc}") from exc


def _check_name(value: object, what: str, max_length: int) -> None:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ValueError(f"{what} must be a string of 1..{max_length} characters")
    if "\x00" in value:  # Postgres text cannot hold NUL
        raise ValueError(f"{what} must not contain NUL characters")
    _check_encodable(value, what)


def check_append(stream_id: str, expected_version: int, events: Sequence[NewEvent]) -> None:
    """Reject malformed input with ``ValueError`` before any database work."""
    _check_name(stream_id, "stream_id", MAX_STREAM_ID_LENGTH)
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise ValueError("expected_version must be an int")
    if expected_version < 0:
        raise ValueError("expected_version must be >= 0")
    if not events:
        raise ValueError(f"no events to append to stream {stream_id!r}")
    for event in events:
        _check_name(event.type, "event type", MAX_TYPE_LENGTH)
        if isinstance(event.tags, str):
            raise ValueError("event tags must be a tuple of strings, not a string")
        for tag in event.tags:
            _check_name(tag, "event tag", MAX_TAG_LENGTH)


def check_owner(owner: str) -> None:
    _check_name(owner, "owner", MAX_OWNER_LENGTH)


def check_snapshot(stream_id: str, version: int) -> None:
    _check_name(stream_id, "stream_id", MAX_STREAM_ID_LENGTH)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError("snapshot version must be an int")
    if not 0 < version <= _MAX_VERSION:
        raise ValueError(f"snapshot version must be 1..{_MAX_VERSION}")


def check_checkpoints(request: AppendRequest) -> None:
    """Checkpoints of an append: each at a version the append writes, in ascending order."""
    previous = request.expected_version
    for checkpoint in request.checkpoints:
        if not isinstance(checkpoint, NewCheckpoint):
            raise ValueError("checkpoints must be NewCheckpoint values")
        version = checkpoint.version
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError("a checkpoint's version must be an int")
        if not previous < version <= request.expected_version + len(request.events):
            raise ValueError(
                f"checkpoint at version {version} is not one this append writes, in order"
            )
        previous = version


def check_time(value: datetime | None, what: str) -> int | None:
    """``value`` as stored (microseconds since the Unix epoch); ``ValueError`` if naive."""
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return (value - _EPOCH) // timedelta(microseconds=1)


def check_lease(lease: LeaseWrite | None) -> None:
    if lease is None:
        return
    if not isinstance(lease, LeaseWrite):
        raise ValueError("lease must be a LeaseWrite")
    if lease.change is LeaseChange.CREATE:
        _check_name(lease.owner, "lease owner", MAX_STREAM_ID_LENGTH)
    elif isinstance(lease.epoch, bool) or not isinstance(lease.epoch, int) or lease.epoch < 1:
        raise ValueError("a lease is held at an epoch >= 1")


def check_batch(requests: Sequence[AppendRequest]) -> None:
    seen: set[str] = set()
    for request in requests:
        check_append(request.stream_id, request.expected_version, request.events)
        check_lease(request.lease)
        check_checkpoints(request)
        if request.stream_id in seen:
            raise ValueError(f"stream {request.stream_id!r} appears twice in one batch")
        seen.add(request.stream_id)
