"""The account's refusals: one domain error per reason an account says no."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared_kernel.errors import AlreadyExists, DomainError
from shared_kernel.values import INT64_MAX

if TYPE_CHECKING:
    from account_service.domain.account import Settlement


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
    def __init__(
        self, account_id: str, balance: int, reserved: int, pending_credits: int = 0
    ) -> None:
        pending = f", {pending_credits} pending credits" if pending_credits else ""
        super().__init__(
            f"account {account_id} still holds {balance} with {reserved} reserved{pending};"
            " only an empty account can be closed",
            account_id=account_id,
            balance=str(balance),
            reserved=str(reserved),
            pending_credits=str(pending_credits),
        )
        self.balance = balance
        self.reserved = reserved


class ReservationNotFound(DomainError):
    def __init__(self, account_id: str, reference: str, what: str = "reservation") -> None:
        super().__init__(
            f"account {account_id} has no {what} {reference!r}",
            account_id=account_id,
            reference=reference,
        )
        self.reference = reference


class ReservationSettled(DomainError):
    """The reservation (or credit hold) was settled already, another way or (for a
    reserve) at all: a reference names one hold for good."""

    def __init__(self, reference: str, outcome: Settlement, currency: str = "") -> None:
        super().__init__(
            f"reservation {reference!r} was already {outcome.value}",
            reference=reference,
            outcome=outcome.value,
            **({"currency": currency} if currency else {}),
        )
        self.reference = reference
        self.outcome = outcome


class ExceedsHold(DomainError):
    """A capture of more than the hold."""

    def __init__(self, reference: str, held: int, requested: int) -> None:
        super().__init__(
            f"reservation {reference!r} holds {held}, {requested} requested",
            reference=reference,
            held=str(held),
            requested=str(requested),
        )


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


class EpochFenced(DomainError):
    """A step from a transfer driver older than one the account has already heard from
    for the same reference: another process has taken the transfer over."""

    def __init__(self, reference: str, epoch: int, newest: int) -> None:
        super().__init__(
            f"step for {reference!r} from epoch {epoch}; epoch {newest} has taken it over",
            reference=reference,
            epoch=str(epoch),
            newest=str(newest),
        )


# The refusals of a step that are stored and answered again to every repeat.
FINAL_REFUSALS: dict[str, type[DomainError]] = {
    cls.__name__: cls
    for cls in (
        AccountNotFound,
        AccountIsClosed,
        CurrencyMismatch,
        InsufficientFunds,
        BalanceOutOfRange,
    )
}


def rebuilt(error: str, message: str, details: dict[str, str]) -> DomainError:
    """The refusal a stored ``StepRefused`` recorded, as it was first answered."""
    cls = FINAL_REFUSALS.get(error, DomainError)
    refusal = cls.__new__(cls)
    DomainError.__init__(refusal, message, **details)
    return refusal
