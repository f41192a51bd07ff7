"""Translation from transfers to bank.v1 messages."""

from __future__ import annotations

from bank.v1 import transfer_pb2 as pb
from grpc_common.timestamps import set_timestamp, timestamp
from transfer_service.application import Unfinished
from transfer_service.domain import Transfer, TransferState

_STATE = {
    TransferState.REQUESTED: pb.TRANSFER_STATE_REQUESTED,
    TransferState.RESERVED: pb.TRANSFER_STATE_RESERVED,
    TransferState.CREDITED: pb.TRANSFER_STATE_CREDITED,
    TransferState.COMPLETED: pb.TRANSFER_STATE_COMPLETED,
    TransferState.FAILED: pb.TRANSFER_STATE_FAILED,
    TransferState.PENDING: pb.TRANSFER_STATE_PENDING,
    TransferState.VOIDED: pb.TRANSFER_STATE_VOIDED,
    TransferState.EXPIRED: pb.TRANSFER_STATE_EXPIRED,
}


def transfer(t: Transfer) -> pb.Transfer:
    message = pb.Transfer()
    fill_transfer(message, t)
    return message


def fill_transfer(message: pb.Transfer, t: Transfer) -> None:
    """Sets ``message`` (empty) to ``t``, in place: a message, map or list given to a
    constructor is copied, field by field, in Python."""
    assert t.state is not None
    message.transfer_id = t.transfer_id
    message.from_account_id = t.from_account_id
    message.to_account_id = t.to_account_id
    message.amount = t.amount
    message.currency = t.currency
    message.state = _STATE[t.state]
    message.failure_reason = t.failure_reason
    set_timestamp(message.created_at, t.created_at)
    set_timestamp(message.updated_at, t.updated_at)
    message.pending = t.pending
    set_timestamp(message.expires_at, t.expires_at)
    message.posted_amount = t.posted_amount
    message.reverses_transfer_id = t.reverses_transfer_id
    message.reversed_amount = t.reversed_amount
    message.reason = t.reason
    if t.metadata:
        message.metadata.update(t.metadata)
    legs = message.legs
    for leg in t.legs:
        legs.add(
            from_account_id=leg.from_account_id, to_account_id=leg.to_account_id, amount=leg.amount
        )


def unfinished(entry: Unfinished) -> pb.UnfinishedTransfer:
    retry = entry.retry
    return pb.UnfinishedTransfer(
        transfer=transfer(entry.transfer),
        step=entry.step,
        attempts=retry.attempts if retry else 0,
        last_error=retry.last_error if retry else "",
        last_attempt_at=timestamp(retry.last_attempt_at) if retry else None,
    )
