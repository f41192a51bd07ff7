"""In-memory stand-ins for the transfer process's ports: the account side and the transfer store.

``FakeAccounts`` models enough of the account service to check money: balances, holds,
currencies, closed accounts, idempotency by (account, reference) as the contract states,
and scriptable faults. ``InMemoryTransferRepository`` stores each transfer's events with
the same expected-version check as the event store.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from event_store import ConcurrencyConflict
from transfer_service.domain import Transfer, TransferEvent
from transfer_service.process import StepRefused, StepUnavailable

T = TypeVar("T")

STEPS = ("reserve", "credit", "capture", "release")


@dataclass
class FakeAccount:
    account_id: str
    currency: str
    balance: int = 0
    closed: bool = False
    holds: dict[str, int] = field(default_factory=dict)  # open holds by reference
    settled: dict[str, str] = field(default_factory=dict)  # reference -> "capture"/"release"
    reserved_refs: set[str] = field(default_factory=set)
    credited_refs: set[str] = field(default_factory=set)

    @property
    def reserved(self) -> int:
        return sum(self.holds.values())

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True)
class Call:
    step: str
    account_id: str
    reference: str
    amount: int | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Effect:
    """A change the fake stored: what a real account service would append as an event."""

    kind: str  # "reserve", "credit", "capture" or "release"
    account_id: str
    reference: str
    amount: int


@dataclass
class _Fault:
    exc: Exception
    after_effect: bool


class FakeAccounts:
    def __init__(self) -> None:
        self.accounts: dict[str, FakeAccount] = {}
        self.calls: list[Call] = []
        self.effects: list[Effect] = []
        self._faults: dict[str, deque[_Fault]] = {step: deque() for step in STEPS}

    # --- set-up and scripting ---

    def open(
        self, account_id: str, currency: str = "EUR", balance: int = 0, *, closed: bool = False
    ) -> FakeAccount:
        account = FakeAccount(account_id, currency, balance, closed)
        self.accounts[account_id] = account
        return account

    def fail_next(
        self,
        step: str,
        times: int = 1,
        exc: Exception | None = None,
        *,
        after_effect: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``step`` raise ``exc`` (default: StepUnavailable).

        With ``after_effect`` the call's effect is stored first, as when a call commits but
        its answer is lost on the way back.
        """
        if step not in STEPS:
            raise ValueError(step)
        for _ in range(times):
            fault_exc = exc if exc is not None else StepUnavailable(f"{step} unavailable")
            self._faults[step].append(_Fault(fault_exc, after_effect))

    def pending_faults(self, step: str) -> int:
        return len(self._faults[step])

    # --- queries for assertions ---

    def total_balance(self) -> int:
        return sum(a.balance for a in self.accounts.values())

    def open_holds(self) -> dict[str, dict[str, int]]:
        return {a.account_id: dict(a.holds) for a in self.accounts.values() if a.holds}

    def steps_called(self) -> list[str]:
        return [c.step for c in self.calls]

    # --- the port ---

    async def reserve(self, account_id: str, reference: str, amount: int) -> str:
        self.calls.append(Call("reserve", account_id, reference, amount))
        return self._with_faults("reserve", lambda: self._reserve(account_id, reference, amount))

    async def credit(self, account_id: str, reference: str, amount: int, currency: str) -> None:
        self.calls.append(Call("credit", account_id, reference, amount, currency))
        self._with_faults("credit", lambda: self._credit(account_id, reference, amount, currency))

    async def capture(self, account_id: str, reference: str) -> None:
        self.calls.append(Call("capture", account_id, reference))
        self._with_faults("capture", lambda: self._settle("capture", account_id, reference))

    async def release(self, account_id: str, reference: str) -> None:
        self.calls.append(Call("release", account_id, reference))
        self._with_faults("release", lambda: self._settle("release", account_id, reference))

    # --- the model ---

    def _with_faults(self, step: str, effect: Callable[[], T]) -> T:
        faults = self._faults[step]
        if not faults:
            return effect()
        fault = faults.popleft()
        if fault.after_effect:
            # A refusal here is the real answer, and the lost answer is the fault.
            try:
                effect()
            except StepRefused:
                pass
        raise fault.exc

    def _account(self, account_id: str) -> FakeAccount:
        account = self.accounts.get(account_id)
        if account is None:
            raise StepRefused("ACCOUNT_NOT_FOUND", f"account {account_id} not found")
        return account

    def _reserve(self, account_id: str, reference: str, amount: int) -> str:
        account = self._account(account_id)
        if reference in account.reserved_refs:
            return account.currency
        if account.closed:
            raise StepRefused("ACCOUNT_CLOSED", f"account {account_id} is closed")
        if account.available < amount:
            raise StepRefused("INSUFFICIENT_FUNDS", f"available {account.available} < {amount}")
        account.reserved_refs.add(reference)
        account.holds[reference] = amount
        self.effects.append(Effect("reserve", account_id, reference, amount))
        return account.currency

    def _credit(self, account_id: str, reference: str, amount: int, currency: str) -> None:
        account = self._account(account_id)
        if reference in account.credited_refs:
            return
        if account.closed:
            raise StepRefused("ACCOUNT_CLOSED", f"account {account_id} is closed")
        if currency != account.currency:
            raise StepRefused("CURRENCY_MISMATCH", f"{currency} into a {account.currency} account")
        account.credited_refs.add(reference)
        account.balance += amount
        self.effects.append(Effect("credit", account_id, reference, amount))

    def _settle(self, kind: str, account_id: str, reference: str) -> None:
        account = self._account(account_id)
        if reference in account.settled:
            if account.settled[reference] == kind:
                return
            raise StepRefused("RESERVATION_SETTLED", f"reservation {reference} already settled")
        if reference not in account.holds:
            raise StepRefused("RESERVATION_NOT_FOUND", f"no reservation {reference}")
        amount = account.holds.pop(reference)
        account.settled[reference] = kind
        if kind == "capture":
            account.balance -= amount
        self.effects.append(Effect(kind, account_id, reference, amount))


