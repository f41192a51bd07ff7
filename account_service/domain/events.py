"""The account's events: what happened to an account, as stored in its stream.

Events are facts, named in the past tense. The steps of the reservation protocol carry the
``epoch`` of the transfer driver that sent them (0 when the caller gave none), so that an
account can refuse a step from a driver older than one it has already heard from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias


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
    epoch: int = 0
    # When the transfer service will release the hold by itself (microseconds since the
    # Unix epoch); 0: never.
    expires_at: int = 0


@dataclass(frozen=True, slots=True)
class ReservationReleased:
    amount: int
    reference: str
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class ReservationCaptured:
    """The hold is removed and ``amount`` (all of it, or part) leaves the balance, in one
    event; the rest of the hold, if any, is released by the same event."""

    amount: int
    reference: str
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Credited:
    amount: int
    reference: str
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class CreditHeld:
    """A credit due to the account, held for it until confirmed or cancelled: counted in
    ``pending_credits``, not spendable, and it keeps the account from closing."""

    amount: int
    reference: str
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class CreditConfirmed:
    """The held credit joins the balance."""

    amount: int
    reference: str
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class CreditCancelled:
    """The held credit is dropped; the balance is as before."""

    amount: int
    reference: str
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class StepRefused:
    """A step of the reservation protocol (``reserve``, ``credit``, ``hold_credit``) refused
    for good. Stored, so that every repeat of the step gets the same answer, whatever the
    account looks like by then; it may be the first event of an account not opened yet.

    ``error`` names the refusal (the domain error's class), ``message`` and ``details`` are
    what the first answer said.
    """

    step: str
    amount: int
    reference: str
    error: str
    message: str
    details: dict[str, str] = field(default_factory=dict)
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class OverdraftLimitSet:
    limit: int
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
    | CreditHeld
    | CreditConfirmed
    | CreditCancelled
    | StepRefused
    | OverdraftLimitSet
    | AccountClosed
)

EVENT_CLASSES: tuple[type, ...] = (
    AccountOpened,
    Deposited,
    Withdrawn,
    Reserved,
    ReservationReleased,
    ReservationCaptured,
    Credited,
    CreditHeld,
    CreditConfirmed,
    CreditCancelled,
    StepRefused,
    OverdraftLimitSet,
    AccountClosed,
)
