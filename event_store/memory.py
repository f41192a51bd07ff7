"""``InMemoryEventStore``: the port's semantics in process memory, for unit tests.

Data is kept as the same compact JSON the SQL stores write, so values that would not
survive a database (tuples, non-string keys, NaN) behave here exactly as they do there.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .port import (
    AppendRequest,
    ConcurrencyConflict,
    Lease,
    LeaseChange,
    LeaseLost,
    LeaseWrite,
    NewEvent,
    OwnedByAnother,
    RecordedEvent,
    Snapshot,
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

__all__ = ["InMemoryEventStore"]


class _Stored(NamedTuple):
    position: int
    stream_id: str
    version: int
    type: str
    data: str
    recorded_at: int

    def to_event(self) -> RecordedEvent:
        # A fresh decode per read: callers may mutate what they get back.
        return RecordedEvent(
            self.position,
            self.stream_id,
            self.version,
            self.type,
            decode_data(self.data),
            micros_to_datetime(self.recorded_at),
        )


class InMemoryEventStore:
    """A thread-safe ``EventStore`` in memory; ``ping`` and ``close`` are no-ops, and
    ``migrate`` only records the owner."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log: list[_Stored] = []  # position p is at index p - 1
        self._streams: dict[str, list[_Stored]] = {}
        self._tags: dict[str, list[int]] = {}  # positions, ascending
        self._snapshots: dict[str, tuple[int, str]] = {}  # stream -> (version, JSON)
        self._leases: dict[str, Lease] = {}
        self._owner: str | None = None

    def migrate(self, owner: str | None = None) -> None:
        if owner is None:
            return
        check_owner(owner)
        with self._lock:
            if self._owner is None:
                self._owner = owner
            elif self._owner != owner:
                raise OwnedByAnother(self._owner, owner)

    def ping(self) -> None:
        pass

    def close(self) -> None:
        pass

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

    def _append(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]:
        encoded = [[encode_data(e.data) for e in r.events] for r in requests]
        with self._lock:
            for request in requests:
                current = len(self._streams.get(request.stream_id, ()))
                if current != request.expected_version:
                    raise ConcurrencyConflict(request.stream_id, request.expected_version)
            leases = dict(self._leases)
            for request in requests:
                if request.lease is not None:
                    _write_lease(leases, request)
            self._leases = leases
            recorded_at = now_micros()
            results = []
            for request, datas in zip(requests, encoded, strict=True):
                stream = self._streams.setdefault(request.stream_id, [])
                recorded = []
                for event, data in zip(request.events, datas, strict=True):
                    stored = _Stored(
                        len(self._log) + 1,
                        request.stream_id,
                        len(stream) + 1,
                        event.type,
                        data,
                        recorded_at,
                    )
                    self._log.append(stored)
                    stream.append(stored)
                    for tag in dict.fromkeys(event.tags):
                        self._tags.setdefault(tag, []).append(stored.position)
                    recorded.append(stored.to_event())
                results.append(recorded)
            return results

    def read_stream(
        self, stream_id: str, after_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        _check_limit(limit)
        start = max(after_version, 0)
        with self._lock:
            stream = self._streams.get(stream_id, [])
            stop = len(stream) if limit is None else start + limit
            selected = stream[start:stop]
        return [s.to_event() for s in selected]

    def stream_version(self, stream_id: str) -> int:
        with self._lock:
            return len(self._streams.get(stream_id, ()))

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        _check_limit(limit)
        start = max(after_position, 0)
        with self._lock:
            selected = self._log[start : start + limit]
        return [s.to_event() for s in selected]

    def read_tag(
        self, tag: str, before_position: int | None = None, limit: int = 50
    ) -> list[RecordedEvent]:
        _check_limit(limit)
        with self._lock:
            positions = self._tags.get(tag, [])
            end = (
                len(positions)
                if before_position is None
                else bisect.bisect_left(positions, before_position)
            )
            chosen = positions[max(end - limit, 0) : end]
            selected = [self._log[p - 1] for p in reversed(chosen)]
        return [s.to_event() for s in selected]

    def save_snapshot(self, stream_id: str, version: int, data: Mapping[str, Any]) -> None:
        check_snapshot(stream_id, version)
        encoded = encode_data(data, "snapshot data")
        with self._lock:
            stored = self._snapshots.get(stream_id)
            if stored is None or version > stored[0]:
                self._snapshots[stream_id] = (version, encoded)

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        with self._lock:
            stored = self._snapshots.get(stream_id)
        if stored is None:
            return None
        return Snapshot(stream_id, stored[0], decode_data(stored[1]))

    # --- leases ---

    def claim(self, key: str, owner: str, now: int, until: int) -> int | None:
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                return None
            if lease.owner == owner:
                epoch = lease.epoch
            elif lease.owner == "" or lease.expires_at <= now:
                epoch = lease.epoch + 1
            else:
                return None
            self._leases[key] = Lease(key, owner, epoch, until)
            return epoch

    def claim_due(self, owner: str, now: int, until: int, limit: int) -> list[tuple[str, int]]:
        with self._lock:
            due = sorted(
                (
                    lease
                    for lease in self._leases.values()
                    if lease.expires_at <= now and lease.owner != owner
                ),
                key=lambda lease: lease.expires_at,
            )[:limit]
            for lease in due:
                self._leases[lease.key] = Lease(lease.key, owner, lease.epoch + 1, until)
            return [(lease.key, lease.epoch + 1) for lease in due]

    def renew(self, owner: str, until: int) -> dict[str, int]:
        with self._lock:
            owned = {k: v for k, v in self._leases.items() if v.owner == owner}
            for key, lease in owned.items():
                self._leases[key] = Lease(key, owner, lease.epoch, until)
            return {key: lease.epoch for key, lease in owned.items()}

    def rest(self, key: str, epoch: int, until: int) -> bool:
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.epoch != epoch:
                return False
            self._leases[key] = Lease(key, "", epoch, until)
            return True

    def abandon(self, owner: str | None, now: int) -> int:
        with self._lock:
            owned = [v for v in self._leases.values() if v.owner and owner in (None, v.owner)]
            for lease in owned:
                self._leases[lease.key] = Lease(lease.key, lease.owner, lease.epoch, now)
            return len(owned)

    def lease(self, key: str) -> Lease | None:
        with self._lock:
            return self._leases.get(key)


def _write_lease(leases: dict[str, Lease], request: AppendRequest) -> None:
    """Does ``request.lease`` to ``leases`` or raises, as the SQL stores do."""
    write = request.lease
    assert write is not None
    key = request.stream_id
    current = leases.get(key)
    if write.change is LeaseChange.CREATE:
        if current is not None:
            raise ConcurrencyConflict(key, request.expected_version)
        leases[key] = Lease(key, write.owner, 1, write.until)
        return
    if current is None or current.epoch != write.epoch:
        raise LeaseLost(key, write.epoch)
    if write.change is LeaseChange.REST:
        leases[key] = Lease(key, "", write.epoch, write.until)
    elif write.change is LeaseChange.DROP:
        del leases[key]


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
