"""What the transfer asks of the accounts, and what they can answer: the protocol's
actions and phases, one account step, and the four kinds of answer."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias


class Action(enum.Enum):
    """A call of the account service's side of the protocol."""

    RESERVE = "reserve"
    CREDIT = "credit"
    HOLD_CREDIT = "hold_credit"
    CONFIRM_CREDIT = "confirm_credit"
    CANCEL_CREDIT = "cancel_credit"
    CAPTURE = "capture"
    RELEASE = "release"


class Phase(enum.Enum):
    HOLD = "hold"
    CREDIT = "credit"
    SETTLE = "settle"
    UNDO = "undo"


class AccountStep(NamedTuple):
    """One step for the account side. ``amount``: what to hold or credit; for a capture,
    how much (0: all of the hold). ``expires_at``: a hold's expiry, in microseconds since
    the Unix epoch (0: none), for the account to show. ``owner``: on a hold, the owner the
    account must have (the requesting token's; "" for any). A NamedTuple: a few are built
    for every transfer, in a third of a frozen dataclass's time."""

    action: Action
    account_id: str
    amount: int = 0
    expires_at: int = 0
    owner: str = ""


# --- the answers a step can get --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """The step took effect (or had already): ``currency`` is the account's."""

    currency: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The account said no, for good; ``reason`` is a contract reason."""

    reason: str
    message: str = ""
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Undecided:
    """No answer (a peer down, a deadline): the step may or may not have taken effect."""

    why: str


@dataclass(frozen=True, slots=True)
class Fenced:
    """A newer driver of this transfer has spoken to the account: this one must stop."""

    why: str


Answer: TypeAlias = Applied | Refused | Undecided | Fenced
