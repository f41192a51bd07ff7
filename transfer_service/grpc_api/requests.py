"""TransferService requests as the domain's values: parsed and checked, field by field.

Each function raises ``InvalidArgument`` naming the offending field.
"""

from __future__ import annotations

from bank.v1 import transfer_pb2 as pb
from grpc_common.timestamps import duration_micros
from shared_kernel.errors import InvalidArgument
from shared_kernel.values import parse_amount, parse_id, parse_optional_id
from transfer_service.domain import MAX_LEGS, Leg, TransferRequested, requested

MIN_EXPIRY_MICROS = 1_000_000
MAX_EXPIRY_MICROS = 366 * 86_400 * 1_000_000


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
    return requested(transfer_id, legs, pending=request.pending, expires_after=expires_after)


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
