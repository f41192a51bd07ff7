"""The transfer's events (facts, in the past tense), its legs, and the request event's
builder with the rules every request obeys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from shared_kernel.errors import InvalidArgument
from shared_kernel.values import INT64_MAX
from transfer_service.domain.steps import Phase


class Leg(NamedTuple):
    """One movement of a transfer (a NamedTuple, like ``AccountStep``: built per request)."""

    from_account_id: str
    to_account_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class TransferRequested:
    """``legs`` empty: one leg, ``from_account_id`` -> ``to_account_id``. With legs, those
    two are empty and ``amount`` is the legs' sum. ``expires_after``: microseconds a pending
    hold lasts from the request (0: no expiry)."""

    transfer_id: str
    from_account_id: str
    to_account_id: str
    amount: int
    legs: list[list[str | int]] = field(default_factory=list)
    pending: bool = False
    expires_after: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    reverses_transfer_id: str = ""
    reason: str = ""
    # The owner the requesting token is bound to ("" for none): every source must be theirs.
    owner: str = ""


@dataclass(frozen=True, slots=True)
class TransferReserved:
    """Every debit is held; ``currency`` is the sources' (every account's)."""

    currency: str


@dataclass(frozen=True, slots=True)
class PostRequested:
    """A pending transfer is to be posted for ``amount``."""

    amount: int


@dataclass(frozen=True, slots=True)
class VoidRequested:
    pass


@dataclass(frozen=True, slots=True)
class HoldExpired:
    """A pending transfer's hold ran out of time: it is to be released."""


@dataclass(frozen=True, slots=True)
class TransferCredited:
    """Every target has its credit (the last applied, the others held)."""


@dataclass(frozen=True, slots=True)
class TransferRefused:
    """A step of ``phase`` was refused for good after ``placed`` steps of that phase took
    effect: what was placed is to be undone, then the transfer fails with ``reason``."""

    reason: str
    phase: str = Phase.CREDIT.value
    placed: int = 0


@dataclass(frozen=True, slots=True)
class TransferCompleted:
    pass


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """``reason`` is a contract error reason, e.g. ``INSUFFICIENT_FUNDS``."""

    reason: str


@dataclass(frozen=True, slots=True)
class TransferVoided:
    pass


@dataclass(frozen=True, slots=True)
class TransferExpired:
    pass


@dataclass(frozen=True, slots=True)
class ReversalReserved:
    """On a COMPLETED transfer: ``amount`` of what it moved is set aside for the reversal
    ``reversal_id`` (recorded with the reversal's request, in one transaction), so that
    concurrent reversals never add up to more than it moved."""

    reversal_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class ReversalSettled:
    """The reversal ended (recorded with its end, in one transaction): ``completed`` adds
    its amount to what is reversed; otherwise the amount is free to reverse again."""

    reversal_id: str
    completed: bool


TransferEvent: TypeAlias = (
    TransferRequested
    | TransferReserved
    | PostRequested
    | VoidRequested
    | HoldExpired
    | TransferCredited
    | TransferRefused
    | TransferCompleted
    | TransferFailed
    | TransferVoided
    | TransferExpired
    | ReversalReserved
    | ReversalSettled
)
EVENT_CLASSES: tuple[type, ...] = (
    TransferRequested,
    TransferReserved,
    PostRequested,
    VoidRequested,
    HoldExpired,
    TransferCredited,
    TransferRefused,
    TransferCompleted,
    TransferFailed,
    TransferVoided,
    TransferExpired,
    ReversalReserved,
    ReversalSettled,
)


MAX_LEGS = 16


def _check_leg(leg: Leg) -> None:
    """A one-leg transfer's rules, named by the request's own fields."""
    if leg.from_account_id == leg.to_account_id:
        raise InvalidArgument("to_account_id", "a leg's target must differ from its source")
    if not 0 < leg.amount <= INT64_MAX:
        raise InvalidArgument("amount", "must be 1 to 2^63-1")


def _check_legs(legs: Sequence[Leg]) -> None:
    if not 1 <= len(legs) <= MAX_LEGS:
        raise InvalidArgument("legs", f"a transfer has 1 to {MAX_LEGS} legs")
    for leg in legs:
        if leg.from_account_id == leg.to_account_id:
            raise InvalidArgument("legs", "a leg's target must differ from its source")
        if not 0 < leg.amount <= INT64_MAX:
            raise InvalidArgument("legs", "must be 1 to 2^63-1")
    if sum(leg.amount for leg in legs) > INT64_MAX:
        raise InvalidArgument("legs", "the legs' amounts add up beyond int64")


def legs_field(legs: Sequence[Leg]) -> list[list[str | int]]:
    return [[leg.from_account_id, leg.to_account_id, leg.amount] for leg in legs]


def requested(
    transfer_id: str,
    legs: Sequence[Leg],
    *,
    pending: bool = False,
    expires_after: int = 0,
    metadata: Mapping[str, str] | None = None,
    reverses_transfer_id: str = "",
    reason: str = "",
    owner: str = "",
) -> TransferRequested:
    """The request event for ``legs``: a one-leg transfer keeps its accounts in the
    top-level fields (as transfers always have), several legs list them.

    ``InvalidArgument`` for legs that break the rules (named by the request's own fields:
    ``amount`` and ``to_account_id`` for one leg, ``legs`` for several)."""
    if len(legs) == 1:
        (leg,) = legs
        _check_leg(leg)
        return TransferRequested(
            transfer_id,
            leg.from_account_id,
            leg.to_account_id,
            leg.amount,
            [],
            pending,
            expires_after,
            dict(metadata or {}),
            reverses_transfer_id,
            reason,
            owner,
        )
    _check_legs(legs)
    return TransferRequested(
        transfer_id,
        "",
        "",
        sum(leg.amount for leg in legs),
        legs_field(legs),
        pending,
        expires_after,
        dict(metadata or {}),
        reverses_transfer_id,
        reason,
        owner,
    )
