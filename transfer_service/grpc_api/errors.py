"""The transfer service's one table from refusals to gRPC codes and reasons.

A failed transfer answers with the account service's refusal: its reason is kept, and the
code follows from the reason as in the account service's own table.
"""

from __future__ import annotations

from grpc import StatusCode

from event_store import StoreUnavailable
from grpc_common.caller import PermissionDenied
from grpc_common.errors import ErrorTable, Refusal
from shared_kernel.errors import InvalidArgument
from transfer_service.application import TransferPending, TransferRefused
from transfer_service.domain import (
    ExceedsPendingAmount,
    ExceedsReversibleAmount,
    PartialPostOfLegs,
    PartialReversalOfLegs,
    ReversalReused,
    TransferAlreadyExists,
    TransferNotCompleted,
    TransferNotFound,
    TransferNotPending,
)

ERRORS = ErrorTable(
    {
        InvalidArgument: Refusal(StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        PartialPostOfLegs: Refusal(StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        PartialReversalOfLegs: Refusal(StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        TransferNotCompleted: Refusal(StatusCode.FAILED_PRECONDITION, "TRANSFER_NOT_COMPLETED"),
        ExceedsReversibleAmount: Refusal(
            StatusCode.FAILED_PRECONDITION, "EXCEEDS_REVERSIBLE_AMOUNT"
        ),
        TransferNotFound: Refusal(StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND"),
        TransferAlreadyExists: Refusal(StatusCode.ALREADY_EXISTS, "TRANSFER_ALREADY_EXISTS"),
        ReversalReused: Refusal(StatusCode.ALREADY_EXISTS, "TRANSFER_ALREADY_EXISTS"),
        TransferNotPending: Refusal(StatusCode.FAILED_PRECONDITION, "TRANSFER_NOT_PENDING"),
        ExceedsPendingAmount: Refusal(StatusCode.FAILED_PRECONDITION, "EXCEEDS_PENDING_AMOUNT"),
        TransferRefused: Refusal(StatusCode.FAILED_PRECONDITION, None),
        TransferPending: Refusal(StatusCode.UNAVAILABLE, "TRANSFER_PENDING"),
        StoreUnavailable: Refusal(StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"),
        PermissionDenied: Refusal(StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    },
    codes_by_reason={
        "ACCOUNT_NOT_FOUND": StatusCode.NOT_FOUND,
        "BALANCE_OUT_OF_RANGE": StatusCode.OUT_OF_RANGE,
        "INVALID_ARGUMENT": StatusCode.INVALID_ARGUMENT,
        "PERMISSION_DENIED": StatusCode.PERMISSION_DENIED,
    },
)
