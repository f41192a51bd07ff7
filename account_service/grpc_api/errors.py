"""The account service's one table from domain refusals to gRPC codes and reasons."""

from __future__ import annotations

from grpc import StatusCode

from account_service import domain
from account_service.mailboxes import ContentionTooHigh
from account_service.watchers import TooManyWatchers
from event_store import StoreUnavailable
from grpc_common.caller import PermissionDenied
from grpc_common.errors import ErrorTable, Refusal
from shared_kernel.errors import DomainError, InvalidArgument


class StepNotRun(DomainError):
    """An ExecuteSteps step sent to run after another one that did not succeed."""

    def __init__(self, after_step_id: int) -> None:
        super().__init__(
            f"not run: step {after_step_id} did not succeed", after_step_id=str(after_step_id)
        )


ERRORS = ErrorTable(
    {
        InvalidArgument: Refusal(StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        domain.AccountNotFound: Refusal(StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
        domain.AccountAlreadyExists: Refusal(StatusCode.ALREADY_EXISTS, "ACCOUNT_ALREADY_EXISTS"),
        domain.ReferenceReused: Refusal(StatusCode.ALREADY_EXISTS, "REFERENCE_REUSED"),
        domain.InsufficientFunds: Refusal(StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"),
        domain.AccountIsClosed: Refusal(StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSED"),
        domain.CurrencyMismatch: Refusal(StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH"),
        domain.AccountNotEmpty: Refusal(StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_EMPTY"),
        domain.ReservationNotFound: Refusal(
            StatusCode.FAILED_PRECONDITION, "RESERVATION_NOT_FOUND"
        ),
        domain.ReservationSettled: Refusal(StatusCode.FAILED_PRECONDITION, "RESERVATION_SETTLED"),
        domain.BalanceOutOfRange: Refusal(StatusCode.OUT_OF_RANGE, "BALANCE_OUT_OF_RANGE"),
        domain.ExceedsHold: Refusal(StatusCode.FAILED_PRECONDITION, "EXCEEDS_PENDING_AMOUNT"),
        domain.EpochFenced: Refusal(StatusCode.ABORTED, "EPOCH_FENCED"),
        StoreUnavailable: Refusal(StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"),
        ContentionTooHigh: Refusal(StatusCode.UNAVAILABLE, "CONTENTION"),
        StepNotRun: Refusal(StatusCode.ABORTED, "STEP_NOT_RUN"),
        PermissionDenied: Refusal(StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
        TooManyWatchers: Refusal(StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS"),
    }
)


def refusal_reason(error: str) -> str:
    """The reason a stored refusal (``StepRefused.error``, a refusal's class name) had."""
    refusal = ERRORS.refusal_for(domain.rebuilt(error, "", {}))
    return refusal.reason if refusal is not None and refusal.reason else error
