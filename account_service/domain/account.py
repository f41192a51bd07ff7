"""The account aggregate: every rule an account obeys.

An account is a stream of events. ``Account.apply`` folds one stored event into the state
without judging it, because the stored history is the truth. The command methods decide
from the current state alone which new events a request produces: an empty list means the
request is a repeat and nothing needs storing; a domain error means it is refused.
Decisions never mutate the account.

The steps of the reservation protocol (``reserve``, ``credit``, ``hold_credit``, and the
settling ``capture``, ``release``, ``confirm_credit``, ``cancel_credit``) follow two more
rules, so that any number of drivers of one transfer get one outcome:

- A step's outcome is final per (account, reference, step). A refusal of ``reserve``,
  ``credit`` or ``hold_credit`` is stored (the error carries a ``StepRefused`` in its
  ``record``), also on an account not opened yet, and every repeat is answered with it.
  A reference names one hold for good: ``reserve`` on a hold already settled is
  ``ReservationSettled``, never a new hold.
- Each step carries its driver's epoch; a step whose epoch is older than one already
  stored for the reference is ``EpochFenced``.

``available = balance - reserved + overdraft_limit``: a debit may take the balance down to
``-overdraft_limit``. Credits held for the account (``pending_credits``) are not spendable.

Pure Python: no I/O, no clock. The time a reservation was made is passed into ``apply``
by whoever read it from the store.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from account_service.domain.errors import (
    AccountAlreadyExists,
    AccountIsClosed,
    AccountNotEmpty,
    AccountNotFound,
    BalanceOutOfRange,
    CurrencyMismatch,
    EpochFenced,
    ExceedsHold,
    InsufficientFunds,
    ReferenceReused,
    ReservationNotFound,
    ReservationSettled,
    rebuilt,
)
from account_service.domain.events import (
    AccountClosed,
    AccountEvent,
    AccountOpened,
    CreditCancelled,
    CreditConfirmed,
    Credited,
    CreditHeld,
    Deposited,
    OverdraftLimitSet,
    ReservationCaptured,
    ReservationReleased,
    Reserved,
    StepRefused,
    Withdrawn,
)
from shared_kernel.errors import DomainError, InvalidArgument
from shared_kernel.values import INT64_MAX

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AccountStatus(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Settlement(enum.Enum):
    CAPTURED = "captured"
    RELEASED = "released"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Hold:
    """An open reservation."""

    amount: int
    reserved_at: datetime | None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SettledReservation:
    """What became of a reservation or a credit hold, kept so repeats are answered forever."""

    outcome: Settlement
    amount: int


def micros_to_time(micros: int) -> datetime | None:
    return None if not micros else _EPOCH + timedelta(microseconds=micros)


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
        "_epochs",
        "_limits",
        "_pending_credits",
        "_refusals",
        "_reserved",
        "_settled",
        "_settled_credits",
        "_withdrawals",
        "account_id",
        "balance",
        "credit_holds",
        "currency",
        "holds",
        "overdraft_limit",
        "owner",
        "status",
        "version",
    )

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.owner = ""
        self.currency = ""
        self.balance = 0
        self.overdraft_limit = 0
        self.status: AccountStatus | None = None
        self.version = 0
        # reference -> open hold; dicts keep insertion order, so this is reservation order.
        self.holds: dict[str, Hold] = {}
        # reference -> credit held for the account.
        self.credit_holds: dict[str, int] = {}
        # Kept as running sums so reading them never walks the holds.
        self._reserved = 0
        self._pending_credits = 0
        # Idempotency memory, one namespace per kind of command: reference -> amount.
        self._deposits: dict[str, int] = {}
        self._withdrawals: dict[str, int] = {}
        self._credits: dict[str, int] = {}
        self._limits: dict[str, int] = {}
        self._settled: dict[str, SettledReservation] = {}
        self._settled_credits: dict[str, SettledReservation] = {}
        # (step, reference) -> its stored refusal.
        self._refusals: dict[tuple[str, str], StepRefused] = {}
        # reference -> newest driver epoch stored for it, only where above 1 (the first
        # driver's), so an account driven once by each transfer keeps nothing here.
        self._epochs: dict[str, int] = {}

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
        for name in Account.__slots__:
            value = getattr(self, name)
            # The values inside are immutable; copying the containers is enough.
            setattr(twin, name, value.copy() if isinstance(value, dict) else value)
        return twin

    # ----------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON object; ``from_snapshot`` turns it back into an equal
        account."""
        from account_service.domain.snapshot import to_snapshot

        return to_snapshot(self)

    @classmethod
    def from_snapshot(cls, account_id: str, data: Mapping[str, Any]) -> Account:
        """The account ``to_snapshot`` described; ``SnapshotUnusable`` (a ``ValueError``)
        for another format, another account, or anything malformed."""
        from account_service.domain.snapshot import from_snapshot

        return from_snapshot(account_id, data)

    # ----------------------------------------------------------------- reading

    @property
    def exists(self) -> bool:
        """Opened (and maybe closed since). An account not opened yet may still have
        events: the refusals of steps sent to it."""
        return self.status is not None

    @property
    def reserved(self) -> int:
        return self._reserved

    @property
    def pending_credits(self) -> int:
        return self._pending_credits

    @property
    def available(self) -> int:
        return self.balance - self._reserved + self.overdraft_limit

    @property
    def remembered(self) -> int:
        """References kept for idempotency and open holds: what a snapshot's size grows with."""
        return (
            len(self.holds)
            + len(self.credit_holds)
            + len(self._deposits)
            + len(self._withdrawals)
            + len(self._credits)
            + len(self._limits)
            + len(self._settled)
            + len(self._settled_credits)
            + len(self._refusals)
            + len(self._epochs)
        )

    def _state(self) -> tuple:
        # Holds compare in order (reservation order is part of the state); memories as sets.
        return tuple(
            list(getattr(self, name).items())
            if name in ("holds", "credit_holds")
            else getattr(self, name)
            for name in Account.__slots__
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Account):
            return NotImplemented
        return self._state() == other._state()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"Account(account_id={self.account_id!r}, owner={self.owner!r},"
            f" currency={self.currency!r}, balance={self.balance}, reserved={self._reserved},"
            f" pending_credits={self._pending_credits},"
            f" overdraft_limit={self.overdraft_limit}, status={self.status},"
            f" version={self.version})"
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
            case Reserved(amount, reference, epoch, expires_at):
                self.holds[reference] = Hold(amount, at, micros_to_time(expires_at))
                self._reserved += amount
                self._note_epoch(reference, epoch)
            case ReservationCaptured(amount, reference, epoch):
                self._drop_hold(reference)
                self.balance -= amount
                self._settled[reference] = SettledReservation(Settlement.CAPTURED, amount)
                self._note_epoch(reference, epoch)
            case ReservationReleased(amount, reference, epoch):
                self._drop_hold(reference)
                self._settled[reference] = SettledReservation(Settlement.RELEASED, amount)
                self._note_epoch(reference, epoch)
            case Credited(amount, reference, epoch):
                self.balance += amount
                self._credits[reference] = amount
                self._note_epoch(reference, epoch)
            case CreditHeld(amount, reference, epoch):
                self.credit_holds[reference] = amount
                self._pending_credits += amount
                self._note_epoch(reference, epoch)
            case CreditConfirmed(amount, reference, epoch):
                self._drop_credit_hold(reference)
                self.balance += amount
                self._settled_credits[reference] = SettledReservation(Settlement.CONFIRMED, amount)
                self._note_epoch(reference, epoch)
            case CreditCancelled(amount, reference, epoch):
                self._drop_credit_hold(reference)
                self._settled_credits[reference] = SettledReservation(Settlement.CANCELLED, amount)
                self._note_epoch(reference, epoch)
            case Withdrawn(amount, reference):
                self.balance -= amount
                self._withdrawals[reference] = amount
            case StepRefused():
                self._refusals[event.step, event.reference] = event
                self._note_epoch(event.reference, event.epoch)
            case OverdraftLimitSet(limit, reference):
                self.overdraft_limit = limit
                self._limits[reference] = limit
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

    def _drop_credit_hold(self, reference: str) -> None:
        amount = self.credit_holds.pop(reference, None)
        if amount is not None:
            self._pending_credits -= amount

    def _note_epoch(self, reference: str, epoch: int) -> None:
        if epoch > 1 and epoch > self._epochs.get(reference, 0):
            self._epochs[reference] = epoch

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

    def set_overdraft_limit(self, limit: int, reference: str) -> list[AccountEvent]:
        """Any limit >= 0, at any time: lowering it below what is in use only refuses
        further debits."""
        if limit < 0:
            raise InvalidArgument("overdraft_limit", "must not be negative")
        if limit > INT64_MAX:
            raise InvalidArgument("overdraft_limit", "must fit in int64")
        self._require_exists()
        if self._seen(self._limits, reference, limit, "overdraft limit"):
            return []
        self._require_open()
        return [OverdraftLimitSet(limit, reference)]

    def reserve(
        self,
        amount: int,
        reference: str,
        currency: str = "",
        epoch: int = 0,
        expires_at: int = 0,
    ) -> list[AccountEvent]:
        """Hold ``amount``. ``currency``, when given, must be the account's."""
        _require_amount(amount)
        self._answer_again("reserve", reference, epoch)
        hold = self.holds.get(reference)
        if hold is not None:
            if hold.amount == amount:
                return []
            raise ReferenceReused(reference, "reservation")
        settled = self._settled.get(reference)
        if settled is not None:
            raise ReservationSettled(reference, settled.outcome, self.currency)
        if not self.exists:
            self._refuse("reserve", amount, reference, epoch, AccountNotFound(self.account_id))
        if self.status is AccountStatus.CLOSED:
            self._refuse("reserve", amount, reference, epoch, AccountIsClosed(self.account_id))
        if currency and currency != self.currency:
            mismatch = CurrencyMismatch(self.account_id, self.currency, currency)
            self._refuse("reserve", amount, reference, epoch, mismatch)
        available = self.available
        if available < amount:
            short = InsufficientFunds(self.account_id, available, amount)
            self._refuse("reserve", amount, reference, epoch, short)
        if amount > INT64_MAX - self._reserved:
            # With an overdraft limit the holds together could pass what int64 carries.
            too_much = BalanceOutOfRange(self.account_id, self._reserved, amount)
            self._refuse("reserve", amount, reference, epoch, too_much)
        return [Reserved(amount, reference, epoch, expires_at)]

    def credit(
        self, amount: int, reference: str, currency: str, epoch: int = 0
    ) -> list[AccountEvent]:
        _require_amount(amount)
        self._answer_again("credit", reference, epoch)
        known = self._credits.get(reference)
        if known is not None:
            # A stored credit was necessarily in the account's currency.
            if known == amount and currency == self.currency:
                return []
            raise ReferenceReused(reference, "credit")
        self._check_creditable("credit", amount, reference, currency, epoch)
        return [Credited(amount, reference, epoch)]

    def hold_credit(
        self, amount: int, reference: str, currency: str, epoch: int = 0
    ) -> list[AccountEvent]:
        """Hold a credit due to the account, to confirm or cancel later."""
        _require_amount(amount)
        self._answer_again("hold_credit", reference, epoch)
        known = self.credit_holds.get(reference)
        if known is not None:
            if known == amount and currency == self.currency:
                return []
            raise ReferenceReused(reference, "credit hold")
        settled = self._settled_credits.get(reference)
        if settled is not None:
            raise ReservationSettled(reference, settled.outcome, self.currency)
        self._check_creditable("hold_credit", amount, reference, currency, epoch)
        return [CreditHeld(amount, reference, epoch)]

    def capture(self, reference: str, amount: int = 0, epoch: int = 0) -> list[AccountEvent]:
        """Withdraw ``amount`` of the hold (0: all of it) and release the rest."""
        self._require_exists()
        self._check_epoch(reference, epoch)
        hold = self.holds.get(reference)
        if hold is not None:
            if amount > hold.amount:
                raise ExceedsHold(reference, hold.amount, amount)
            return [ReservationCaptured(amount or hold.amount, reference, epoch)]
        return self._settle_again(self._settled, reference, Settlement.CAPTURED, "reservation")

    def release(self, reference: str, epoch: int = 0) -> list[AccountEvent]:
        self._require_exists()
        self._check_epoch(reference, epoch)
        hold = self.holds.get(reference)
        if hold is not None:
            return [ReservationReleased(hold.amount, reference, epoch)]
        return self._settle_again(self._settled, reference, Settlement.RELEASED, "reservation")

    def confirm_credit(self, reference: str, epoch: int = 0) -> list[AccountEvent]:
        self._require_exists()
        self._check_epoch(reference, epoch)
        amount = self.credit_holds.get(reference)
        if amount is not None:
            return [CreditConfirmed(amount, reference, epoch)]
        return self._settle_again(
            self._settled_credits, reference, Settlement.CONFIRMED, "credit hold"
        )

    def cancel_credit(self, reference: str, epoch: int = 0) -> list[AccountEvent]:
        self._require_exists()
        self._check_epoch(reference, epoch)
        amount = self.credit_holds.get(reference)
        if amount is not None:
            return [CreditCancelled(amount, reference, epoch)]
        return self._settle_again(
            self._settled_credits, reference, Settlement.CANCELLED, "credit hold"
        )

    def close(self) -> list[AccountEvent]:
        self._require_exists()
        if self.status is AccountStatus.CLOSED:
            return []
        if self.balance != 0 or self._reserved != 0 or self._pending_credits != 0:
            raise AccountNotEmpty(
                self.account_id, self.balance, self._reserved, self._pending_credits
            )
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
        # Credits held for the account will join the balance: they count against the room.
        if amount > INT64_MAX - self.balance - self._pending_credits:
            raise BalanceOutOfRange(self.account_id, self.balance, amount)

    def _check_creditable(
        self, step: str, amount: int, reference: str, currency: str, epoch: int
    ) -> None:
        """A credit (held or not) must reach an open account in its own currency, and fit."""
        if not self.exists:
            self._refuse(step, amount, reference, epoch, AccountNotFound(self.account_id))
        if self.status is AccountStatus.CLOSED:
            self._refuse(step, amount, reference, epoch, AccountIsClosed(self.account_id))
        if currency != self.currency:
            mismatch = CurrencyMismatch(self.account_id, self.currency, currency)
            self._refuse(step, amount, reference, epoch, mismatch)
        try:
            self._require_room_for(amount)
        except BalanceOutOfRange as exc:
            self._refuse(step, amount, reference, epoch, exc)

    def _check_epoch(self, reference: str, epoch: int) -> None:
        newest = self._epochs.get(reference, 0)
        if epoch and epoch < newest:
            raise EpochFenced(reference, epoch, newest)

    def _answer_again(self, step: str, reference: str, epoch: int) -> None:
        """Fences a stale driver, then answers a step refused before with that refusal."""
        self._check_epoch(reference, epoch)
        refused = self._refusals.get((step, reference))
        if refused is not None:
            raise rebuilt(refused.error, refused.message, refused.details)

    def _refuse(
        self, step: str, amount: int, reference: str, epoch: int, error: DomainError
    ) -> NoReturn:
        """Refuses the step for good: the refusal is stored with it."""
        error.record = (
            StepRefused(
                step, amount, reference, type(error).__name__, error.message, error.metadata, epoch
            ),
        )
        raise error

    @staticmethod
    def _seen(memory: dict[str, int], reference: str, amount: int, command: str) -> bool:
        """True for a harmless repeat; refuses the reference reused with another amount."""
        known = memory.get(reference)
        if known is None:
            return False
        if known == amount:
            return True
        raise ReferenceReused(reference, command)

    def _settle_again(
        self,
        memory: dict[str, SettledReservation],
        reference: str,
        wanted: Settlement,
        what: str,
    ) -> list[AccountEvent]:
        settled = memory.get(reference)
        if settled is None:
            raise ReservationNotFound(self.account_id, reference, what)
        if settled.outcome is wanted:
            return []
        raise ReservationSettled(reference, settled.outcome)
