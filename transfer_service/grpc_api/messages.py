"""Translation from transfers to bank.v1 messages."""

from __future__ import annotations

from bank.v1 import transfer_pb2 as pb
from grpc_common.timestamps import timestamp
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
    assert t.state is not None
    return pb.Transfer(
        transfer_id=t.transfer_id,
        from_account_id=t.from_account_id,
        to_account_id=t.to_account_id,
        amount=t.amount,
        currency=t.currency,
        state=_STATE[t.state],
        failure_reason=t.failure_reason,
        created_at=timestamp(t.created_at),
        updated_at=timestamp(t.updated_at),
        pending=t.pending,
        expires_at=timestamp(t.expires_at),
        posted_amount=t.posted_amount,
        reverses_transfer_id=t.reverses_transfer_id,
        reversed_amount=t.reversed_amount,
        reason=t.reason,
        metadata=t.metadata,
        legs=[
            pb.Leg(
                from_account_id=leg.from_account_id,
                to_account_id=leg.to_account_id,
                amount=leg.amount,
            )
            for leg in t.legs
        ],
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
