"""Per-account mailboxes: commands on one account, decided in bursts, one append per burst.

Each account has a mailbox. Commands for one account queue there and one task works the
queue, so commands on an account are serialized inside the process (the analogue of a
process per aggregate) while different accounts proceed concurrently. The task takes every
command waiting, decides them in order against the in-memory aggregate, appends all their
events in one append and only then answers each caller: one commit per burst instead of one
per command. Across processes, the expected-version check of the append keeps the stream
consistent; on a conflict the aggregate is reloaded and the burst decided again.

The mailboxes are also the cache of accounts: a mailbox keeps its account as stored, and
past ``cache_size`` accounts the least recently used idle ones are dropped. A sequence
(``account_service.sequences``) decides on cached accounts and stores its events while
their mailboxes hold their commands back; a holder (``hold``, the naive strategy's lock)
keeps the account's commands waiting while it runs its own.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, NamedTuple

from account_service.domain import Account, AccountEvent, Reserved
from account_service.snapshots import SnapshotMark, Snapshots
from account_service.streams import checkpoint_due, event_of, stored, stream_id
from account_service.views import AccountView, view
from event_store import (
    AppendRequest,
    AsyncEventStore,
    ConcurrencyConflict,
    NewCheckpoint,
    NewEvent,
    RecordedEvent,
)
from shared_kernel.crash import ACCOUNT_AFTER_APPEND
from shared_kernel.errors import DomainError

Decision = Callable[[Account], list[AccountEvent]]
CrashPoint = Callable[[str], None]
# Called with the account's id once events of it are stored (watchers wake on it).
OnStored = Callable[[str], None]

_Command = tuple[Decision, bool, "asyncio.Future[AccountView]"]
_MAX_ATTEMPTS = 8


class ContentionTooHigh(DomainError):
    """Other writers kept changing the account's stream; the caller may retry."""


class Mailbox:
    """One account's queue of commands, and the account as stored, when it is cached."""

    __slots__ = ("account", "lock", "queue", "running", "snapshot", "storing")

    def __init__(self) -> None:
        self.account: Account | None = None
        self.queue: list[_Command] = []
        # A worker task is (or will be) working the queue, or a sequence is being stored.
        self.running = False
        # The last append of sequences holding events of this account.
        self.storing: asyncio.Future[list[list[RecordedEvent]]] | None = None
        # Held while a burst is decided and stored, or by a holder (Mailboxes.hold).
        self.lock = asyncio.Lock()
        self.snapshot = SnapshotMark()

    def open_to_sequences(self) -> bool:
        """Cached, with nothing queued, no burst and no holder: idle, or only storing
        sequences, which a next one may follow."""
        account = self.account
        return (
            account is not None
            and account.exists
            and not self.queue
            and not self.lock.locked()
            and (not self.running or self.storing is not None)
        )

    def settled(self) -> Account | None:
        """The cached account if it is exactly what is stored: a burst applies its events
        under the lock, and a sequence before its append, so neither may be under way."""
        if self.lock.locked() or self.storing is not None:
            return None
        return self.account


class HeldAccount:
    """An account's lock, held by one caller for several commands (see ``Mailboxes.hold``)."""

    __slots__ = ("_account_id", "_mailbox", "_mailboxes")

    def __init__(self, mailboxes: Mailboxes, account_id: str, mailbox: Mailbox) -> None:
        self._mailboxes = mailboxes
        self._account_id = account_id
        self._mailbox = mailbox

    async def execute(self, decision: Decision) -> AccountView:
        """Decides and stores one command now; the state after it."""
        future: asyncio.Future[AccountView] = asyncio.get_running_loop().create_future()
        await self._mailboxes._decide_and_store(
            self._account_id, self._mailbox, [(decision, False, future)]
        )
        return await future

    def release(self) -> None:
        """Lets the account's queued commands run again."""
        self._mailbox.lock.release()


