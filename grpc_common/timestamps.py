"""``datetime`` to and from ``google.protobuf.Timestamp`` and ``Duration``, both services'."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from shared_kernel.errors import InvalidArgument

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What a Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def timestamp(at: datetime | None) -> Timestamp | None:
    """As ``Timestamp.FromDatetime`` (naive means UTC), for a fraction of its cost."""
    if at is None:
        return None
    message = Timestamp()
    set_timestamp(message, at)
    return message


def set_timestamp(message: Timestamp, at: datetime | None) -> None:
    """Sets a Timestamp field in place to ``at`` (left unset for None), without the copy
    a Timestamp given to a constructor costs."""
    if at is None:
        return
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    delta = at - _EPOCH
    message.seconds = delta.days * 86_400 + delta.seconds
    message.nanos = delta.microseconds * 1_000


def duration_micros(duration: Duration) -> int:
    """A Duration in whole microseconds (finer parts dropped)."""
    return duration.seconds * 1_000_000 + duration.nanos // 1_000


def parse_timestamp(value: Timestamp, field: str) -> datetime:
    """A Timestamp as an aware UTC datetime, to the microsecond (finer parts dropped);
    ``InvalidArgument`` naming ``field`` for one outside what a Timestamp may hold."""
    if not _MIN_SECONDS <= value.seconds <= _MAX_SECONDS or not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument(field, "not a valid timestamp (years 1 to 9999, nanos 0 to 10^9-1)")
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1_000)