def _ticking_clock() -> Callable[[], datetime]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    ticks = itertools.count()
    return lambda: start + timedelta(seconds=next(ticks))


class InMemoryTransferRepository:
    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.streams: dict[str, list[tuple[TransferEvent, datetime]]] = {}
        self.record_calls = 0
        self._clock = clock or _ticking_clock()
        # Run (once each, in order) just before a record's version check: lets a test play
        # another writer that gets in first.
        self._before_record: deque[Callable[[InMemoryTransferRepository], None]] = deque()

    def before_next_record(self, hook: Callable[[InMemoryTransferRepository], None]) -> None:
        self._before_record.append(hook)

    def append(self, transfer_id: str, events: Sequence[TransferEvent]) -> None:
        """Store events with no version check (test set-up, or another writer)."""
        stream = self.streams.setdefault(transfer_id, [])
        stream.extend((event, self._clock()) for event in events)

    def events(self, transfer_id: str) -> list[TransferEvent]:
        return [event for event, _ in self.streams.get(transfer_id, [])]

    async def load(self, transfer_id: str) -> Transfer | None:
        stream = self.streams.get(transfer_id)
        if not stream:
            return None
        return Transfer.from_events(transfer_id, stream)

    async def record(self, transfer: Transfer, events: Sequence[TransferEvent]) -> Transfer:
        self.record_calls += 1
        if self._before_record:
            self._before_record.popleft()(self)
        stream = self.streams.get(transfer.transfer_id, [])
        if len(stream) != transfer.version:
            raise ConcurrencyConflict(transfer.transfer_id, transfer.version)
        self.append(transfer.transfer_id, events)
        return Transfer.from_events(transfer.transfer_id, self.streams[transfer.transfer_id])