class Mailboxes:
    """Every account's mailbox, the cache of accounts they keep, and their workers."""

    def __init__(
        self,
        store: AsyncEventStore,
        snapshots: Snapshots,
        *,
        max_batch: int,
        cache_size: int,
        crash_point: CrashPoint,
        on_stored: OnStored,
        checkpoint_every: int,
    ) -> None:
        self._store = store
        self._snapshots = snapshots
        self._checkpoint_every = checkpoint_every
        self._max_batch = max_batch
        self._cache_size = cache_size
        self._crash_point = crash_point
        self._on_stored = on_stored
        self._mailboxes: OrderedDict[str, Mailbox] = OrderedDict()
        self._workers: set[asyncio.Future[Any]] = set()

    def submit(
        self, account_id: str, decision: Decision, with_reservations: bool = False
    ) -> asyncio.Future[AccountView]:
        """Queue ``decision`` for the account; a future of the state after it is stored."""
        mailbox = self._mailbox(account_id)
        future: asyncio.Future[AccountView] = asyncio.get_running_loop().create_future()
        mailbox.queue.append((decision, with_reservations, future))
        if not mailbox.running:
            self._start_worker(account_id, mailbox)
        return future

    async def hold(self, account_id: str) -> HeldAccount:
        """Takes the account's lock for the caller's commands, until ``release()``.

        Waits for the lock, and for a sequence being stored with events of the account
        (which holds them without the lock). Commands of other callers queue meanwhile.
        """
        mailbox = self._mailbox(account_id)
        await mailbox.lock.acquire()
        try:
            while mailbox.storing is not None:
                await asyncio.wait([mailbox.storing])
        except BaseException:
            mailbox.lock.release()
            raise
        return HeldAccount(self, account_id, mailbox)

    # -- for sequences ----------------------------------------------------------------

    def open_to_sequences(self, account_id: str) -> Mailbox | None:
        """The account's mailbox if a sequence may be decided on it now
        (``Mailbox.open_to_sequences``), else None."""
        mailbox = self._mailboxes.get(account_id)
        return mailbox if mailbox is not None and mailbox.open_to_sequences() else None

    def storing_sequence(
        self, mailboxes: Iterable[Mailbox], appended: asyncio.Future[list[list[RecordedEvent]]]
    ) -> None:
        """The accounts' events are in a sequence's ``appended``: their commands wait."""
        for mailbox in mailboxes:
            mailbox.running = True
            mailbox.storing = appended
        self._track(appended)

    def sequence_ended(
        self,
        account_id: str,
        mailbox: Mailbox,
        appended: asyncio.Future[list[list[RecordedEvent]]],
        stored: bool,
    ) -> None:
        """A sequence's append is over: if it was the account's last, the cached account is
        now what is stored; if nothing was stored, it is forgotten (the next command loads
        it, and an append that follows this one fails unstored)."""
        last = mailbox.storing is appended
        if last:
            mailbox.storing = None
            mailbox.running = False
        if not stored:
            mailbox.account = None
        else:
            self._on_stored(account_id)
            # Not before the last: the cached account holds events still being stored.
            if last and mailbox.account is not None:
                self._snapshots.save_if_due(account_id, mailbox, mailbox.account)
        if last and mailbox.queue:
            self._start_worker(account_id, mailbox)

    # -- queries ----------------------------------------------------------------------

    def open_hold_times(self) -> list[datetime | None]:
        """When each open reservation of the cached accounts was made (None: being
        stored right now)."""
        return [
            hold.reserved_at
            for mailbox in self._mailboxes.values()
            if mailbox.account is not None
            for hold in mailbox.account.holds.values()
        ]

    def open_pending_hold_times(self) -> list[datetime | None]:
        """When each open hold of a pending transfer (a reservation with an expiry) of the
        cached accounts was made."""
        return [
            hold.reserved_at
            for mailbox in self._mailboxes.values()
            if mailbox.account is not None
            for hold in mailbox.account.holds.values()
            if hold.expires_at is not None
        ]

    # -- the cache --------------------------------------------------------------------

    def _mailbox(self, account_id: str) -> Mailbox:
        mailbox = self._mailboxes.get(account_id)
        if mailbox is None:
            mailbox = self._mailboxes[account_id] = Mailbox()
            self._evict()
        else:
            self._mailboxes.move_to_end(account_id)
        return mailbox

    def _evict(self) -> None:
        excess = len(self._mailboxes) - self._cache_size
        if excess <= 0:
            return
        for account_id in list(self._mailboxes)[: excess * 2]:
            if excess <= 0:
                break
            mailbox = self._mailboxes[account_id]
            if not mailbox.running and not mailbox.queue:
                del self._mailboxes[account_id]
                excess -= 1

    # -- the workers ------------------------------------------------------------------

    def _start_worker(self, account_id: str, mailbox: Mailbox) -> None:
        mailbox.running = True
        self._track(asyncio.create_task(self._work(account_id, mailbox)))

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def _work(self, account_id: str, mailbox: Mailbox) -> None:
        try:
            while mailbox.queue:
                async with mailbox.lock:
                    batch = mailbox.queue[: self._max_batch]
                    del mailbox.queue[: self._max_batch]
                    await self._decide_and_store(account_id, mailbox, batch)
        finally:
            mailbox.running = False
            if mailbox.account is not None and not mailbox.account.exists:
                # Commands for accounts that do not exist should not fill the cache.
                self._mailboxes.pop(account_id, None)

    async def _decide_and_store(
        self,
        account_id: str,
        mailbox: Mailbox,
        batch: Sequence[_Command],
    ) -> None:
        # After a conflict the burst is decided at the store's writer (``_decided_there``):
        # another replica writing the account steadily would win every race of a burst
        # decided here and queued behind a commit.
        lost = False
        for _ in range(_MAX_ATTEMPTS):
            try:
                if lost:
                    outcomes = await self._decided_there(account_id, mailbox, batch)
                else:
                    outcomes = await self._decided_here(account_id, mailbox, batch)
                if outcomes is None:
                    lost = True
                    continue
            except ConcurrencyConflict:
                mailbox.account = None
                lost = True
                continue
            except BaseException as exc:
                mailbox.account = None
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            return
        for _, _, future in batch:
            if not future.done():
                future.set_exception(
                    ContentionTooHigh(f"account {account_id} kept changing; retry")
                )

    async def _decided_here(
        self, account_id: str, mailbox: Mailbox, batch: Sequence[_Command]
    ) -> list[AccountView | BaseException] | None:
        """The burst decided on the cached account (loaded if not cached) and appended
        through the group commit; None if the cache turned out stale with nothing to
        append."""
        loaded = mailbox.account is None
        if loaded:
            mailbox.account = await self._snapshots.load(account_id, mailbox)
        account = mailbox.account
        expected = account.version
        burst = _decide(account, batch, self._checkpoint_every)
        if not burst.new and not loaded and await self._is_stale(account_id, expected):
            # Nothing to append, so no version check vouches for the cached state these
            # refusals and repeats were decided on: another process may have written.
            mailbox.account = None
            return None
        if burst.new:
            recorded = await self._store.append(
                stream_id(account_id), expected, burst.new, checkpoints=burst.checkpoints
            )
            self._stored(account_id, mailbox, account, burst, recorded)
        return burst.outcomes

    async def _decided_there(
        self, account_id: str, mailbox: Mailbox, batch: Sequence[_Command]
    ) -> list[AccountView | BaseException]:
        """The burst decided at the store's writer, on the account as stored a moment
        before its append (``AsyncEventStore.append_decided``)."""
        base = await self._snapshots.load(account_id, mailbox)
        # Each call starts from a copy of ``base``, brought up to date and decided on in
        # the writer's thread: seen by no one else until it is cached, below.
        decided: list[tuple[Account, _Burst]] = []

        def decide(events: list[RecordedEvent]) -> AppendRequest | None:
            account = base.copy()
            for recorded in events:
                account.apply(event_of(recorded), recorded.recorded_at)
            expected = account.version
            burst = _decide(account, batch, self._checkpoint_every)
            decided.append((account, burst))
            if not burst.new:
                return None
            return AppendRequest(
                stream_id(account_id), expected, burst.new, None, burst.checkpoints
            )

        recorded = await self._store.append_decided(stream_id(account_id), base.version, decide)
        account, burst = decided[-1]
        if recorded:
            self._stored(account_id, mailbox, account, burst, recorded)
        mailbox.account = account
        return burst.outcomes

    def _stored(
        self,
        account_id: str,
        mailbox: Mailbox,
        account: Account,
        burst: _Burst,
        recorded: list[RecordedEvent],
    ) -> None:
        """A burst's events are stored: its holds take their recorded time."""
        for index, reference in burst.reserved:
            hold = account.holds.get(reference)
            if hold is not None:
                account.holds[reference] = replace(hold, reserved_at=recorded[index].recorded_at)
        self._crash_point(ACCOUNT_AFTER_APPEND)
        self._on_stored(account_id)
        self._snapshots.save_if_due(account_id, mailbox, account)

    async def _is_stale(self, account_id: str, version: int) -> bool:
        return await self._store.stream_version(stream_id(account_id)) != version


class _Burst(NamedTuple):
    """A burst decided: the events to append, the checkpoints due with them, the index of
    each reservation among the events, and an outcome per command."""

    new: list[NewEvent]
    checkpoints: list[NewCheckpoint]
    reserved: list[tuple[int, str]]
    outcomes: list[AccountView | BaseException]


def _decide(account: Account, batch: Sequence[_Command], checkpoint_every: int) -> _Burst:
    """Decides the burst's commands in order on ``account``, applying their events to it
    (before the commit: a failed append drops the account)."""
    burst = _Burst([], [], [], [])
    for decision, with_reservations, _ in batch:
        refusal: Exception | None = None
        try:
            events = decision(account)
        except Exception as exc:
            # A step's refusal is stored with it (see the domain), and answered once stored.
            events, refusal = getattr(exc, "record", ()), exc
        for event in events:
            account.apply(event)
            burst.new.append(stored(account, event))
            if isinstance(event, Reserved):
                burst.reserved.append((len(burst.new) - 1, event.reference))
            checkpoint = checkpoint_due(account, checkpoint_every)
            if checkpoint is not None:
                burst.checkpoints.append(checkpoint)
        burst.outcomes.append(refusal if refusal is not None else view(account, with_reservations))
    return burst
