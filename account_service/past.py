"""An account as it stood after a version or at an instant, rebuilt from its checkpoints.

Every append that reaches a multiple of ``checkpoint_every`` keeps the account's checkpoint
there (``streams.checkpoint_due``). A read of the past loads the nearest checkpoint at or
below its version (or the latest recorded at or before its instant) and folds the events
after it: fewer than ``checkpoint_every`` of them, however long the stream, so its cost
does not grow with the account's history. The checkpoints' own index answers "which
version at this instant" without walking the stream.

A read that folds past a multiple of ``checkpoint_every`` has found checkpoints missing
(events stored before checkpoints existed, or with another ``checkpoint_every``): it saves
the ones it passed, so the next read of that stretch does not fold it again.
"""

from __future__ import annotations

import logging
from datetime import datetime

from account_service.domain import Account, from_checkpoint
from account_service.streams import checkpoint_due, event_of, stream_id
from event_store import AsyncEventStore, Checkpoint, NewCheckpoint

log = logging.getLogger(__name__)

# Events read at a time when nothing bounds the fold (no checkpoints kept).
_PAGE = 5000


class Past:
    """Rebuilds accounts as they were, from the checkpoints of ``store``."""

    def __init__(self, store: AsyncEventStore, checkpoint_every: int) -> None:
        self._store = store
        self._every = checkpoint_every

    async def after_version(self, account_id: str, version: int) -> Account | None:
        """The account after its event ``version``; None when that is the present (the
        stream has no event after it)."""
        if version >= await self._store.stream_version(stream_id(account_id)):
            return None
        checkpoint = await self._store.load_checkpoint(stream_id(account_id), version=version)
        account = self._start(account_id, checkpoint)
        await self._fold(account, version=version)
        return account

    async def at(self, account_id: str, instant: datetime) -> Account | None:
        """The account with every event recorded at or before ``instant``; None when that
        is every event it has (the present)."""
        checkpoint = await self._store.load_checkpoint(stream_id(account_id), time=instant)
        account = self._start(account_id, checkpoint)
        if await self._fold(account, instant=instant):
            return None
        return account

    def _start(self, account_id: str, checkpoint: Checkpoint | None) -> Account:
        if checkpoint is None:
            return Account.empty(account_id)
        try:
            return from_checkpoint(account_id, checkpoint.data, checkpoint.recorded_at)
        except ValueError as exc:  # SnapshotUnusable
            log.warning(
                "checkpoint of account %s at version %d not used (%s); folding its events",
                account_id,
                checkpoint.version,
                exc,
            )
            return Account.empty(account_id)

    async def _fold(
        self, account: Account, *, version: int | None = None, instant: datetime | None = None
    ) -> bool:
        """Applies the events after the account's version, up to ``version`` or those
        recorded by ``instant``; whether it reached the end of the stream."""
        missing: list[NewCheckpoint] = []
        page_size = self._every or _PAGE
        try:
            while True:
                limit = page_size if version is None else min(page_size, version - account.version)
                if limit <= 0:
                    return False
                page = await self._store.read_stream(
                    stream_id(account.account_id), after_version=account.version, limit=limit
                )
                for recorded in page:
                    if instant is not None and recorded.recorded_at > instant:
                        return False
                    account.apply(event_of(recorded), recorded.recorded_at)
                    checkpoint = checkpoint_due(account, self._every)
                    if checkpoint is not None:
                        missing.append(checkpoint)
                if len(page) < limit:
                    return True
        finally:
            if missing:
                await self._save(account.account_id, missing)

    async def _save(self, account_id: str, missing: list[NewCheckpoint]) -> None:
        try:
            await self._store.save_checkpoints(stream_id(account_id), missing)
        except Exception:
            # A cache: the next read folds the same events again, and tries again.
            log.warning(
                "%d missing checkpoints of account %s not saved",
                len(missing),
                account_id,
                exc_info=True,
            )
