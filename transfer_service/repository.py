"""Transfers stored as event streams, one per transfer, and who owns each (TransferRepository).

``TransferRequested`` is tagged with every account of the transfer, which is how transfers
of an account are listed without a second table.

Ownership: every transfer that has not ended has a lease in the store, keyed by its id:
the process driving it (owner), an epoch that goes up whenever another process takes it
over, and an expiry the owner keeps pushing forward while it lives. The lease is created
with the request, in the same transaction; every later record is conditional on the
writer's epoch; the terminal record drops it. A pending transfer at rest keeps a lease
with no owner that falls due when its hold expires (never, without an expiry). So the
leases are also the list of unfinished transfers: a process claims those that fall due.
"""

from __future__ import annotations

import copy
import os
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import datetime

from event_store import (
    AppendRequest,
    AsyncEventStore,
    ConcurrencyConflict,
    Lease,
    LeaseChange,
    LeaseWrite,
    NewEvent,
    RecordedEvent,
)
from transfer_service import codec
from transfer_service.domain import (
    Transfer,
    TransferCompleted,
    TransferEvent,
    TransferExpired,
    TransferFailed,
    TransferRequested,
    TransferReserved,
    TransferVoided,
    micros,
)

STREAM_PREFIX = "transfer-"
# A rest that never falls due.
NEVER = 2**62


def stream_id(transfer_id: str) -> str:
    return STREAM_PREFIX + transfer_id


def account_tag(account_id: str) -> str:
    return "account:" + account_id


def new_owner() -> str:
    """This process's name as an owner: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def now_micros() -> int:
    return time.time_ns() // 1000


def _new_event(event: TransferEvent) -> NewEvent:
    kind, data = codec.encode(event)
    tags: tuple[str, ...] = ()
    if isinstance(event, TransferRequested):
        accounts = {event.from_account_id, event.to_account_id} - {""}
        accounts.update(str(a) for leg in event.legs for a in leg[:2])
        tags = tuple(sorted(account_tag(a) for a in accounts))
    return NewEvent(kind, data, tags)


_ENDS = (TransferCompleted, TransferFailed, TransferVoided, TransferExpired)


def _due(transfer: Transfer) -> int:
    """When a transfer at rest falls due: its hold's expiry, or never."""
    expires = transfer.expires_at
    return micros(expires) if expires is not None else NEVER


def _fold(transfer_id: str, recorded: Sequence[RecordedEvent]) -> Transfer:
    transfer = Transfer.empty(transfer_id)
    for event in recorded:
        transfer.apply(codec.decode(event.type, event.data), event.recorded_at)
    return transfer


def _ends_a_reversal(transfer: Transfer, events: Sequence[TransferEvent]) -> bool:
    return bool(transfer.reverses_transfer_id) and isinstance(events[-1], _ENDS)


def _apply(
    transfer: Transfer, events: Sequence[TransferEvent], recorded: Sequence[RecordedEvent]
) -> None:
    for event, stored in zip(events, recorded, strict=True):
        transfer.apply(event, stored.recorded_at)


