"""The transfer's refusals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared_kernel.errors import AlreadyExists, DomainError

if TYPE_CHECKING:
    from transfer_service.domain.transfer import TransferState


class TransferNotFound(DomainError):
    def __init__(self, transfer_id: str) -> None:
        super().__init__(f"transfer {transfer_id} not found", transfer_id=transfer_id)
        self.transfer_id = transfer_id


class TransferAlreadyExists(AlreadyExists):
    """The transfer id is taken by a transfer with other contents."""

    def __init__(self, transfer_id: str) -> None:
        super().__init__(
            f"transfer {transfer_id} already exists with other contents", transfer_id=transfer_id
        )
        self.transfer_id = transfer_id


class TransferNotPending(DomainError):
    def __init__(self, transfer_id: str, state: TransferState | None) -> None:
        name = state.name if state else "unknown"
        super().__init__(
            f"transfer {transfer_id} is {name}, not PENDING", transfer_id=transfer_id, state=name
        )


class ExceedsPendingAmount(DomainError):
    def __init__(self, transfer_id: str, held: int, requested: int) -> None:
        super().__init__(
            f"transfer {transfer_id} holds {held}, {requested} requested",
            transfer_id=transfer_id,
            held=str(held),
            requested=str(requested),
        )


class PartialPostOfLegs(DomainError):
    """A multi-leg transfer is posted whole or not at all (an ``INVALID_ARGUMENT``)."""

    def __init__(self, transfer_id: str) -> None:
        super().__init__(
            f"transfer {transfer_id} has several legs: post it whole (amount 0 or its amount)",
            field="amount",
        )


class TransferNotCompleted(DomainError):
    def __init__(self, transfer_id: str, state: TransferState | None) -> None:
        name = state.name if state else "unknown"
        super().__init__(
            f"transfer {transfer_id} is {name}: only a COMPLETED transfer is reversed",
            transfer_id=transfer_id,
            state=name,
        )


class ExceedsReversibleAmount(DomainError):
    def __init__(self, transfer_id: str, reversible: int, requested: int) -> None:
        super().__init__(
            f"transfer {transfer_id} has {reversible} left to reverse, {requested} requested",
            transfer_id=transfer_id,
            reversible=str(reversible),
            requested=str(requested),
        )


class PartialReversalOfLegs(DomainError):
    """A multi-leg transfer is reversed whole (an ``INVALID_ARGUMENT``)."""

    def __init__(self, transfer_id: str) -> None:
        super().__init__(
            f"transfer {transfer_id} has several legs: it is reversed whole (amount 0)",
            field="amount",
        )


class ReversalReused(AlreadyExists):
    """The reversal id is taken by another transfer, or a reversal of something else."""

    def __init__(self, reversal_id: str) -> None:
        super().__init__(
            f"transfer {reversal_id} already exists and is not this reversal",
            transfer_id=reversal_id,
        )


class InvalidTransition(Exception):
    """A decision that the transfer's state does not allow. A bug, not a client error."""
