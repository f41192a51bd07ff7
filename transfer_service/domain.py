"""The Transfer aggregate: its states, events, decisions and refusals.

A transfer's state is the fold of its events. The decision methods (``request``,
``reserved``, ``credited``, ...) check that a transition is legal and return the events
to record; they never change the transfer themselves, so a decision can be retried or
discarded without side effects. Nothing here does I/O or reads a clock: times arrive
with the events, from the store.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from shared_kernel.errors import AlreadyExists, DomainError, InvalidArgument
from shared_kernel.values import parse_amount


class TransferState(enum.Enum):
    REQUESTED = "REQUESTED"
    RESERVED = "RESERVED"
    CREDITED = "CREDITED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class Step(enum.Enum):
    """The next call to the account service the protocol must make."""

    RESERVE = "reserve"
    CREDIT = "credit"
    CAPTURE = "capture"
    RELEASE = "release"


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferRequested:
    transfer_id: str
    from_account_id: str
    to_account_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class TransferReserved:
    """The amount is held on the source account; ``currency`` is the source's."""

    currency: str


@dataclass(frozen=True, slots=True)
class TransferCredited:
    pass


@dataclass(frozen=True, slots=True)
class CreditRefused:
    """The target refused the credit for good; the hold on the source must be released."""

    reason: str


@dataclass(frozen=True, slots=True)
class TransferCompleted:
    pass


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """``reason`` is a contract error reason, e.g. ``INSUFFICIENT_FUNDS``."""

    reason: str


TransferEvent = (
    TransferRequested
    | TransferReserved
    | TransferCredited
    | CreditRefused
    | TransferCompleted
    | TransferFailed
)


# --- errors -----------------------------------------------------------------------------


class TransferNotFound(DomainError):
    def __init__(self, transfer_id: str) -> None:
        super().__init__(f"transfer {transfer_id} not found", transfer_id=transfer_id)
        self.transfer_id = transfer_id


class TransferAlreadyExists(AlreadyExists):
    """The transfer id is taken by a transfer with other accounts or amount."""

    def __init__(self, transfer_id: str) -> None:
        super().__init__(
            f"transfer {transfer_id} already exists with other contents", transfer_id=transfer_id
        )
        self.transfer_id = transfer_id


class InvalidTransition(Exception):
    """A decision that the transfer's state does not allow. A bug, not a client error."""


_TERMINAL = frozenset({TransferState.COMPLETED, TransferState.FAILED})


# --- the aggregate ----------------------------------------------------------------------


