"""The account aggregate: its events, its refusals, and every rule an account obeys.

An account is a stream of events. ``Account.apply`` folds one stored event into the state
without judging it, because the stored history is the truth. The command methods
(``open``, ``deposit``, ``withdraw``, ``reserve``, ``credit``, ``capture``, ``release``,
``close``) decide from the current state alone which new events a request produces: an
empty list means the request is a repeat and nothing needs storing; a domain error means
it is refused. Decisions never mutate the account.

Pure Python: no I/O, no clock. The time a reservation was made is passed into ``apply``
by whoever read it from the store.

``to_snapshot``/``from_snapshot`` turn the whole state (idempotency memories included)
into a JSON object and back, so that loading a long stream can start from a snapshot
instead of its first event.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

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


# The layout of ``Account.to_snapshot``. A reader that meets another value must not guess:
# ``from_snapshot`` refuses it and the state is folded from the events instead.
SNAPSHOT_FORMAT = 1


class SnapshotUnusable(ValueError):
    """A snapshot of an unknown format, or not a well-formed one of the known format."""


def _snapshot_int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if type(value) is not int:  # bool is not a count
        raise SnapshotUnusable(f"{key} must be an integer")
    return value


def _snapshot_str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if type(value) is not str:
        raise SnapshotUnusable(f"{key} must be a string")
    return value


def _memory_to_snapshot(memory: dict[str, int]) -> list[list[Any]]:
    # Two parallel lists rather than an object: half the time to encode and to decode.
    return [list(memory), list(memory.values())]


def _snapshot_memory(data: Mapping[str, Any], key: str) -> dict[str, int]:
    """A reference -> amount memory from ``[references, amounts]``."""
    value = data[key]
    if type(value) is not list or len(value) != 2:
        raise SnapshotUnusable(f"{key} must be [references, amounts]")
    references, amounts = value
    if type(references) is not list or type(amounts) is not list:
        raise SnapshotUnusable(f"{key} must be [references, amounts]")
    if not all(type(reference) is str for reference in references):
        raise SnapshotUnusable(f"{key} holds a reference that is not a string")
    if not all(type(amount) is int for amount in amounts):  # bool is not an amount
        raise SnapshotUnusable(f"{key} holds an amount that is not an integer")
    memory = dict(zip(references, amounts, strict=True))
    if len(memory) != len(references):
        raise SnapshotUnusable(f"{key} names a reference twice")
    return memory


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

    def copy(self) -> Account:
        """An independent copy: later changes to either leave the other as it was."""
        twin = Account(self.account_id)
        twin.owner = self.owner
        twin.currency = self.currency
        twin.balance = self.balance
        twin.status = self.status
        twin.version = self.version
        # The values are immutable; copying the containers is enough.
        twin.holds = self.holds.copy()
        twin._reserved = self._reserved
        twin._deposits = self._deposits.copy()
        twin._withdrawals = self._withdrawals.copy()
        twin._credits = self._credits.copy()
        twin._settled = self._settled.copy()
        return twin

    # ----------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON object; ``from_snapshot`` turns it back into an equal
        account. Holds keep their order, and their time as an ISO 8601 string."""
        captured: dict[str, int] = {}
        released: dict[str, int] = {}
        for reference, settled in self._settled.items():
            outcome = captured if settled.outcome is Settlement.CAPTURED else released
            outcome[reference] = settled.amount
        # Memories are [references, amounts]; holds [reference, amount, time] in order.
        return {
            "format": SNAPSHOT_FORMAT,
            "account_id": self.account_id,
            "version": self.version,
            "owner": self.owner,
            "currency": self.currency,
            "status": None if self.status is None else self.status.value,
            "balance": self.balance,
            "holds": [
                [
                    reference,
                    hold.amount,
                    None if hold.reserved_at is None else hold.reserved_at.isoformat(),
                ]
                for reference, hold in self.holds.items()
            ],
            "deposits": _memory_to_snapshot(self._deposits),
            "withdrawals": _memory_to_snapshot(self._withdrawals),
            "credits": _memory_to_snapshot(self._credits),
            "captured": _memory_to_snapshot(captured),
            "released": _memory_to_snapshot(released),
        }

    @classmethod
    def from_snapshot(cls, account_id: str, data: Mapping[str, Any]) -> Account:
        """The account ``to_snapshot`` described.

        ``SnapshotUnusable`` (a ``ValueError``) for another format, another account, or
        anything malformed: a snapshot is only a shortcut, so doubt means replaying.
        """
        if not isinstance(data, Mapping):
            raise SnapshotUnusable("a snapshot must be a JSON object")
        found = data.get("format")
        if type(found) is not int or found != SNAPSHOT_FORMAT:
            raise SnapshotUnusable(f"unknown snapshot format {found!r}")
        try:
            return cls._from_snapshot_v1(account_id, data)
        except SnapshotUnusable:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotUnusable(f"malformed snapshot: {exc!r}") from exc

    @classmethod
    def _from_snapshot_v1(cls, account_id: str, data: Mapping[str, Any]) -> Account:
        if data["account_id"] != account_id:
            raise SnapshotUnusable(f"snapshot of account {data['account_id']!r}")
        account = cls(account_id)
        account.version = _snapshot_int(data, "version")
        if account.version < 0:
            raise SnapshotUnusable("negative version")
        account.owner = _snapshot_str(data, "owner")
        account.currency = _snapshot_str(data, "currency")
        status = data["status"]
        account.status = None if status is None else AccountStatus(status)
        account.balance = _snapshot_int(data, "balance")
        for entry in data["holds"]:
            reference, amount, reserved_at = entry
            if type(reference) is not str or type(amount) is not int:
                raise SnapshotUnusable(f"malformed hold {entry!r}")
            if reference in account.holds:
                raise SnapshotUnusable(f"hold {reference!r} listed twice")
            if reserved_at is not None:
                reserved_at = datetime.fromisoformat(reserved_at)
            account.holds[reference] = Hold(amount, reserved_at)
            account._reserved += amount
        account._deposits = _snapshot_memory(data, "deposits")
        account._withdrawals = _snapshot_memory(data, "withdrawals")
        account._credits = _snapshot_memory(data, "credits")
        captured = _snapshot_memory(data, "captured")
        released = _snapshot_memory(data, "released")
        if not captured.keys().isdisjoint(released):
            raise SnapshotUnusable("a reservation both captured and released")
        # Immutable, so one instance serves every reservation settled alike: most
        # accounts see the same few amounts again and again.
        shared: dict[tuple[Settlement, int], SettledReservation] = {}
        for outcome, memory in ((Settlement.CAPTURED, captured), (Settlement.RELEASED, released)):
            for reference, amount in memory.items():
                settled = shared.get((outcome, amount))
                if settled is None:
                    settled = shared[outcome, amount] = SettledReservation(outcome, amount)
                account._settled[reference] = settled
        if (account.version == 0) != (account.status is None):
            raise SnapshotUnusable("version and status disagree")
        return account

    # ----------------------------------------------------------------- reading

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def reserved(self) -> int:
        return self._reserved

    @property
    def remembered(self) -> int:
        """References kept for idempotency and open holds: what a snapshot's size grows with."""
        return (
            len(self.holds)
            + len(self._deposits)
            + len(self._withdrawals)
            + len(self._credits)
            + len(self._settled)
        )

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
