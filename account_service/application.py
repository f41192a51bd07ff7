"""The account service's use cases: execute a command, get an account, read and watch its
history.

``Accounts`` is what the servicers call. The work is done by its parts, each in a module
of its own: the mailboxes (``account_service.mailboxes``), which decide one account's
commands in bursts and keep the cache of accounts; the sequences
(``account_service.sequences``), which store a transfer's forward steps over quiet accounts
in one transaction; the snapshots (``account_service.snapshots``), from which accounts
are loaded and which are saved as they grow; and the past (``account_service.past``),
accounts as they were, rebuilt from their checkpoints; and the watchers
(``account_service.watchers``), one feed per watched account.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

from account_service.domain import Account, AccountEvent, AccountNotFound
from account_service.mailboxes import CrashPoint, Decision, HeldAccount, Mailboxes
from account_service.past import Past
from account_service.sequences import Sequences
from account_service.snapshots import DEFAULT_SNAPSHOT_EVERY, Snapshots
from account_service.streams import (
    DEFAULT_CHECKPOINT_EVERY,
    STREAM_PREFIX,
    event_of,
    stream_id,
)
from account_service.views import AccountView, HistoryEntry, view
from account_service.watchers import DEFAULT_MAX_PER_CALLER, Watchers
from event_store import AsyncEventStore

# STREAM_PREFIX and stream_id: where the audit and the benchmark find account streams.
__all__ = ["STREAM_PREFIX", "Accounts", "stream_id"]


def _no_crash(point: str) -> None:
    return None


class Accounts:
    """The account service's use cases, over an event store."""

    def __init__(
        self,
        store: AsyncEventStore,
        *,
        max_batch: int = 512,
        cache_size: int = 100_000,
        crash_point: CrashPoint = _no_crash,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        max_watchers_per_caller: int = DEFAULT_MAX_PER_CALLER,
    ) -> None:
        """``snapshot_every``: events an account grows by before its state is snapshotted
        again; 0 never writes snapshots (those already stored are still read).
        ``checkpoint_every``: an account's checkpoint is kept at every version that is a
        multiple of it (0: none), so a read of its past folds fewer events than that."""
        if checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")
        self._store = store
        self._snapshots = Snapshots(store, snapshot_every)
        self._past = Past(store, checkpoint_every)
        self._mailboxes = Mailboxes(
            store,
            self._snapshots,
            max_batch=max_batch,
            cache_size=cache_size,
            crash_point=crash_point,
            on_stored=self._notify,
            checkpoint_every=checkpoint_every,
        )
        self._sequences = Sequences(
            store, self._mailboxes, crash_point=crash_point, checkpoint_every=checkpoint_every
        )
        self._watchers = Watchers(self._entries, max_per_caller=max_watchers_per_caller)
        # The parts' own methods rather than wrappers: no call in between on a command's way.
        # submit(account_id, decision, with_reservations=False): queues the decision for
        # the account; a future of the state after it is stored (Mailboxes.submit).
        self.submit = self._mailboxes.submit
        # submit_sequences(sequences): decides each sequence whose accounts are open to it
        # and stores those taken in one append; per sequence a future, or None (Sequences.submit).
        self.submit_sequences = self._sequences.submit

    # -- commands ---------------------------------------------------------------------

    async def execute(
        self, account_id: str, decision: Decision, *, with_reservations: bool = False
    ) -> AccountView:
        """Decide ``decision`` against the account and store its events; the state after it."""
        # The work goes on if this caller is cancelled: its command may still be stored.
        return await asyncio.shield(self.submit(account_id, decision, with_reservations))

    async def hold(self, account_id: str) -> HeldAccount:
        """Holds the account for the caller's commands, one at a time, until it releases it;
        others' commands queue meanwhile (the naive transfer strategy's lock)."""
        return await self._mailboxes.hold(account_id)

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - bounded wait
        """Takes no more snapshots and waits (at most ``timeout``) for those being saved."""
        await self._snapshots.close(timeout)

    # -- queries ----------------------------------------------------------------------

    async def get(self, account_id: str) -> AccountView:
        """The account's current state, with its open reservations."""
        # Through the mailbox, so the answer reflects every acknowledged command, including
        # those of other processes sharing the database (see account_service.mailboxes).
        return await self.execute(account_id, _existing, with_reservations=True)

    async def as_of(
        self, account_id: str, *, version: int | None = None, instant: datetime | None = None
    ) -> AccountView:
        """The account as it stood after its event ``version``, or with every event recorded
        at or before ``instant``, with the reservations open then. Beyond the present: the
        present. Before it was opened: ``AccountNotFound``."""
        if version is not None:
            past = await self._past.after_version(account_id, version)
        else:
            assert instant is not None
            past = await self._past.at(account_id, instant)
        if past is None:
            return await self.get(account_id)
        if not past.exists:
            raise AccountNotFound(account_id)
        return view(past, with_reservations=True)

    async def history(self, account_id: str, after_version: int, limit: int) -> list[HistoryEntry]:
        """Up to ``limit`` events after ``after_version``, oldest first (also the refusals
        stored before the account was opened; none for an account not opened)."""
        await self.get(account_id)
        return await self._entries(account_id, after_version, limit)

    async def _entries(self, account_id: str, after_version: int, limit: int) -> list[HistoryEntry]:
        page = await self._store.read_stream(
            stream_id(account_id), after_version=after_version, limit=limit
        )
        return [
            HistoryEntry(
                account_id=account_id,
                version=recorded.version,
                event=event_of(recorded),
                balance_after=recorded.data["balance_after"],
                reserved_after=recorded.data["reserved_after"],
                occurred_at=recorded.recorded_at,
            )
            for recorded in page
        ]

    def open_hold_times(self) -> list[datetime | None]:
        """When each open reservation of the accounts in memory was made (None: being
        stored right now). Read on the event loop, which changes the accounts."""
        return self._mailboxes.open_hold_times()

    def open_pending_hold_times(self) -> list[datetime | None]:
        """The same for the holds of pending transfers (reservations with an expiry)."""
        return self._mailboxes.open_pending_hold_times()

    async def watch(
        self, account_id: str, from_version: int, caller: str = ""
    ) -> AsyncIterator[HistoryEntry]:
        """Events after ``from_version``, then live ones, until the caller stops iterating.

        Commits in this process wake watchers at once; one poll per watched account catches
        commits made by other processes sharing the database (``account_service.watchers``).
        ``caller``: who watches (a token, a connection), whose watchers are counted.
        """
        await self.get(account_id)
        async for entry in self._watchers.watch(account_id, from_version, caller):
            yield entry

    async def drain(self) -> None:
        """Ends every watch after what it has already read, so a stop is not held up."""
        self._watchers.drain()

    def _notify(self, account_id: str) -> None:
        self._watchers.notify(account_id)


def _existing(account: Account) -> list[AccountEvent]:
    if not account.exists:
        raise AccountNotFound(account.account_id)
    return []
