"""Random command sequences against the account aggregate, checking its invariants.

Commands go through decide -> apply as the application runs them. Reference pools are
small so repeats and reuse with other amounts happen often; amounts include int64
extremes so the range checks are exercised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from account_service.domain import (
    Account,
    AccountAlreadyExists,
    AccountClosed,
    AccountEvent,
    AccountIsClosed,
    AccountNotEmpty,
    AccountNotFound,
    AccountOpened,
    AccountStatus,
    BalanceOutOfRange,
    Credited,
    CurrencyMismatch,
    Deposited,
    InsufficientFunds,
    ReferenceReused,
    ReservationCaptured,
    ReservationNotFound,
    ReservationReleased,
    ReservationSettled,
    Reserved,
    StepRefused,
    Withdrawn,
)
from shared_kernel.errors import DomainError
from shared_kernel.values import INT64_MAX

ACCOUNT_ID = "6f1c3a52-8d0e-4f57-9a35-1b2c3d4e5f60"

references = st.sampled_from(["a", "b", "c"])
# Mostly small amounts, one in four near the top of int64.
amounts = st.integers(min_value=0, max_value=3).flatmap(
    lambda n: (
        st.integers(min_value=1, max_value=100)
        if n
        else st.sampled_from([INT64_MAX, INT64_MAX - 1, 2**62, INT64_MAX - 100])
    )
)
currencies = st.sampled_from(["EUR", "USD"])
owners = st.sampled_from(["Ada", "Grace"])

by_kind = {
    "open": st.tuples(st.just("open"), owners, currencies),
    "deposit": st.tuples(st.just("deposit"), amounts, references),
    "withdraw": st.tuples(st.just("withdraw"), amounts, references),
    "reserve": st.tuples(st.just("reserve"), amounts, references),
    "credit": st.tuples(st.just("credit"), amounts, references, currencies),
    "capture": st.tuples(st.just("capture"), references),
    "release": st.tuples(st.just("release"), references),
    "close": st.tuples(st.just("close")),
}
# Weighted so that reservations are often made and settled, and closing is rare enough
# that most sequences keep moving money.
kinds = [
    *["reserve"] * 4,
    *["capture"] * 3,
    *["release"] * 3,
    *["deposit"] * 3,
    *["credit"] * 2,
    *["withdraw"] * 2,
    "open",
    "close",
]
commands = st.sampled_from(kinds).flatmap(by_kind.__getitem__)
# Hypothesis favours short lists; pick the length first so long histories are common too.
scripts = st.integers(min_value=0, max_value=60).flatmap(
    lambda n: st.lists(commands, min_size=n, max_size=n)
)
# Mostly start from an opened, funded account so reservations succeed and get settled;
# sometimes from nothing, to see AccountNotFound.
seed_amounts = st.one_of(
    st.integers(min_value=100, max_value=10_000),
    st.sampled_from([INT64_MAX, INT64_MAX - 50]),
)
funded = st.builds(lambda n: [("open", "Ada", "EUR"), ("deposit", n, "seed")], seed_amounts)
preludes = st.integers(min_value=0, max_value=5).flatmap(lambda n: funded if n else st.just([]))


def name_of(command: tuple) -> str:
    return command[0]


def execute(account: Account, command: tuple) -> list[AccountEvent]:
    name, *args = command
    return getattr(account, name)(*args)


@dataclass
class Ledger:
    """What the event list says, computed without the aggregate."""

    opened: AccountOpened | None = None
    closed: bool = False
    balance: int = 0
    deposits: dict[str, int] = field(default_factory=dict)
    withdrawals: dict[str, int] = field(default_factory=dict)
    credits: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, int] = field(default_factory=dict)
    open_holds: dict[str, int] = field(default_factory=dict)
    settled: dict[str, str] = field(default_factory=dict)
    # (step, reference) -> the refusal stored for it.
    refusals: dict[tuple[str, str], str] = field(default_factory=dict)

    def record(self, event: AccountEvent) -> None:
        match event:
            case AccountOpened():
                assert self.opened is None, "opened twice"
                self.opened = event
            case AccountClosed():
                assert not self.closed, "closed twice"
                self.closed = True
            case Deposited(amount, reference):
                assert reference not in self.deposits, "deposit stored twice"
                self.deposits[reference] = amount
                self.balance += amount
            case Withdrawn(amount, reference):
                assert reference not in self.withdrawals, "withdrawal stored twice"
                self.withdrawals[reference] = amount
                self.balance -= amount
            case Credited(amount, reference):
                assert reference not in self.credits, "credit stored twice"
                self.credits[reference] = amount
                self.balance += amount
            case Reserved(amount, reference):
                assert reference not in self.reservations, "reservation stored twice"
                self.reservations[reference] = amount
                self.open_holds[reference] = amount
            case ReservationCaptured(amount, reference):
                assert self.open_holds.pop(reference) == amount, "captured a hold not held"
                self.settled[reference] = "captured"
                self.balance -= amount
            case ReservationReleased(amount, reference):
                assert self.open_holds.pop(reference) == amount, "released a hold not held"
                self.settled[reference] = "released"
            case StepRefused():
                key = (event.step, event.reference)
                assert key not in self.refusals, "refusal stored twice"
                self.refusals[key] = event.error


def assert_refusal_is_justified(account: Account, ledger: Ledger, command: tuple, error) -> None:
    """A refusal must be explained by the state it was made in."""
    name, *args = command
    amount = args[0] if name in {"deposit", "withdraw", "reserve", "credit"} else None
    reference = args[1] if amount is not None else (args[0] if args else None)
    memory = {
        "deposit": ledger.deposits,
        "withdraw": ledger.withdrawals,
        "reserve": ledger.reservations,
        "credit": ledger.credits,
    }
    stored = ledger.refusals.get((name, reference))
    if stored is not None:
        # A step refused once is refused again the same way, whatever happened since.
        assert type(error).__name__ == stored
        return
    match error:
        case AccountNotFound():
            assert ledger.opened is None
        case AccountAlreadyExists():
            assert ledger.opened is not None
            assert (ledger.opened.owner, ledger.opened.currency) != tuple(args)
        case ReferenceReused():
            known = memory[name][reference]
            assert known != amount or (name == "credit" and args[2] != ledger.opened.currency)
        case AccountIsClosed():
            assert ledger.closed
            assert reference not in memory[name]
        case InsufficientFunds():
            assert account.available < amount
        case BalanceOutOfRange():
            assert ledger.balance + amount > INT64_MAX
        case CurrencyMismatch():
            assert args[2] != ledger.opened.currency
        case AccountNotEmpty():
            assert ledger.balance != 0 or ledger.open_holds
        case ReservationNotFound():
            assert reference not in ledger.reservations
        case ReservationSettled() if name == "reserve":
            assert reference in ledger.settled
        case ReservationSettled():
            wanted = "captured" if name == "capture" else "released"
            assert ledger.settled[reference] != wanted
        case _:
            raise AssertionError(f"unexpected refusal {error!r}")


def assert_repeat_is_justified(ledger: Ledger, command: tuple) -> None:
    """An empty answer is only for a request that already took effect, unchanged."""
    name, *args = command
    match name:
        case "open":
            assert ledger.opened is not None
            assert (ledger.opened.owner, ledger.opened.currency) == tuple(args)
        case "deposit":
            assert ledger.deposits.get(args[1]) == args[0]
        case "withdraw":
            assert ledger.withdrawals.get(args[1]) == args[0]
        case "reserve":
            assert ledger.reservations.get(args[1]) == args[0]
        case "credit":
            assert ledger.credits.get(args[1]) == args[0]
            assert args[2] == ledger.opened.currency
        case "capture":
            assert ledger.settled.get(args[0]) == "captured"
        case "release":
            assert ledger.settled.get(args[0]) == "released"
        case "close":
            assert ledger.closed


def assert_invariants(account: Account, ledger: Ledger, events: list[AccountEvent]) -> None:
    assert 0 <= account.balance <= INT64_MAX
    assert account.available >= 0
    assert account.available == account.balance - account.reserved
    assert account.reserved == sum(hold.amount for hold in account.holds.values())
    assert account.reserved == sum(ledger.open_holds.values())
    assert list(account.holds) == list(ledger.open_holds)
    assert account.balance == ledger.balance
    assert account.version == len(events)
    assert account.exists == (ledger.opened is not None)
    if ledger.opened is not None:
        expected = AccountStatus.CLOSED if ledger.closed else AccountStatus.OPEN
        assert account.status is expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prelude=preludes, script=scripts)
def test_random_command_sequences_keep_every_invariant(prelude, script):
    account = Account.empty(ACCOUNT_ID)
    ledger = Ledger()
    events: list[AccountEvent] = []
    for command in [*prelude, *script]:
        accepted = True
        try:
            new_events = execute(account, command)
        except DomainError as error:
            accepted = False
            assert_refusal_is_justified(account, ledger, command, error)
            # A refusal is a pure function of the state: asking again gives the same answer.
            try:
                execute(account, command)
            except DomainError as again:
                assert type(again) is type(error)
            else:
                raise AssertionError(f"{command} refused once, then accepted") from None
            # A refused step leaves its refusal stored; other refusals leave nothing.
            new_events = list(error.record)
            assert all(isinstance(event, StepRefused) for event in new_events)
            if new_events:
                assert name_of(command) in ("reserve", "credit")
        else:
            if not new_events:
                assert_repeat_is_justified(ledger, command)

        # Deciding never changes the account.
        assert account == Account.from_events(ACCOUNT_ID, events)

        for event in new_events:
            account.apply(event)
            ledger.record(event)
            events.append(event)

        assert_invariants(account, ledger, events)
        assert Account.from_events(ACCOUNT_ID, events) == account
        if accepted:
            # The command has taken effect (or already had); asking again stores nothing.
            assert execute(account, command) == []
