"""Sequences of commands over idle accounts, decided at once and stored in one transaction.

The forward steps of a transfer (reserve on one account, credit another, capture on the
first) can skip the mailboxes: when every account the sequence touches is cached, nothing
is queued for it and nothing of it is being stored, the steps are decided at once, in
order, and their events stored in one append across the accounts' streams. Where many
commands meet on one account, its mailbox already gathers them into one append; over many
quiet accounts, each command would otherwise be an append of its own and every step would
wait for one commit. The sequences offered together (one message's) share one append.
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

        A sequence is taken only when every account it touches is cached and idle (see the
        module) and not touched by a sequence taken before it here, and every step decides
        new events. A taken sequence's future has the state after each of its steps once
        the append is stored, or fails with nothing of any of them stored (their accounts
        are forgotten, so the next command loads them). For a sequence not taken, nothing
        is stored and its place holds None: a refusal or a repeat, decided on a cached
        account, is only answered after the account is checked against the store, which
        the step-by-step path does.
        """
        taken: list[asyncio.Future[list[AccountView]] | None] = []
        mailboxes: dict[str, Mailbox] = {}
        requests: list[AppendRequest] = []
        changed: list[str] = []
        holds: list[tuple[str, int, str]] = []  # (account, index in its events, reference)
        answers: list[tuple[asyncio.Future[list[AccountView]], list[AccountView]]] = []
        loop = asyncio.get_running_loop()
        for steps in sequences:
            decided = self._decide(steps, mailboxes)
            if decided is None:
                taken.append(None)
                continue
            ours, appends, reserved, views = decided
            mailboxes.update(ours)
            requests.extend(appends.values())
            changed.extend(appends)
            holds.extend(reserved)
            answer: asyncio.Future[list[AccountView]] = loop.create_future()
            answers.append((answer, views))
            taken.append(answer)
        if not requests:
            return taken
        appended = asyncio.ensure_future(self._store.append_batch(requests))
        self._mailboxes.storing_sequence(mailboxes.values(), appended)
        appended.add_done_callback(
            functools.partial(self._stored, mailboxes, changed, holds, answers)
        )
        return taken

    def _decide(
        self, steps: Sequence[SequenceStep], taken: dict[str, Mailbox]
    ) -> (
        tuple[
            dict[str, Mailbox],
            dict[str, AppendRequest],
            list[tuple[str, int, str]],
            list[AccountView],
        ]
        | None
    ):
        """One sequence decided on its idle accounts (none of them in ``taken``), its events
        applied to them: their mailboxes, each account's append, the holds placed, the
        state after each step. None (nothing applied) if it cannot be taken."""
        mailboxes: dict[str, Mailbox] = {}
        expected: dict[str, int] = {}
        for account_id, _ in steps:
            mailbox = None if account_id in taken else self._mailboxes.idle(account_id)
            if mailbox is None:
                return None
            assert mailbox.account is not None
            mailboxes[account_id] = mailbox
            expected[account_id] = mailbox.account.version
        new: dict[str, list[NewEvent]] = {}
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
            events_of_account = new.setdefault(account_id, [])
            for event in events:
                account.apply(event)
                events_of_account.append(stored(account, event))
                if isinstance(event, Reserved):
                    holds.append((account_id, len(events_of_account) - 1, event.reference))
                checkpoint = checkpoint_due(account, self._checkpoint_every)
                if checkpoint is not None:
                    checkpoints.setdefault(account_id, []).append(checkpoint)
            after = view(account)
            views.append(after)
        appends = {
            account_id: AppendRequest(
                stream_id(account_id),
                expected[account_id],
                events,
                checkpoints=checkpoints.get(account_id, ()),
            )
            for account_id, events in new.items()
        }
        return mailboxes, appends, holds, views

    def _stored(
        self,
        mailboxes: dict[str, Mailbox],
        changed: list[str],
        holds: list[tuple[str, int, str]],
        answers: list[tuple[asyncio.Future[list[AccountView]], list[AccountView]]],
        appended: asyncio.Future[list[list[RecordedEvent]]],
    ) -> None:
        failure: BaseException | None
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
                    account.holds[reference] = replace(
                        hold, reserved_at=recorded[account_id][index].recorded_at
                    )
            self._crash_point(ACCOUNT_AFTER_APPEND)
        for account_id, mailbox in mailboxes.items():
            self._mailboxes.sequence_ended(account_id, mailbox, stored=failure is None)
        for answer, views in answers:
            if answer.done():
                continue
            if failure is not None:
                answer.set_exception(failure)
            else:
                answer.set_result(views)
