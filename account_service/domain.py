"""The account aggregate: its events, its refusals, and every rule an account obeys.

An account is a stream of events. ``Account.apply`` folds one stored event into the state
without judging it, because the stored history is the truth. The command methods
(``open``, ``deposit``, ``withdraw``, ``reserve``, ``credit``, ``capture``, ``release``,
``close``) decide from the current state alone which new events a request produces: an
empty list means the request is a repeat and nothing needs storing; a domain error means
it is refused. Decisions never mutate the account.

Pure Python: no I/O, no clock. The time a reservation was made is passed into ``apply``
by whoever read it from the store.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from shared_kernel.errors import AlreadyExists, DomainError, InvalidArgument
from shared_kernel.values import INT64_MAX

# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class AccountOpened:
    account_id: str
    owner: str
    currency: str


@dataclass(frozen=True, slots=True)
class Deposited:
    amount: int
    reference: str


@dataclass(frozen=True, slots=True)
class Withdrawn:
    amount: int
    reference: str


@dataclass(frozen=True, slots=True)
class Reserved:
    amount: int
    reference: str


@dataclass(frozen=True, slots=True)
class ReservationReleased:
    amount: int
    reference: str


@dataclass(frozen=True, slots=True)
class ReservationCaptured:
    """The hold is removed and its amount leaves the balance, in one event."""

    amount: int
    reference: str


@dataclass(frozen=True, slots=True)
class Credited:
    amount: int
    reference: str


@dataclass(frozen=True, slots=True)
class AccountClosed:
    pass


AccountEvent: TypeAlias = (
    AccountOpened
    | Deposited
    | Withdrawn
    | Reserved
    | ReservationReleased
    | ReservationCaptured
    | Credited
    | AccountClosed
)

# --------------------------------------------------------------------------- errors


class AccountNotFound(DomainError):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id} does not exist", account_id=account_id)
        self.account_id = account_id


class AccountAlreadyExists(AlreadyExists):
    def __init__(self, account_id: str) -> None:
        super().__init__(
            f"account {account_id} already exists with a different owner or currency",
            account_id=account_id,
        )
        self.account_id = account_id


class ReferenceReused(AlreadyExists):
    def __init__(self, reference: str, command: str) -> None:
        super().__init__(
            f"reference {reference!r} was already used for a {command} with different contents",
            reference=reference,
            command=command,
        )
        self.reference = reference


class InsufficientFunds(DomainError):
    def __init__(self, account_id: str, available: int, requested: int) -> None:
        super().__init__(
            f"account {account_id} has {available} available, {requested} requested",
            account_id=account_id,
            available=str(available),
            requested=str(requested),
        )
        self.available = available
        self.requested = requested


class AccountIsClosed(DomainError):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id} is closed", account_id=account_id)
        self.account_id = account_id


class CurrencyMismatch(DomainError):
    def __init__(self, account_id: str, expected: str, actual: str) -> None:
        super().__init__(
            f"account {account_id} holds {expected}, not {actual}",
            account_id=account_id,
            expected=expected,
            actual=actual,
        )
        self.expected = expected
        self.actual = actual


class AccountNotEmpty(DomainError):
    def __init__(self, account_id: str, balance: int, reserved: int) -> None:
        super().__init__(
            f"account {account_id} still holds {balance} with {reserved} reserved;"
            " only an empty account can be closed",
            account_id=account_id,
            balance=str(balance),
            reserved=str(reserved),
        )
        self.balance = balance
        self.reserved = reserved


class ReservationNotFound(DomainError):
    def __init__(self, account_id: str, reference: str) -> None:
        super().__init__(
            f"account {account_id} has no reservation {reference!r}",
            account_id=account_id,
            reference=reference,
        )
        self.reference = reference


class ReservationSettled(DomainError):
    def __init__(self, reference: str, outcome: Settlement) -> None:
        super().__init__(
            f"reservation {reference!r} was already {outcome.value}",
            reference=reference,
            outcome=outcome.value,
        )
        self.reference = reference
        self.outcome = outcome


class BalanceOutOfRange(DomainError):
    def __init__(self, account_id: str, balance: int, amount: int) -> None:
        super().__init__(
            f"adding {amount} to the balance {balance} of account {account_id}"
            f" would exceed {INT64_MAX}",
            account_id=account_id,
            balance=str(balance),
            amount=str(amount),
        )
        self.balance = balance
        self.amount = amount


# --------------------------------------------------------------------------- state


class AccountStatus(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Settlement(enum.Enum):
    CAPTURED = "captured"
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Hold:
    """An open reservation."""

    amount: int
    reserved_at: datetime | None


@dataclass(frozen=True, slots=True)
class SettledReservation:
    """What became of a reservation, kept so repeats can be answered forever."""

    outcome: Settlement
    amount: int


def _require_amount(amount: int) -> None:
    # Callers validate input first; this guard keeps a bad amount from ever becoming an event.
    if amount <= 0:
        raise InvalidArgument("amount", "must be greater than 0")
    if amount > INT64_MAX:
        raise InvalidArgument("amount", "must fit in int64")


class Account:
    """One account's state, folded from its events, and the rules for changing it."""

    __slots__ = (
        "_credits",
        "_deposits",
        "_reserved",
        "_settled",
        "_withdrawals",
        "account_id",
        "balance",
        "currency",
        "holds",
        "owner",
        "status",
        "version",
    )

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.owner = ""
        self.currency = ""
        self.balance = 0
        self.status: AccountStatus | None = None
        self.version = 0
        # reference -> open hold; dicts keep insertion order, so this is reservation order.
        self.holds: dict[str, Hold] = {}
        # Kept as a running sum so reading it never walks the holds.
        self._reserved = 0
        # Idempotency memory, one namespace per kind of command: reference -> amount.
        self._deposits: dict[str, int] = {}
        self._withdrawals: dict[str, int] = {}
        self._credits: dict[str, int] = {}
        self._settled: dict[str, SettledReservation] = {}

    # ----------------------------------------------------------------- construction

    @classmethod
    def empty(cls, account_id: str) -> Account:
        return cls(account_id)

    @classmethod
    def from_events(cls, account_id: str, events: Iterable[AccountEvent]) -> Account:
        account = cls(account_id)
        for event in events:
            account.apply(event)
        return account

    # ----------------------------------------------------------------- reading

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def reserved(self) -> int:
        return self._reserved

    @property
    def available(self) -> int:
        return self.balance - self._reserved

    def _snapshot(self) -> tuple:
        return (
            self.account_id,
            self.owner,
            self.currency,
            self.balance,
            self.status,
            self.version,
            list(self.holds.items()),
            self._reserved,
            self._deposits,
            self._withdrawals,
            self._credits,
            self._settled,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Account):
            return NotImplemented
        return self._snapshot() == other._snapshot()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"Account(account_id={self.account_id!r}, owner={self.owner!r},"
            f" currency={self.currency!r}, balance={self.balance}, reserved={self._reserved},"
            f" status={self.status}, version={self.version})"
        )

    # ----------------------------------------------------------------- folding

    def apply(self, event: AccountEvent, at: datetime | None = None) -> None:
        """Fold one stored event into the state. ``at`` is when it was recorded, if known.

        No rule is checked here: an event in the store already happened.
        """
        match event:
            case Deposited(amount, reference):
                self.balance += amount
                self._deposits[reference] = amount
            case Reserved(amount, reference):
                self.holds[reference] = Hold(amount, at)
                self._reserved += amount
            case ReservationCaptured(amount, reference):
                self._drop_hold(reference)
                self.balance -= amount
                self._settled[reference] = SettledReservation(Settlement.CAPTURED, amount)
            case ReservationReleased(amount, reference):
                self._drop_hold(reference)
                self._settled[reference] = SettledReservation(Settlement.RELEASED, amount)
            case Credited(amount, reference):
                self.balance += amount
                self._credits[reference] = amount
            case Withdrawn(amount, reference):
                self.balance -= amount
                self._withdrawals[reference] = amount
            case AccountOpened(_, owner, currency):
                self.owner = owner
                self.currency = currency
                self.status = AccountStatus.OPEN
            case AccountClosed():
                self.status = AccountStatus.CLOSED
            case _:
                raise TypeError(f"not an account event: {event!r}")
        self.version += 1

    def _drop_hold(self, reference: str) -> None:
        # Subtract what was held, so ``reserved`` always equals the sum of the holds.
        hold = self.holds.pop(reference, None)
        if hold is not None:
            self._reserved -= hold.amount

    # ----------------------------------------------------------------- decisions

    def open(self, owner: str, currency: str) -> list[AccountEvent]:
        if self.exists:
            if owner == self.owner and currency == self.currency:
                return []
            raise AccountAlreadyExists(self.account_id)
        return [AccountOpened(self.account_id, owner, currency)]

    def deposit(self, amount: int, reference: str) -> list[AccountEvent]:
        _require_amount(amount)
        self._require_exists()
        if self._seen(self._deposits, reference, amount, "deposit"):
            return []
        self._require_open()
        self._require_room_for(amount)
        return [Deposited(amount, reference)]

    def withdraw(self, amount: int, reference: str) -> list[AccountEvent]:
        _require_amount(amount)
        self._require_exists()
        if self._seen(self._withdrawals, reference, amount, "withdrawal"):
            return []
        self._require_open()
        self._require_available(amount)
        return [Withdrawn(amount, reference)]

    def reserve(self, amount: int, reference: str) -> list[AccountEvent]:
        _require_amount(amount)
        self._require_exists()
        # A reference names one reservation for good, whether it is still held or settled.
        hold = self.holds.get(reference)
        known = hold.amount if hold is not None else None
        if known is None:
            settled = self._settled.get(reference)
            known = settled.amount if settled is not None else None
        if known is not None:
            if known == amount:
                return []
            raise ReferenceReused(reference, "reservation")
        self._require_open()
        self._require_available(amount)
        return [Reserved(amount, reference)]

    def credit(self, amount: int, reference: str, currency: str) -> list[AccountEvent]:
        _require_amount(amount)
        self._require_exists()
        known = self._credits.get(reference)
        if known is not None:
            # A stored credit was necessarily in the account's currency.
            if known == amount and currency == self.currency:
                return []
            raise ReferenceReused(reference, "credit")
        self._require_open()
        if currency != self.currency:
            raise CurrencyMismatch(self.account_id, self.currency, currency)
        self._require_room_for(amount)
        return [Credited(amount, reference)]

    def capture(self, reference: str) -> list[AccountEvent]:
        self._require_exists()
        hold = self.holds.get(reference)
        if hold is not None:
            return [ReservationCaptured(hold.amount, reference)]
        return self._settle_again(reference, Settlement.CAPTURED)

    def release(self, reference: str) -> list[AccountEvent]:
        self._require_exists()
        hold = self.holds.get(reference)
        if hold is not None:
            return [ReservationReleased(hold.amount, reference)]
        return self._settle_again(reference, Settlement.RELEASED)

    def close(self) -> list[AccountEvent]:
        self._require_exists()
        if self.status is AccountStatus.CLOSED:
            return []
        if self.balance != 0 or self._reserved != 0:
            raise AccountNotEmpty(self.account_id, self.balance, self._reserved)
        return [AccountClosed()]

    # ----------------------------------------------------------------- guards

    def _require_exists(self) -> None:
        if not self.exists:
            raise AccountNotFound(self.account_id)

    def _require_open(self) -> None:
        if self.status is AccountStatus.CLOSED:
            raise AccountIsClosed(self.account_id)

    def _require_available(self, amount: int) -> None:
        available = self.available
        if available < amount:
            raise InsufficientFunds(self.account_id, available, amount)

    def _require_room_for(self, amount: int) -> None:
        if amount > INT64_MAX - self.balance:
            raise BalanceOutOfRange(self.account_id, self.balance, amount)

    @staticmethod
    def _seen(memory: dict[str, int], reference: str, amount: int, command: str) -> bool:
        """True for a harmless repeat; refuses the reference reused with another amount."""
        known = memory.get(reference)
        if known is None:
            return False
        if known == amount:
            return True
        raise ReferenceReused(reference, command)

    def _settle_again(self, reference: str, wanted: Settlement) -> list[AccountEvent]:
        settled = self._settled.get(reference)
        if settled is None:
            raise ReservationNotFound(self.account_id, reference)
        if settled.outcome is wanted:
            return []
        raise ReservationSettled(reference, settled.outcome)
