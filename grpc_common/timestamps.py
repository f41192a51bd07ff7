"""``datetime`` to and from ``google.protobuf.Timestamp`` and ``Duration``, both services'."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(at: datetime | None) -> Timestamp | None:
    """As ``Timestamp.FromDatetime`` (naive means UTC), for a fraction of its cost."""
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    delta = at - _EPOCH  # normalised: only days may be negative
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1_000)


def duration_micros(duration: Duration) -> int:
    """A Duration in whole microseconds (finer parts dropped)."""
    return duration.seconds * 1_000_000 + duration.nanos // 1_000
