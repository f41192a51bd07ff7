"""When an account is loaded from its snapshot, and when a snapshot of it is saved.

Loading starts from the account's snapshot when it has a usable one, and folds only the
events after it. Snapshots are written in the background, every ``snapshot_every`` events
(or a tenth of the references the account remembers, if that is more): a snapshot is a
cache of the fold, never the truth, so one that is missing, of an unknown format,
malformed or ahead of the stream only means folding the whole stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from account_service.domain import Account, SnapshotUnusable
from account_service.streams import event_of, stream_id
from event_store import AsyncEventStore

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_EVERY = 1000
# Snapshots are at least (references remembered / this) events apart (see save_if_due).
SNAPSHOT_COST_RATIO = 10
_LOAD_PAGE = 5000


class SnapshotMark:
    """Where the snapshots of one cached account stand."""

    __slots__ = ("saving", "version")

    def __init__(self) -> None:
        # The version of the account's newest snapshot, stored or last attempted.
        self.version = 0
        self.saving = False


class Cached(Protocol):
    """A cached account as its snapshots see it (its mailbox)."""

    @property
    def snapshot(self) -> SnapshotMark: ...

    def settled(self) -> Account | None:
        """The cached account if it is exactly what the store holds now, else None."""
        ...


class Snapshots:
    """Loads accounts from their snapshots and events; saves snapshots when they are due."""

    def __init__(self, store: AsyncEventStore, every: int = DEFAULT_SNAPSHOT_EVERY) -> None:
        """``every``: events an account grows by before its state is snapshotted again;
        0 never writes snapshots (those already stored are still read)."""
        if every < 0:
            raise ValueError("snapshot_every must be >= 0")
        self._store = store
        self._every = every
        self._saving: set[asyncio.Task[None]] = set()
        self._closed = False

    async def load(self, account_id: str, cached: Cached) -> Account:
        """The account as stored: its snapshot, if usable, and the events after it."""
        account = await self._from_snapshot(account_id)
        base = account.version
        await self._fold(account)
        if base and account.version == base:
            # No event after the snapshot: make sure the stream has reached it at all.
            stored = await self._store.stream_version(stream_id(account_id))
            if stored < base:
                log.warning(
                    "snapshot of account %s at version %d is ahead of its stream (%d);"
                    " replaying the events",
                    account_id,
                    base,
                    stored,
                )
                account, base = Account.empty(account_id), 0
                await self._fold(account)
        cached.snapshot.version = base
        self.save_if_due(account_id, cached, account)
        return account

    async def _fold(self, account: Account) -> None:
        """Applies every stored event after the account's version."""
        while True:
            page = await self._store.read_stream(
                stream_id(account.account_id), after_version=account.version, limit=_LOAD_PAGE
            )
            for recorded in page:
                account.apply(event_of(recorded), recorded.recorded_at)
            if len(page) < _LOAD_PAGE:
                return

    async def _from_snapshot(self, account_id: str) -> Account:
        """The account as of its stored snapshot; empty when it has none that can be used."""
        try:
            snapshot = await self._store.load_snapshot(stream_id(account_id))
            if snapshot is None:
                return Account.empty(account_id)
            account = Account.from_snapshot(account_id, snapshot.data)
            if account.version != snapshot.version:
                raise SnapshotUnusable(
                    f"it holds version {account.version}, stored as {snapshot.version}"
                )
        except ValueError as exc:  # SnapshotUnusable, or stored text that is not JSON
            log.warning(
                "snapshot of account %s not used (%s); replaying the events", account_id, exc
            )
            return Account.empty(account_id)
        return account

    def save_if_due(self, account_id: str, cached: Cached, account: Account) -> None:
        """Starts saving a snapshot of ``account`` (stored state only) if it is due.

        The state is copied now, while it is exactly what the store holds at its version;
        turning it into JSON and writing it happen in threads, off the caller's path.
        """
        every = self._every
        mark = cached.snapshot
        if not every or self._closed or mark.saving:
            return
        # A snapshot costs in proportion to what the account remembers (every reference it
        # applied), which only grows: spacing snapshots by at least a tenth of that keeps
        # their cost per event bounded, at the price of a longer fold on a cold load.
        every = max(every, account.remembered // SNAPSHOT_COST_RATIO)
        if account.version - mark.version < every:
            return
        mark.saving = True
        task = asyncio.create_task(self._save(account_id, cached, account.copy()))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def _save(self, account_id: str, cached: Cached, state: Account) -> None:
        saved = False
        mark = cached.snapshot
        try:
            data = await asyncio.to_thread(state.to_snapshot)
            await self._store.save_snapshot(stream_id(account_id), state.version, data)
            saved = True
        except Exception:
            log.warning(
                "snapshot of account %s at version %d not saved; the account loads from"
                " its events as before",
                account_id,
                state.version,
                exc_info=True,
            )
        finally:
            # After a failure too: the next attempt waits for another snapshot_every events.
            mark.version = max(mark.version, state.version)
            mark.saving = False
        # The appends made meanwhile may have made the next one due. When the cached
        # account is settled it is exactly what is stored; otherwise the burst or the
        # sequence under way checks after its own append.
        account = cached.settled()
        if saved and account is not None:
            self.save_if_due(account_id, cached, account)

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - bounded wait
        """Takes no more snapshots and waits (at most ``timeout``) for those being saved."""
        self._closed = True
        pending = set(self._saving)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