class StoredTransfers:
    def __init__(
        self, store: AsyncEventStore, *, owner: str | None = None, lease_seconds: float = 5.0
    ) -> None:
        self._store = store
        self.owner = owner or new_owner()
        self.lease_micros = int(lease_seconds * 1_000_000)

    async def load(self, transfer_id: str) -> Transfer | None:
        recorded = await self._store.read_stream(stream_id(transfer_id))
        return _fold(transfer_id, recorded) if recorded else None

    async def record(
        self, transfer: Transfer, events: Sequence[TransferEvent], epoch: int
    ) -> Transfer:
        """Appends at the transfer's version, if it is still owned at ``epoch``; the
        transfer with the events applied. A request creates its lease (epoch 1)."""
        request = self._request(transfer, events, epoch)
        if _ends_a_reversal(transfer, events):
            recorded = await self._ending_a_reversal(request, transfer, events)
        else:
            key, version, new, lease, _ = request
            recorded = await self._store.append(key, version, new, lease)
        _apply(transfer, events, recorded)
        return transfer

    async def record_many(
        self, records: Sequence[tuple[Transfer, Sequence[TransferEvent], int]]
    ) -> list[Transfer]:
        """``record`` for each ``(transfer, events, epoch)``, in one transaction (no
        reversal's end among them: that one settles its original too)."""
        if any(_ends_a_reversal(transfer, events) for transfer, events, _ in records):
            raise ValueError("a reversal's end is recorded on its own")
        recorded = await self._store.append_batch([self._request(*record) for record in records])
        for (transfer, events, _), stored in zip(records, recorded, strict=True):
            _apply(transfer, events, stored)
        return [transfer for transfer, _, _ in records]

    def _request(
        self, transfer: Transfer, events: Sequence[TransferEvent], epoch: int
    ) -> AppendRequest:
        """The append of ``events`` at the transfer's version, with its lease change."""
        lease = self._lease_write(transfer, events, isinstance(events[-1], _ENDS), epoch)
        new = [_new_event(e) for e in events]
        return AppendRequest(stream_id(transfer.transfer_id), transfer.version, new, lease)

    async def _ending_a_reversal(
        self, request: AppendRequest, transfer: Transfer, events: Sequence[TransferEvent]
    ) -> list[RecordedEvent]:
        """A reversal's end and its original's settling, in one transaction (an original
        changed meanwhile by another reversal is read again)."""
        reversal = copy.copy(transfer)
        for event in events:
            reversal.apply(event)
        while True:
            original = await self.load(reversal.reverses_transfer_id)
            assert original is not None
            settled = original.settle_reversal(reversal)
            if not settled:
                (recorded,) = await self._store.append_batch([request])
                return recorded
            settle = AppendRequest(
                stream_id(original.transfer_id), original.version, [_new_event(settled[0])]
            )
            try:
                recorded, _ = await self._store.append_batch([request, settle])
                return recorded
            except ConcurrencyConflict as conflict:
                if conflict.stream_id != settle.stream_id:
                    raise

    async def record_requests(self, requests: Sequence[TransferRequested]) -> list[Transfer]:
        """New transfers' requests, their leases created, in one transaction."""
        until = now_micros() + self.lease_micros
        lease = LeaseWrite(LeaseChange.CREATE, owner=self.owner, until=until)
        recorded = await self._store.append_batch(
            [AppendRequest(stream_id(r.transfer_id), 0, [_new_event(r)], lease) for r in requests]
        )
        transfers = []
        for request, (stored,) in zip(requests, recorded, strict=True):
            transfer = Transfer.empty(request.transfer_id)
            transfer.apply(request, stored.recorded_at)
            transfers.append(transfer)
        return transfers

    async def record_reversal(
        self,
        original: Transfer,
        reserved: Sequence[TransferEvent],
        request: TransferRequested,
    ) -> Transfer:
        """In one transaction: the original sets the amount aside (``reserved``) and the
        reversal is requested (its lease created). ``ConcurrencyConflict`` when either
        stream moved meanwhile."""
        reversal = Transfer.empty(request.transfer_id)
        until = now_micros() + self.lease_micros
        batch = [
            AppendRequest(
                stream_id(request.transfer_id),
                0,
                [_new_event(request)],
                LeaseWrite(LeaseChange.CREATE, owner=self.owner, until=until),
            ),
        ]
        if reserved:
            events = [_new_event(e) for e in reserved]
            batch.append(AppendRequest(stream_id(original.transfer_id), original.version, events))
        recorded = await self._store.append_batch(batch)
        reversal.apply(request, recorded[0][0].recorded_at)
        return reversal

    def _lease_write(
        self, before: Transfer, events: Sequence[TransferEvent], ends: bool, epoch: int
    ) -> LeaseWrite:
        if before.version == 0:
            until = now_micros() + self.lease_micros
            return LeaseWrite(LeaseChange.CREATE, owner=self.owner, until=until)
        if ends:
            return LeaseWrite(LeaseChange.DROP, epoch)
        if isinstance(events[-1], TransferReserved) and before.pending and not before.post_amount:
            # The hold is placed: the transfer rests until its expiry, or until a client
            # decides (a post or a void claims it).
            return LeaseWrite(LeaseChange.REST, epoch, until=_due(before))
        return LeaseWrite(LeaseChange.KEEP, epoch)

    # --- ownership ---

    async def claim(self, transfer_id: str) -> int | None:
        """Takes the transfer over if nobody drives it (or its driver stopped renewing);
        its epoch then, or None."""
        now = now_micros()
        key = stream_id(transfer_id)
        return await self._store.claim(key, self.owner, now, now + self.lease_micros)

    async def claim_due(self, limit: int) -> list[tuple[str, int]]:
        """Transfers whose lease fell due (a driver gone, a hold expired), now ours."""
        now = now_micros()
        claimed = await self._store.claim_due(self.owner, now, now + self.lease_micros, limit)
        return [(key.removeprefix(STREAM_PREFIX), epoch) for key, epoch in claimed]

    async def renew(self) -> dict[str, int]:
        """Pushes this process's leases forward; the transfers it still owns, by epoch."""
        owned = await self._store.renew(self.owner, now_micros() + self.lease_micros)
        return {key.removeprefix(STREAM_PREFIX): epoch for key, epoch in owned.items()}

    async def rest(self, transfer: Transfer, epoch: int) -> bool:
        """Hands a pending transfer back to rest (nobody drives it until it falls due)."""
        return await self._store.rest(stream_id(transfer.transfer_id), epoch, _due(transfer))

    async def lease(self, transfer_id: str) -> Lease | None:
        return await self._store.lease(stream_id(transfer_id))

    async def abandon(self, everyone: bool = False) -> int:
        """Makes every lease of this process (``everyone``: of every process) due at once,
        for another process to take."""
        return await self._store.abandon(None if everyone else self.owner, now_micros())

    # --- listings ---

    async def of_account(
        self,
        account_id: str,
        start_after: int | None,
        limit: int,
        *,
        oldest_first: bool = False,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[tuple[int, Transfer]]:
        """Transfers with a leg on the account, newest (or oldest) first, created strictly
        between the two instants if given, after the one at listing position
        ``start_after``; each with its listing position."""
        requested = await self._store.read_tag(
            account_tag(account_id),
            start_after,
            limit,
            oldest_first=oldest_first,
            recorded_after=created_after,
            recorded_before=created_before,
        )
        page = []
        for event in requested:
            transfer = await self.load(event.stream_id.removeprefix(STREAM_PREFIX))
            assert transfer is not None  # its request is the event just read
            page.append((event.position, transfer))
        return page