@dataclass
class Transfer:
    transfer_id: str
    from_account_id: str = ""
    to_account_id: str = ""
    amount: int = 0
    currency: str = ""
    state: TransferState | None = None
    failure_reason: str = ""
    # True once CreditRefused is recorded: the transfer is compensating (or has failed
    # after compensating), which is what tells RESERVED-then-release from RESERVED-then-credit.
    credit_was_refused: bool = False
    version: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def empty(cls, transfer_id: str) -> Transfer:
        return cls(transfer_id=transfer_id)

    @classmethod
    def from_events(
        cls,
        transfer_id: str,
        events_with_times: Iterable[tuple[TransferEvent, datetime | None]],
    ) -> Transfer:
        transfer = cls.empty(transfer_id)
        for event, at in events_with_times:
            transfer.apply(event, at)
        return transfer

    # --- folding ---

    def apply(self, event: TransferEvent, at: datetime | None = None) -> None:
        """Fold one recorded event into the state. Recorded facts are not re-validated."""
        match event:
            case TransferRequested():
                self.transfer_id = event.transfer_id
                self.from_account_id = event.from_account_id
                self.to_account_id = event.to_account_id
                self.amount = event.amount
                self.state = TransferState.REQUESTED
                if at is not None:
                    self.created_at = at
            case TransferReserved():
                self.currency = event.currency
                self.state = TransferState.RESERVED
            case TransferCredited():
                self.state = TransferState.CREDITED
            case CreditRefused():
                self.credit_was_refused = True
                self.failure_reason = event.reason
            case TransferCompleted():
                self.state = TransferState.COMPLETED
            case TransferFailed():
                self.failure_reason = event.reason
                self.state = TransferState.FAILED
            case _:
                raise TypeError(f"not a transfer event: {event!r}")
        self.version += 1
        if at is not None:
            self.updated_at = at

    # --- queries ---

    @property
    def is_terminal(self) -> bool:
        return self.state in _TERMINAL

    @property
    def was_reserved(self) -> bool:
        # Only TransferReserved sets the currency.
        return self.currency != ""

    @property
    def next_step(self) -> Step | None:
        match self.state:
            case TransferState.REQUESTED:
                return Step.RESERVE
            case TransferState.RESERVED:
                return Step.RELEASE if self.credit_was_refused else Step.CREDIT
            case TransferState.CREDITED:
                return Step.CAPTURE
            case _:
                return None

    def matches(self, from_account_id: str, to_account_id: str, amount: int) -> bool:
        """Whether a request carries the same contents as the one that created this transfer."""
        return (
            self.state is not None
            and self.from_account_id == from_account_id
            and self.to_account_id == to_account_id
            and self.amount == amount
        )

    # --- decisions ---

    def request(self, from_account_id: str, to_account_id: str, amount: int) -> list[TransferEvent]:
        parse_amount(amount)
        if from_account_id == to_account_id:
            raise InvalidArgument("to_account_id", "must differ from from_account_id")
        if self.state is not None:
            if self.matches(from_account_id, to_account_id, amount):
                return []
            raise TransferAlreadyExists(self.transfer_id)
        return [TransferRequested(self.transfer_id, from_account_id, to_account_id, amount)]

    def reserved(self, currency: str) -> list[TransferEvent]:
        if self.was_reserved:
            if currency != self.currency:
                raise InvalidTransition(
                    f"transfer {self.transfer_id} reserved in {self.currency}, not {currency}"
                )
            return []
        self._require(TransferState.REQUESTED, "reserved")
        return [TransferReserved(currency)]

    def credited(self) -> list[TransferEvent]:
        if self.state in (TransferState.CREDITED, TransferState.COMPLETED):
            return []
        self._require(TransferState.RESERVED, "credited")
        if self.credit_was_refused:
            raise InvalidTransition(f"transfer {self.transfer_id}: credit was refused")
        return [TransferCredited()]

    def credit_refused(self, reason: str) -> list[TransferEvent]:
        if self.credit_was_refused:
            if reason != self.failure_reason:
                raise InvalidTransition(
                    f"transfer {self.transfer_id}: credit refused with {self.failure_reason},"
                    f" not {reason}"
                )
            return []
        self._require(TransferState.RESERVED, "credit_refused")
        return [CreditRefused(reason)]

    def completed(self) -> list[TransferEvent]:
        if self.state is TransferState.COMPLETED:
            return []
        self._require(TransferState.CREDITED, "completed")
        return [TransferCompleted()]

    def failed(self, reason: str) -> list[TransferEvent]:
        if self.state is TransferState.FAILED:
            if reason != self.failure_reason:
                raise InvalidTransition(
                    f"transfer {self.transfer_id} failed with {self.failure_reason}, not {reason}"
                )
            return []
        if self.state is TransferState.REQUESTED:
            return [TransferFailed(reason)]
        if self.state is TransferState.RESERVED and self.credit_was_refused:
            return [TransferFailed(reason)]
        raise InvalidTransition(
            f"transfer {self.transfer_id}: cannot fail from {self._describe()}"
            " (a reserved transfer fails only after its credit was refused)"
        )

    def _require(self, state: TransferState, decision: str) -> None:
        if self.state is not state:
            raise InvalidTransition(
                f"transfer {self.transfer_id}: {decision} needs {state.name},"
                f" not {self._describe()}"
            )

    def _describe(self) -> str:
        if self.state is None:
            return "an unrequested transfer"
        if self.state is TransferState.RESERVED and self.credit_was_refused:
            return "RESERVED (releasing)"
        return self.state.name
