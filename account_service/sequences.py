"""Sequences of commands over quiet accounts, decided at once and stored in one transaction.

The forward steps of a transfer (reserve on one account, credit another, capture on the
first) can skip the mailboxes: when every account the sequence touches is cached and
nothing is queued or decided for it in its mailbox, the steps are decided at once, in
order, and their events stored in one append across the accounts' streams. Where many
commands meet on one account, its mailbox already gathers them into one append; over many
quiet accounts, each command would otherwise be an append of its own and every step would
wait for one commit. The sequences offered together (one message's) share one append.

An account whose events of earlier sequences are still being stored is open to the next
ones too: they are decided on the state those leave, and their append is queued once those
are stored, and not at all if one of them is not (its accounts are then loaded again, and
no version check could tell events decided on unstored state from others' of the same
count). Such a sequence waits for one commit more instead of three, step by step.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import replace

from account_service.domain import Reserved
from account_service.mailboxes import CrashPoint, Decision, Mailbox, Mailboxes
from account_service.streams import checkpoint_due, stored, stream_id
from account_service.views import AccountView, view
from event_store import (
    AppendRequest,
    AsyncEventStore,
    EventStoreError,
    NewCheckpoint,
    NewEvent,
    RecordedEvent,
)
from shared_kernel.crash import ACCOUNT_AFTER_APPEND

# One step of a sequence: its account, and its decision made from the state the step before
# left (None for the first step).
SequenceStep = tuple[str, Callable[[AccountView | None], Decision]]


class _Group:
    """The sequences taken from one offer, to be stored in one append."""

    __slots__ = ("answers", "checkpoints", "events", "expected", "holds", "mailboxes")

    def __init__(self) -> None:
        self.mailboxes: dict[str, Mailbox] = {}
        self.expected: dict[str, int] = {}  # each account's version before the group
        self.events: dict[str, list[NewEvent]] = {}
        self.checkpoints: dict[str, list[NewCheckpoint]] = {}
        # (account, index in its events, reference) of each hold placed
        self.holds: list[tuple[str, int, str]] = []
        self.answers: list[tuple[asyncio.Future[list[AccountView]], list[AccountView]]] = []


class Sequences:
    """Decides sequences on the accounts cached in ``mailboxes`` and stores them whole."""

    def __init__(
        self,
        store: AsyncEventStore,
        mailboxes: Mailboxes,
        *,
        crash_point: CrashPoint,
        checkpoint_every: int,
    ) -> None:
        self._store = store
        self._mailboxes = mailboxes
        self._crash_point = crash_point
        self._checkpoint_every = checkpoint_every

    def submit(
        self, sequences: Sequence[Sequence[SequenceStep]]
    ) -> list[asyncio.Future[list[AccountView]] | None]:
        """Decides each sequence now, in order, and stores those it takes in one append.

        A sequence is taken when every account it touches is open to it (see the module),
        or already in a sequence taken before it here, and every step decides new
        events: it is decided on the state the sequences before it left, and an account's
        events of all of them go in its one request of the append. A taken sequence's
        future has the state after each of its steps once the append is stored, or fails
        with nothing of any of them stored (their accounts are forgotten, so the next
        command loads them). For a sequence not taken, nothing is stored and its place
        holds None: a refusal or a repeat, decided on a cached account, is only answered
        after the account is checked against the store, which the step-by-step path does.
        """
        taken: list[asyncio.Future[list[AccountView]] | None] = []
        group = _Group()
        loop = asyncio.get_running_loop()
        for steps in sequences:
            views = self._decide(steps, group)
            if views is None:
                taken.append(None)
                continue
            answer: asyncio.Future[list[AccountView]] = loop.create_future()
            group.answers.append((answer, views))
            taken.append(answer)
        if not group.answers:
            return taken
        changed = list(group.events)
        requests = [
            AppendRequest(
                stream_id(account_id),
                group.expected[account_id],
                group.events[account_id],
                checkpoints=group.checkpoints.get(account_id, ()),
            )
            for account_id in changed
        ]
        before = {m.storing for m in group.mailboxes.values() if m.storing is not None}
        appended = asyncio.ensure_future(self._append(requests, before))
        self._mailboxes.storing_sequence(group.mailboxes.values(), appended)
        appended.add_done_callback(functools.partial(self._stored, group, changed))
        return taken

    async def _append(
        self,
        requests: list[AppendRequest],
        before: set[asyncio.Future[list[list[RecordedEvent]]]],
    ) -> list[list[RecordedEvent]]:
        """Stores ``requests`` once the appends they were decided after are stored; if one
        of those is not, nothing of them is."""
        if before:
            await asyncio.wait(before)
            if any(f.cancelled() or f.exception() is not None for f in before):
                raise EventStoreError("not stored: an append it followed was not stored")
        return await self._store.append_batch(requests)

    def _decide(self, steps: Sequence[SequenceStep], group: _Group) -> list[AccountView] | None:
        """One sequence decided on top of ``group``, which takes its events; the state after
        each step. None if it cannot be taken: then nothing of it is in the group, and an
        account it changed before a step was refused is forgotten (loaded again)."""
        mailboxes: dict[str, Mailbox] = {}  # its accounts', those already in the group too
        for account_id, _ in steps:
            if account_id in mailboxes:
                continue
            mailbox = group.mailboxes.get(account_id)
            if mailbox is None:
                mailbox = self._mailboxes.open_to_sequences(account_id)
            elif mailbox.account is None:
                mailbox = None  # forgotten after a sequence before this one was declined
            if mailbox is None:
                return None
            mailboxes[account_id] = mailbox
        new: dict[str, list[NewEvent]] = {}
        expected: dict[str, int] = {}
        checkpoints: dict[str, list[NewCheckpoint]] = {}
        holds: list[tuple[str, int, str]] = []
        views: list[AccountView] = []
        after: AccountView | None = None
        for account_id, decide in steps:
            account = mailboxes[account_id].account
            assert account is not None
            try:
                events = decide(after)(account)
            except Exception:
                events = []
            if not events:
                for applied in new:  # applied, never to be stored: load them again
                    mailboxes[applied].account = None
                return None
            if account_id not in new:
                new[account_id] = []
                expected[account_id] = account.version
            events_of_account = new[account_id]
            before = len(group.events.get(account_id, ()))
            for event in events:
                account.apply(event)
                events_of_account.append(stored(account, event))
                if isinstance(event, Reserved):
                    index = before + len(events_of_account) - 1
                    holds.append((account_id, index, event.reference))
                checkpoint = checkpoint_due(account, self._checkpoint_every)
                if checkpoint is not None:
                    checkpoints.setdefault(account_id, []).append(checkpoint)
            after = view(account)
            views.append(after)
        group.mailboxes.update(mailboxes)
        for account_id, version in expected.items():
            group.expected.setdefault(account_id, version)
        for account_id, events in new.items():
            group.events.setdefault(account_id, []).extend(events)
        for account_id, marks in checkpoints.items():
            group.checkpoints.setdefault(account_id, []).extend(marks)
        group.holds.extend(holds)
        return views

    def _stored(
        self,
        group: _Group,
        changed: list[str],
        appended: asyncio.Future[list[list[RecordedEvent]]],
    ) -> None:
        failure: BaseException | None
        if appended.cancelled():
            failure = EventStoreError("append interrupted; it may or may not be stored")
        else:
            failure = appended.exception()
        if failure is None:
            recorded = dict(zip(changed, appended.result(), strict=True))
            for account_id, index, reference in group.holds:
                account = group.mailboxes[account_id].account
                if account is None:  # forgotten: loaded again, with the stored times
                    continue
                hold = account.holds.get(reference)
                if hold is not None:
                    account.holds[reference] = replace(
                        hold, reserved_at=recorded[account_id][index].recorded_at
                    )
            self._crash_point(ACCOUNT_AFTER_APPEND)
        for account_id, mailbox in group.mailboxes.items():
            self._mailboxes.sequence_ended(account_id, mailbox, appended, stored=failure is None)
        for answer, views in group.answers:
            if answer.done():
                continue
            if failure is not None:
                answer.set_exception(failure)
            else:
                answer.set_result(views)
