"""Transfers stored as event streams, one per transfer (TransferRepository).

``TransferRequested`` is tagged with both accounts, which is how transfers of an account are
listed without a second table.
"""

from __future__ import annotations

from collections.abc import Sequence

from event_store import AsyncEventStore, NewEvent, RecordedEvent
from transfer_service import codec
from transfer_service.domain import (
    Transfer,
    TransferCompleted,
    TransferEvent,
    TransferFailed,
    TransferRequested,
)

STREAM_PREFIX = "transfer-"
_TERMINAL_TYPES = frozenset({TransferCompleted.__name__, TransferFailed.__name__})
_REQUESTED_TYPE = TransferRequested.__name__
_SCAN_PAGE = 5000


def stream_id(transfer_id: str) -> str:
    return STREAM_PREFIX + transfer_id


def account_tag(account_id: str) -> str:
    return "account:" + account_id


def _new_event(event: TransferEvent) -> NewEvent:
    kind, data = codec.encode(event)
    tags: tuple[str, ...] = ()
    if isinstance(event, TransferRequested):
        tags = (account_tag(event.from_account_id), account_tag(event.to_account_id))
    return NewEvent(kind, data, tags)


def _fold(transfer_id: str, recorded: Sequence[RecordedEvent]) -> Transfer:
    transfer = Transfer.empty(transfer_id)
    for event in recorded:
        transfer.apply(codec.decode(event.type, event.data), event.recorded_at)
    return transfer


class StoredTransfers:
    def __init__(self, store: AsyncEventStore) -> None:
        self._store = store

    async def load(self, transfer_id: str) -> Transfer | None:
        recorded = await self._store.read_stream(stream_id(transfer_id))
        return _fold(transfer_id, recorded) if recorded else None

    async def record(self, transfer: Transfer, events: Sequence[TransferEvent]) -> Transfer:
        """Appends at the transfer's version; the transfer with the events applied."""
        recorded = await self._store.append(
            stream_id(transfer.transfer_id), transfer.version, [_new_event(e) for e in events]
        )
        for event, stored in zip(events, recorded, strict=True):
            transfer.apply(event, stored.recorded_at)
        return transfer

    async def of_account(
        self, account_id: str, before_position: int | None, limit: int
    ) -> list[tuple[int, Transfer]]:
        """Transfers from or to the account, newest first, with their listing position."""
        requested = await self._store.read_tag(
            account_tag(account_id), before_position=before_position, limit=limit
        )
        page = []
        for event in requested:
            transfer_id = event.stream_id.removeprefix(STREAM_PREFIX)
            transfer = await self.load(transfer_id)
            if transfer is not None:
                page.append((event.position, transfer))
        return page

    async def unfinished(self) -> list[str]:
        """Ids of every transfer not yet COMPLETED or FAILED, oldest first."""
        open_ids: dict[str, None] = {}
        position = 0
        while True:
            page = await self._store.read_all(after_position=position, limit=_SCAN_PAGE)
            for event in page:
                if not event.stream_id.startswith(STREAM_PREFIX):
                    continue
                if event.type == _REQUESTED_TYPE:
                    open_ids[event.stream_id] = None
                elif event.type in _TERMINAL_TYPES:
                    open_ids.pop(event.stream_id, None)
            if len(page) < _SCAN_PAGE:
                return [sid.removeprefix(STREAM_PREFIX) for sid in open_ids]
            position = page[-1].position
