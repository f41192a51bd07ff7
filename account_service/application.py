"""Command handling for accounts: load, decide, append — one account at a time.

Each account has a mailbox. Commands for one account queue there and one task works the
queue, so commands on an account are serialized inside the process (the analogue of a
process per aggregate) while different accounts proceed concurrently. The task takes every
command waiting, decides them in order against the in-memory aggregate, appends all their
events in one append and only then answers each caller: one commit per burst instead of one
per command. Across processes, the expected-version check of the append keeps the stream
consistent; on a conflict the aggregate is reloaded and the burst decided again.

A sequence of commands over idle accounts (the forward steps of a transfer: reserve on one
account, credit another, capture on the first) can skip the mailboxes: when every account
it touches is cached, nothing is queued for it and nothing of it is being stored, the steps
are decided at once, in order, and their events stored in one transaction across the
accounts' streams (``submit_sequence``). Where many commands meet on one account, its
mailbox already gathers them into one append; over many quiet accounts, each command would
otherwise be an append of its own and every step would wait for one commit.

Loading starts from the account's snapshot when it has a usable one, and folds only the
events after it. Snapshots are written in the background, every ``snapshot_every`` events
(or a tenth of the references the account remembers, if that is more):
a snapshot is a cache of the fold, never the truth, so one that is missing, of an unknown
format, malformed or ahead of the stream only means folding the whole stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from account_service import codec
from account_service.domain import (
    Account,
    AccountEvent,
    AccountNotFound,
    AccountStatus,
    Hold,
    Reserved,
    SnapshotUnusable,
)
from event_store import (
    AppendRequest,
    AsyncEventStore,
    ConcurrencyConflict,
    EventStoreError,
    NewEvent,
    RecordedEvent,
)
from shared_kernel.crash import ACCOUNT_AFTER_APPEND
from shared_kernel.errors import DomainError

log = logging.getLogger(__name__)

STREAM_PREFIX = "account-"
Decision = Callable[[Account], list[AccountEvent]]
# One step of a sequence: its account, and its decision made from the state the step before
# left (None for the first step).
SequenceStep = tuple[str, Callable[["AccountView | None"], Decision]]
CrashPoint = Callable[[str], None]

# Running balances are stored with each event so a page of history needs no replay.
_RUNNING_FIELDS = ("balance_after", "reserved_after")
_LOAD_PAGE = 5000
_MAX_ATTEMPTS = 8
DEFAULT_SNAPSHOT_EVERY = 1000
# Snapshots are at least (references remembered / this) events apart (see _maybe_snapshot).
SNAPSHOT_COST_RATIO = 10


def stream_id(account_id: str) -> str:
    return STREAM_PREFIX + account_id


def _no_crash(point: str) -> None:
    return None


class ContentionTooHigh(DomainError):
    """Other writers kept changing the account's stream; the caller may retry."""


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account's state as of one answered command."""

    account_id: str
    owner: str
    currency: str
    balance: int
    reserved: int
    status: AccountStatus
    version: int
    reservations: tuple[tuple[str, Hold], ...] = ()

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One stored event of an account, with the balances right after it."""

    account_id: str
    version: int
    event: AccountEvent
    balance_after: int
    reserved_after: int
    occurred_at: datetime


def _view(account: Account, with_reservations: bool = False) -> AccountView:
    assert account.status is not None
    return AccountView(
        account_id=account.account_id,
        owner=account.owner,
        currency=account.currency,
        balance=account.balance,
        reserved=account.reserved,
        status=account.status,
        version=account.version,
        reservations=tuple(account.holds.items()) if with_reservations else (),
    )


def _encoded(account: Account, event: AccountEvent) -> NewEvent:
    """``event``, just applied to ``account``, as stored: with the balances after it."""
    kind, data = codec.encode(event)
    data["balance_after"] = account.balance
    data["reserved_after"] = account.reserved
    return NewEvent(kind, data)


def _decode(recorded: RecordedEvent) -> AccountEvent:
    data = {k: v for k, v in recorded.data.items() if k not in _RUNNING_FIELDS}
    return codec.decode(recorded.type, data)


_Command = tuple[Decision, bool, "asyncio.Future[AccountView]"]


class LockTimeout(DomainError):
    """An account stayed locked by another caller for longer than the caller would wait."""

    def __init__(self, account_id: str, timeout: float) -> None:
        super().__init__(
            f"account {account_id} stayed locked for {timeout:g}s", account_id=account_id
        )


class _Mailbox:
    __slots__ = (
        "account",
        "lock",
        "queue",
        "running",
        "snapshot_version",
        "snapshotting",
        "storing",
    )

    def __init__(self) -> None:
        self.account: Account | None = None
        self.queue: list[_Command] = []
        # A worker task is (or will be) working the queue, or a sequence is being stored.
        self.running = False
        # The append of a sequence (submit_sequence) holding events of this account.
        self.storing: asyncio.Future[list[list[RecordedEvent]]] | None = None
        # Held while a burst is decided and stored, or by an exclusive() caller.
        self.lock = asyncio.Lock()
        # The version of the account's newest snapshot, stored or last attempted.
        self.snapshot_version = 0
        self.snapshotting = False


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
    ) -> None:
        """``snapshot_every``: events an account grows by before its state is snapshotted
        again; 0 never writes snapshots (those already stored are still read)."""
        if snapshot_every < 0:
            raise ValueError("snapshot_every must be >= 0")
        self._store = store
        self._max_batch = max_batch
        self._cache_size = cache_size
        self._crash_point = crash_point
        self._mailboxes: OrderedDict[str, _Mailbox] = OrderedDict()
        self._changed: dict[str, asyncio.Event] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._draining = asyncio.Event()
        self._snapshot_every = snapshot_every
        self._snapshots: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- commands ---------------------------------------------------------------------

    async def execute(
        self, account_id: str, decision: Decision, *, with_reservations: bool = False
    ) -> AccountView:
        """Decide ``decision`` against the account and store its events; the state after it."""
        # The work goes on if this caller is cancelled: its command may still be stored.
        return await asyncio.shield(self.submit(account_id, decision, with_reservations))

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

    def _start_worker(self, account_id: str, mailbox: _Mailbox) -> None:
        mailbox.running = True
        self._track(asyncio.create_task(self._work(account_id, mailbox)))

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    def submit_sequence(
        self, steps: Sequence[SequenceStep]
    ) -> asyncio.Future[list[AccountView]] | None:
        """Decides ``steps`` now, in order, and stores their events in one append, if it can.

        Only when every account the steps touch is cached and idle (see the module), and
        every step decides new events. Then the future has the state after each step, once
        all of them are stored, or fails with nothing stored (the accounts are forgotten,
        so the next command loads them). Otherwise nothing is stored and None is returned:
        a refusal or a repeat, decided on a cached account, is only answered after the
        account is checked against the store, which the step-by-step path does.
        """
        mailboxes: dict[str, _Mailbox] = {}
        expected: dict[str, int] = {}
        for account_id, _ in steps:
            mailbox = self._mailboxes.get(account_id)
            if mailbox is None or mailbox.account is None or not _idle(mailbox):
                return None
            mailboxes[account_id] = mailbox
            expected[account_id] = mailbox.account.version
        new: dict[str, list[NewEvent]] = {}
        holds: list[tuple[str, int, str]] = []  # (account, index in its events, reference)
        views: list[AccountView] = []
        view: AccountView | None = None
        for account_id, decide in steps:
            account = mailboxes[account_id].account
            assert account is not None
            try:
                events = decide(view)(account)
            except Exception:
                events = []
            if not events:
                for changed in new:  # applied, never to be stored: load them again
                    mailboxes[changed].account = None
                return None
            stored = new.setdefault(account_id, [])
            for event in events:
                account.apply(event)
                stored.append(_encoded(account, event))
                if isinstance(event, Reserved):
                    holds.append((account_id, len(stored) - 1, event.reference))
            view = _view(account)
            views.append(view)
        requests = [
            AppendRequest(stream_id(account_id), expected[account_id], events)
            for account_id, events in new.items()
        ]
        appended = asyncio.ensure_future(self._store.append_batch(requests))
        for mailbox in mailboxes.values():
            mailbox.running = True
            mailbox.storing = appended
        self._track(appended)
        answer: asyncio.Future[list[AccountView]] = asyncio.get_running_loop().create_future()
        appended.add_done_callback(
            functools.partial(self._sequence_stored, mailboxes, list(new), holds, views, answer)
        )
        return answer

    def _sequence_stored(
        self,
        mailboxes: dict[str, _Mailbox],
        changed: list[str],
        holds: list[tuple[str, int, str]],
        views: list[AccountView],
        answer: asyncio.Future[list[AccountView]],
        appended: asyncio.Future[list[list[RecordedEvent]]],
    ) -> None:
        failure: BaseException | None
        recorded: dict[str, list[RecordedEvent]] = {}
        if appended.cancelled():
            failure = EventStoreError("append interrupted; it may or may not be stored")
        else:
            failure = appended.exception()
        if failure is None:
            recorded = dict(zip(changed, appended.result(), strict=True))
            for account_id, index, reference in holds:
                account = mailboxes[account_id].account
                assert account is not None
                hold = account.holds.get(reference)
                if hold is not None:
                    account.holds[reference] = Hold(
                        hold.amount, recorded[account_id][index].recorded_at
                    )
            self._crash_point(ACCOUNT_AFTER_APPEND)
        for account_id, mailbox in mailboxes.items():
            mailbox.storing = None
            mailbox.running = False
            if failure is not None:
                mailbox.account = None
            elif account_id in recorded:
                self._notify(account_id)
                assert mailbox.account is not None
                self._maybe_snapshot(account_id, mailbox, mailbox.account)
            if mailbox.queue:
                self._start_worker(account_id, mailbox)
        if answer.done():
            return
        if failure is not None:
            answer.set_exception(failure)
        else:
            answer.set_result(views)

    @contextlib.asynccontextmanager
    async def exclusive(
        self,
        account_id: str,
        timeout: float,  # noqa: ASYNC109 - a lock wait, not a deadline
    ) -> AsyncIterator[Callable[[Decision], Awaitable[AccountView]]]:
        """Holds the account's lock (waiting at most ``timeout``) for several commands.

        Yields a function that decides and stores one command while the lock is held.
        Commands of other callers queue meanwhile. Holding two of these at once is how
        the naive transfer strategy works, and why it deadlocks.
        """
        mailbox = self._mailbox(account_id)
        try:
            await asyncio.wait_for(mailbox.lock.acquire(), timeout)
        except TimeoutError:
            raise LockTimeout(account_id, timeout) from None
        try:
            # A sequence being stored holds events of the account without its lock.
            while mailbox.storing is not None:
                await asyncio.wait([mailbox.storing])

            async def run(decision: Decision) -> AccountView:
                future: asyncio.Future[AccountView] = asyncio.get_running_loop().create_future()
                await self._decide_and_store(account_id, mailbox, [(decision, False, future)])
                return await future

            yield run
        finally:
            mailbox.lock.release()

    def _mailbox(self, account_id: str) -> _Mailbox:
        mailbox = self._mailboxes.get(account_id)
        if mailbox is None:
            mailbox = self._mailboxes[account_id] = _Mailbox()
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

    async def _work(self, account_id: str, mailbox: _Mailbox) -> None:
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
        mailbox: _Mailbox,
        batch: Sequence[_Command],
    ) -> None:
        for _ in range(_MAX_ATTEMPTS):
            try:
                loaded = mailbox.account is None
                if loaded:
                    mailbox.account = await self._load(account_id, mailbox)
                account = mailbox.account
                expected = account.version
                outcomes: list[AccountView | BaseException] = []
                new: list[NewEvent] = []
                reserved: list[tuple[int, str]] = []
                for decision, with_reservations, _ in batch:
                    try:
                        events = decision(account)
                    except Exception as exc:
                        outcomes.append(exc)
                        continue
                    for event in events:
                        # Applied before the commit: a failed append drops the aggregate.
                        account.apply(event)
                        new.append(_encoded(account, event))
                        if isinstance(event, Reserved):
                            reserved.append((len(new) - 1, event.reference))
                    outcomes.append(_view(account, with_reservations))
                if not new and not loaded and await self._is_stale(account_id, expected):
                    # Nothing to append, so no version check vouches for the cached state
                    # these refusals and repeats were decided on: another process may have
                    # written. Decide again on the stored state.
                    mailbox.account = None
                    continue
                if new:
                    recorded = await self._store.append(stream_id(account_id), expected, new)
                    for index, reference in reserved:
                        hold = account.holds.get(reference)
                        if hold is not None:
                            account.holds[reference] = Hold(
                                hold.amount, recorded[index].recorded_at
                            )
                    self._crash_point(ACCOUNT_AFTER_APPEND)
                    self._notify(account_id)
                    self._maybe_snapshot(account_id, mailbox, account)
            except ConcurrencyConflict:
                mailbox.account = None
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

    async def _is_stale(self, account_id: str, version: int) -> bool:
        return await self._store.stream_version(stream_id(account_id)) != version

    async def _load(self, account_id: str, mailbox: _Mailbox | None = None) -> Account:
        """The account as stored: its snapshot, if usable, and the events after it."""
        account = await self._snapshot(account_id)
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
        if mailbox is not None:
            mailbox.snapshot_version = base
            self._maybe_snapshot(account_id, mailbox, account)
        return account

    async def _fold(self, account: Account) -> None:
        """Applies every stored event after the account's version."""
        while True:
            page = await self._store.read_stream(
                stream_id(account.account_id), after_version=account.version, limit=_LOAD_PAGE
            )
            for recorded in page:
                account.apply(_decode(recorded), recorded.recorded_at)
            if len(page) < _LOAD_PAGE:
                return

    async def _snapshot(self, account_id: str) -> Account:
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

    def _maybe_snapshot(self, account_id: str, mailbox: _Mailbox, account: Account) -> None:
        """Starts saving a snapshot of ``account`` (stored state only) if it is due.

        The state is copied now, while it is exactly what the store holds at its version;
        turning it into JSON and writing it happen in threads, off the caller's path.
        """
        every = self._snapshot_every
        if not every or self._closed or mailbox.snapshotting:
            return
        # A snapshot costs in proportion to what the account remembers (every reference it
        # applied), which only grows: spacing snapshots by at least a tenth of that keeps
        # their cost per event bounded, at the price of a longer fold on a cold load.
        every = max(every, account.remembered // SNAPSHOT_COST_RATIO)
        if account.version - mailbox.snapshot_version < every:
            return
        mailbox.snapshotting = True
        task = asyncio.create_task(self._save_snapshot(account_id, mailbox, account.copy()))
        self._snapshots.add(task)
        task.add_done_callback(self._snapshots.discard)

    async def _save_snapshot(self, account_id: str, mailbox: _Mailbox, state: Account) -> None:
        saved = False
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
            mailbox.snapshot_version = max(mailbox.snapshot_version, state.version)
            mailbox.snapshotting = False
        # The appends made meanwhile may have made the next one due. Unlocked and with no
        # sequence being stored, the cached account is exactly what is stored (a burst
        # applies its events under the lock, a sequence before its append); otherwise the
        # burst or the sequence checks after its own append.
        account = mailbox.account
        if saved and account is not None and not mailbox.lock.locked() and mailbox.storing is None:
            self._maybe_snapshot(account_id, mailbox, account)

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - bounded wait
        """Takes no more snapshots and waits (at most ``timeout``) for those being saved."""
        self._closed = True
        pending = set(self._snapshots)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # -- queries ----------------------------------------------------------------------

    async def get(self, account_id: str) -> AccountView:
        """The account's current state, with its open reservations."""
        # Through the mailbox, so the answer reflects every acknowledged command, including
        # those of other processes sharing the database (see _decide_and_store).
        return await self.execute(account_id, _existing, with_reservations=True)

    async def history(self, account_id: str, after_version: int, limit: int) -> list[HistoryEntry]:
        """Up to ``limit`` events after ``after_version``, oldest first."""
        page = await self._entries(account_id, after_version, limit)
        if not page and after_version == 0:
            raise AccountNotFound(account_id)
        return page

    async def _entries(self, account_id: str, after_version: int, limit: int) -> list[HistoryEntry]:
        page = await self._store.read_stream(
            stream_id(account_id), after_version=after_version, limit=limit
        )
        return [
            HistoryEntry(
                account_id=account_id,
                version=recorded.version,
                event=_decode(recorded),
                balance_after=recorded.data["balance_after"],
                reserved_after=recorded.data["reserved_after"],
                occurred_at=recorded.recorded_at,
            )
            for recorded in page
        ]

    async def watch(
        self, account_id: str, from_version: int, poll_interval: float = 1.0
    ) -> AsyncIterator[HistoryEntry]:
        """Events after ``from_version``, then live ones, until the caller stops iterating.

        Commits in this process wake watchers at once; the poll catches commits made by
        other processes sharing the database.
        """
        if await self._store.stream_version(stream_id(account_id)) == 0:
            raise AccountNotFound(account_id)
        last = from_version
        while True:
            changed = self._changed.setdefault(account_id, asyncio.Event())
            page = await self._entries(account_id, last, 500)
            for entry in page:
                yield entry
                last = entry.version
            if self._draining.is_set():
                return
            if len(page) < 500:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), poll_interval)

    async def drain(self) -> None:
        """Ends every watch after what it has already read, so a stop is not held up."""
        self._draining.set()
        for changed in self._changed.values():
            changed.set()

    def _notify(self, account_id: str) -> None:
        changed = self._changed.pop(account_id, None)
        if changed is not None:
            changed.set()


def _idle(mailbox: _Mailbox) -> bool:
    """Cached, and nothing queued, running, being stored or holding the lock."""
    account = mailbox.account
    return (
        account is not None
        and account.exists
        and not mailbox.running
        and not mailbox.queue
        and not mailbox.lock.locked()
    )


def _existing(account: Account) -> list[AccountEvent]:
    if not account.exists:
        raise AccountNotFound(account.account_id)
    return []
