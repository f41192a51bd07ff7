"""In-memory stand-ins for the transfer process's ports: the account side and the transfer store.

``FakeAccounts`` runs the real account aggregate (pure, in memory) behind the port, so its
answers are the account service's: final refusals, epochs, holds, credit holds. Faults are
scriptable per action: a step may go unanswered, before or after it took effect.
``InMemoryTransferRepository`` stores each transfer's events with the event store's
expected-version check, and each transfer's owner epoch as the lease table would.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from account_service.domain import Account, AccountOpened, Deposited, EpochFenced
from account_service.grpc_api.errors import ERRORS
from event_store import ConcurrencyConflict, LeaseLost
from shared_kernel.errors import DomainError
from transfer_service.domain import (
    AccountStep,
    Action,
    Answer,
    Applied,
    Fenced,
    Refused,
    Transfer,
    TransferEvent,
    Undecided,
)


@dataclass(frozen=True)
class Call:
    action: Action
    account_id: str
    reference: str
    amount: int
    epoch: int
    currency: str


@dataclass
class _Fault:
    answer: Answer
    after_effect: bool


class FakeAccounts:
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.calls: list[Call] = []
        self.events: list[tuple[str, object]] = []  # (account, event) as stored
        self._faults: dict[Action, deque[_Fault]] = {action: deque() for action in Action}

    # --- set-up and scripting ---

    def open(
        self, account_id: str, currency: str = "EUR", balance: int = 0, *, closed: bool = False
    ) -> Account:
        account = self._account(account_id)
        self._store(account_id, account, [AccountOpened(account_id, "owner", currency)])
        if balance:
            self._store(account_id, account, [Deposited(balance, "opening")])
        if closed:
            self._store(account_id, account, account.close())
        return account

    def deposit(self, account_id: str, amount: int, reference: str) -> None:
        account = self.accounts[account_id]
        self._store(account_id, account, account.deposit(amount, reference))

    def withdraw(self, account_id: str, amount: int, reference: str) -> None:
        account = self.accounts[account_id]
        self._store(account_id, account, account.withdraw(amount, reference))

    def close(self, account_id: str) -> None:
        account = self.accounts[account_id]
        self._store(account_id, account, account.close())

    def fail_next(
        self,
        action: Action,
        times: int = 1,
        answer: Answer | None = None,
        *,
        after_effect: bool = False,
    ) -> None:
        """The next ``times`` steps of ``action`` get ``answer`` (default: ``Undecided``).
        With ``after_effect`` the step takes effect first, and its answer is what is lost."""
        for _ in range(times):
            self._faults[action].append(
                _Fault(answer or Undecided(f"{action.value} unavailable"), after_effect)
            )

    def pending_faults(self, action: Action) -> int:
        return len(self._faults[action])

    # --- queries for assertions ---

    def balance(self, account_id: str) -> int:
        return self.accounts[account_id].balance

    def total_balance(self) -> int:
        return sum(a.balance for a in self.accounts.values())

    def open_holds(self) -> dict[str, dict[str, int]]:
        holds = {}
        for account_id, account in self.accounts.items():
            held = {ref: hold.amount for ref, hold in account.holds.items()}
            held.update(account.credit_holds)
            if held:
                holds[account_id] = held
        return holds

    def actions_called(self) -> list[str]:
        return [call.action.value for call in self.calls]

    # --- the port ---

    async def run(
        self, steps: Sequence[AccountStep], reference: str, epoch: int, currency: str = ""
    ) -> list[Answer]:
        answers: list[Answer] = []
        for step in steps:
            answer = self._step(step, reference, epoch, currency)
            answers.append(answer)
            if not isinstance(answer, Applied):
                break
            currency = answer.currency
        return answers

    async def run_many(self, chains):
        """``run`` for each chain, one after another; every answer in one wave."""
        yield [(n, await self.run(*chain)) for n, chain in enumerate(chains)]

    def _step(self, step: AccountStep, reference: str, epoch: int, currency: str) -> Answer:
        self.calls.append(
            Call(step.action, step.account_id, reference, step.amount, epoch, currency)
        )
        faults = self._faults[step.action]
        if faults:
            fault = faults.popleft()
            if fault.after_effect:
                self._decide(step, reference, epoch, currency)
            return fault.answer
        return self._decide(step, reference, epoch, currency)

    def _decide(self, step: AccountStep, reference: str, epoch: int, currency: str) -> Answer:
        account = self._account(step.account_id)
        try:
            events = _decision(account, step, reference, epoch, currency)
        except EpochFenced as exc:
            return Fenced(str(exc))
        except DomainError as exc:
            self._store(step.account_id, account, list(exc.record))
            if not exc.record and not account.exists:
                self.accounts.pop(step.account_id, None)
            described = ERRORS.describe(exc)
            assert described is not None, exc
            return Refused(described.reason, described.message, dict(described.metadata))
        self._store(step.account_id, account, events)
        return Applied(account.currency)

    def _account(self, account_id: str) -> Account:
        account = self.accounts.get(account_id)
        if account is None:
            account = self.accounts[account_id] = Account.empty(account_id)
        return account

    def _store(self, account_id: str, account: Account, events: list) -> None:
        for event in events:
            account.apply(event)
            self.events.append((account_id, event))


def _decision(
    account: Account, step: AccountStep, reference: str, epoch: int, currency: str
) -> list:
    match step.action:
        case Action.RESERVE:
            return account.reserve(step.amount, reference, currency, epoch, step.expires_at)
        case Action.CREDIT:
            return account.credit(step.amount, reference, currency, epoch)
        case Action.HOLD_CREDIT:
            return account.hold_credit(step.amount, reference, currency, epoch)
        case Action.CONFIRM_CREDIT:
            return account.confirm_credit(reference, epoch)
        case Action.CANCEL_CREDIT:
            return account.cancel_credit(reference, epoch)
        case Action.CAPTURE:
            return account.capture(reference, step.amount, epoch)
        case Action.RELEASE:
            return account.release(reference, epoch)


def _ticking_clock() -> Callable[[], datetime]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    ticks = itertools.count()
    return lambda: start + timedelta(seconds=next(ticks))


class InMemoryTransferRepository:
    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.streams: dict[str, list[tuple[TransferEvent, datetime]]] = {}
        # transfer id -> the epoch that owns it (absent: ended).
        self.epochs: dict[str, int] = {}
        self.record_calls = 0
        self.record_many_calls = 0
        self._clock = clock or _ticking_clock()
        # Run (once each, in order) just before a record's version check: lets a test play
        # another writer that gets in first.
        self._before_record: deque[Callable[[InMemoryTransferRepository], None]] = deque()

    def before_next_record(self, hook: Callable[[InMemoryTransferRepository], None]) -> None:
        self._before_record.append(hook)

    def append(self, transfer_id: str, events: Sequence[TransferEvent]) -> None:
        """Store events with no checks (test set-up, or another writer)."""
        stream = self.streams.setdefault(transfer_id, [])
        stream.extend((event, self._clock()) for event in events)

    def take_over(self, transfer_id: str) -> int:
        """Another process claims the transfer: its epoch goes up."""
        self.epochs[transfer_id] = self.epochs.get(transfer_id, 1) + 1
        return self.epochs[transfer_id]

    def events(self, transfer_id: str) -> list[TransferEvent]:
        return [event for event, _ in self.streams.get(transfer_id, [])]

    async def load(self, transfer_id: str) -> Transfer | None:
        stream = self.streams.get(transfer_id)
        if not stream:
            return None
        return Transfer.from_events(transfer_id, stream)

    async def record(
        self, transfer: Transfer, events: Sequence[TransferEvent], epoch: int
    ) -> Transfer:
        self.record_calls += 1
        if self._before_record:
            self._before_record.popleft()(self)
        self._check(transfer, epoch)
        return self._store(transfer, events, epoch)

    async def record_many(
        self, records: Sequence[tuple[Transfer, Sequence[TransferEvent], int]]
    ) -> list[Transfer]:
        """All or none, as one transaction."""
        self.record_many_calls += 1
        if self._before_record:
            self._before_record.popleft()(self)
        for transfer, _, epoch in records:
            self._check(transfer, epoch)
        return [self._store(transfer, events, epoch) for transfer, events, epoch in records]

    def _check(self, transfer: Transfer, epoch: int) -> None:
        stream = self.streams.get(transfer.transfer_id, [])
        if len(stream) != transfer.version:
            raise ConcurrencyConflict(transfer.transfer_id, transfer.version)
        if transfer.version and self.epochs.get(transfer.transfer_id, epoch) != epoch:
            raise LeaseLost(transfer.transfer_id, epoch)

    def _store(self, transfer: Transfer, events: Sequence[TransferEvent], epoch: int) -> Transfer:
        self.append(transfer.transfer_id, events)
        recorded = Transfer.from_events(transfer.transfer_id, self.streams[transfer.transfer_id])
        if recorded.is_terminal:
            self.epochs.pop(transfer.transfer_id, None)
        else:
            self.epochs.setdefault(transfer.transfer_id, epoch)
        return recorded
