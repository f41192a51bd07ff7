"""``InMemoryEventStore``: the port's semantics in process memory, for unit tests.

Data is kept as the same compact JSON the SQL stores write, so values that would not
survive a database (tuples, non-string keys, NaN) behave here exactly as they do there.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from .port import (
    AppendRequest,
    Checkpoint,
    ConcurrencyConflict,
    Lease,
    LeaseChange,
    LeaseLost,
    LeaseWrite,
    NewCheckpoint,
    NewEvent,
    OwnedByAnother,
    RecordedEvent,
    Snapshot,
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

__all__ = ["InMemoryEventStore"]

_MAX = 2**63 - 1


class _Stored(NamedTuple):
    position: int
    stream_id: str
    version: int
    type: str
    data: str
    recorded_at: int

    def to_event(self, data: Mapping[str, Any] | None = None) -> RecordedEvent:
        # A fresh decode per read: callers may mutate what they get back.
        return RecordedEvent(
            self.position,
            self.stream_id,
            self.version,
            self.type,
            decode_data(self.data) if data is None else data,
            micros_to_datetime(self.recorded_at),
        )


class InMemoryEventStore:
    """A thread-safe ``EventStore`` in memory; ``ping`` and ``close`` are no-ops, and
    ``migrate`` only records the owner."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log: list[_Stored] = []  # position p is at index p - 1
        self._streams: dict[str, list[_Stored]] = {}
        # tag -> (recorded_at, position) of its events, ascending
        self._tags: dict[str, list[tuple[int, int]]] = {}
        self._snapshots: dict[str, tuple[int, str]] = {}  # stream -> (version, JSON)
        # stream -> version -> (recorded_at, JSON)
        self._checkpoints: dict[str, dict[int, tuple[int, str]]] = {}
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

    def _append(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]:
        encoded = [[encode_data(e.data) for e in r.events] for r in requests]
        kept = [
            [(c.version, encode_data(c.data, "checkpoint data")) for c in r.checkpoints]
            for r in requests
        ]
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
                        entry = (recorded_at, stored.position)
                        bisect.insort(self._tags.setdefault(tag, []), entry)
                    recorded.append(stored.to_event(event.data))
                results.append(recorded)
            for request, checkpoints in zip(requests, kept, strict=True):
                stream_checkpoints = self._checkpoints.setdefault(request.stream_id, {})
                for version, data in checkpoints:
                    stream_checkpoints[version] = (recorded_at, data)
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
        with self._lock:
            entries = self._tags.get(tag, [])
            # The slice within the times, then past the cursor, in the order asked.
            low = 0 if after is None else bisect.bisect_right(entries, (after, _MAX))
            high = len(entries) if before is None else bisect.bisect_left(entries, (before, 0))
            if start_after is not None:
                if not 0 < start_after <= len(self._log):
                    raise ValueError(f"no event at position {start_after}")
                cursor = (self._log[start_after - 1].recorded_at, start_after)
                if oldest_first:
                    low = max(low, bisect.bisect_right(entries, cursor))
                else:
                    high = min(high, bisect.bisect_left(entries, cursor))
            if oldest_first:
                chosen = entries[low : min(low + limit, high)]
            else:
                chosen = entries[max(high - limit, low) : high][::-1]
            selected = [self._log[position - 1] for _, position in chosen]
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

    def save_checkpoints(self, stream_id: str, checkpoints: Sequence[NewCheckpoint]) -> None:
        encoded = []
        for checkpoint in checkpoints:
            check_snapshot(stream_id, checkpoint.version)
            encoded.append((checkpoint.version, encode_data(checkpoint.data, "checkpoint data")))
        with self._lock:
            stream = self._streams.get(stream_id, [])
            kept = self._checkpoints.setdefault(stream_id, {})
            for version, data in encoded:
                if version <= len(stream) and version not in kept:
                    kept[version] = (stream[version - 1].recorded_at, data)

    def load_checkpoint(
        self, stream_id: str, *, version: int | None = None, time: datetime | None = None
    ) -> Checkpoint | None:
        if version is not None and time is not None:
            raise ValueError("a checkpoint is found by version or by time, not both")
        at = check_time(time, "time")
        with self._lock:
            kept = self._checkpoints.get(stream_id, {})
            if at is not None:
                found = [(t, v) for v, (t, _) in kept.items() if t <= at]
                best = max(found)[1] if found else None
            else:
                below = [v for v in kept if version is None or v <= version]
                best = max(below) if below else None
            if best is None:
                return None
            recorded_at, data = kept[best]
        return Checkpoint(stream_id, best, decode_data(data), micros_to_datetime(recorded_at))

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
