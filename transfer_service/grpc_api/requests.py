"""TransferService requests as the domain's values: parsed and checked, field by field.

Each function raises ``InvalidArgument`` naming the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta

from bank.v1 import transfer_pb2 as pb
from grpc_common.timestamps import duration_micros, parse_timestamp
from shared_kernel.errors import InvalidArgument
from shared_kernel.values import parse_amount, parse_id, parse_optional_id
from transfer_service.domain import (
    MAX_LEGS,
    Leg,
    TransferRequested,
    TransferState,
    micros,
    requested,
)
from transfer_service.listings import TransferQuery

MIN_EXPIRY_MICROS = 1_000_000
MAX_EXPIRY_MICROS = 366 * 86_400 * 1_000_000
MAX_METADATA_ENTRIES = 16
MAX_METADATA_VALUE_LENGTH = 256
_METADATA_KEY = re.compile(r"[a-z0-9_.-]{1,64}")
# TransferState by its bank.v1 number; the numbers are the contract's, so they are fixed.
_STATES = {
    pb.TRANSFER_STATE_REQUESTED: TransferState.REQUESTED,
    pb.TRANSFER_STATE_RESERVED: TransferState.RESERVED,
    pb.TRANSFER_STATE_CREDITED: TransferState.CREDITED,
    pb.TRANSFER_STATE_COMPLETED: TransferState.COMPLETED,
    pb.TRANSFER_STATE_FAILED: TransferState.FAILED,
    pb.TRANSFER_STATE_PENDING: TransferState.PENDING,
    pb.TRANSFER_STATE_VOIDED: TransferState.VOIDED,
    pb.TRANSFER_STATE_EXPIRED: TransferState.EXPIRED,
}


def transfer_request(request: pb.CreateTransferRequest) -> TransferRequested:
    transfer_id = parse_optional_id(request.transfer_id, "transfer_id")
    legs = _legs(request)
    expires_after = 0
    if request.HasField("expires_after"):
        if not request.pending:
            raise InvalidArgument("expires_after", "only a pending transfer expires")
        expires_after = duration_micros(request.expires_after)
        if not MIN_EXPIRY_MICROS <= expires_after <= MAX_EXPIRY_MICROS:
            raise InvalidArgument("expires_after", "must be 1 s to 366 days")
    return requested(
        transfer_id,
        legs,
        pending=request.pending,
        expires_after=expires_after,
        metadata=_metadata(request.metadata),
    )


def _metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    if not metadata:
        return {}
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument("metadata", f"at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            raise InvalidArgument("metadata", "keys are 1-64 characters of a-z, 0-9, _ . -")
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            raise InvalidArgument(
                "metadata", f"values are at most {MAX_METADATA_VALUE_LENGTH} characters"
            )
        if not value.isprintable():
            raise InvalidArgument("metadata", "values must not contain control characters")
    # Sorted: one set of labels is stored alike however the client ordered it.
    return dict(sorted(metadata.items()))


def transfer_query(request: pb.ListTransfersRequest) -> TransferQuery:
    state = None
    if request.state:
        if request.state not in _STATES:
            raise InvalidArgument("state", "not a TransferState")
        state = _STATES[request.state]
    created_after = created_before = None
    if request.HasField("created_after"):
        created_after = parse_timestamp(request.created_after, "created_after")
    if request.HasField("created_before"):
        created_before = parse_timestamp(request.created_before, "created_before")
        if request.created_before.nanos % 1_000:
            # Kept to the microsecond, like the times of transfers: a part of one left
            # out would leave out a transfer created within it.
            created_before += timedelta(microseconds=1)
    return TransferQuery(
        parse_id(request.account_id, "account_id"),
        state=state,
        created_after=created_after,
        created_before=created_before,
        oldest_first=request.oldest_first,
    )


def _legs(request: pb.CreateTransferRequest) -> list[Leg]:
    if not request.legs:
        source = parse_id(request.from_account_id, "from_account_id")
        target = parse_id(request.to_account_id, "to_account_id")
        if source == target:
            raise InvalidArgument("to_account_id", "must differ from from_account_id")
        return [Leg(source, target, parse_amount(request.amount))]
    if request.from_account_id or request.to_account_id or request.amount:
        raise InvalidArgument(
            "legs", "with legs, from_account_id, to_account_id and amount must be empty"
        )
    if len(request.legs) > MAX_LEGS:
        raise InvalidArgument("legs", f"a transfer has 1 to {MAX_LEGS} legs")
    legs = []
    for leg in request.legs:
        try:
            source = parse_id(leg.from_account_id, "legs")
            target = parse_id(leg.to_account_id, "legs")
            amount = parse_amount(leg.amount, "legs")
        except InvalidArgument as exc:
            raise InvalidArgument("legs", f"a leg's {exc.message.partition(': ')[2]}") from None
        if source == target:
            raise InvalidArgument("legs", "a leg's target must differ from its source")
        legs.append(Leg(source, target, amount))
    return legs


def listing(query: TransferQuery) -> str:
    """The name page tokens of this listing carry: the account and every filter, so a
    token is good only for the listing that issued it."""
    if query == TransferQuery(query.account_id):
        return f"transfers:{query.account_id}"  # as tokens were before there were filters
    state = query.state.value if query.state is not None else ""
    times = [
        micros(t) if t is not None else "" for t in (query.created_after, query.created_before)
    ]
    order = "oldest" if query.oldest_first else "newest"
    return f"transfers:{query.account_id}:{state}:{times[0]}:{times[1]}:{order}"


def post_amount(amount: int) -> int:
    if amount < 0:
        raise InvalidArgument("amount", "must not be negative (0: the whole hold)")
    return amount


MAX_REASON_LENGTH = 200


def reversal_amount(amount: int) -> int:
    if amount < 0:
        raise InvalidArgument("amount", "must not be negative (0: all that is left)")
    return amount


def reversal_reason(reason: str) -> str:
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidArgument("reason", f"longer than {MAX_REASON_LENGTH} characters")
    if not reason.isprintable():
        raise InvalidArgument("reason", "must not contain control characters")
    return reason
