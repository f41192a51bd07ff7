"""Translation from the application's views to bank.v1 messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from account_service import domain
from account_service.views import AccountView, HistoryEntry
from bank.v1 import account_pb2 as pb

_STATUS = {
    domain.AccountStatus.OPEN: pb.ACCOUNT_STATUS_OPEN,
    domain.AccountStatus.CLOSED: pb.ACCOUNT_STATUS_CLOSED,
}
_EVENT_TYPE = {
    domain.AccountOpened: pb.ACCOUNT_EVENT_TYPE_OPENED,
    domain.Deposited: pb.ACCOUNT_EVENT_TYPE_DEPOSITED,
    domain.Withdrawn: pb.ACCOUNT_EVENT_TYPE_WITHDRAWN,
    domain.Reserved: pb.ACCOUNT_EVENT_TYPE_RESERVED,
    domain.ReservationReleased: pb.ACCOUNT_EVENT_TYPE_RESERVATION_RELEASED,
    domain.ReservationCaptured: pb.ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED,
    domain.Credited: pb.ACCOUNT_EVENT_TYPE_CREDITED,
    domain.AccountClosed: pb.ACCOUNT_EVENT_TYPE_CLOSED,
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(at: datetime | None) -> Timestamp | None:
    """As ``Timestamp.FromDatetime`` (naive means UTC), for a fraction of its cost."""
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    delta = at - _EPOCH  # normalised: only days may be negative
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1_000)


def account(view: AccountView) -> pb.Account:
    return pb.Account(
        account_id=view.account_id,
        owner=view.owner,
        currency=view.currency,
        balance=view.balance,
        reserved=view.reserved,
        available=view.available,
        status=_STATUS[view.status],
        version=view.version,
        reservations=[
            pb.Reservation(
                reference=reference, amount=hold.amount, reserved_at=timestamp(hold.reserved_at)
            )
            for reference, hold in view.reservations
        ],
    )


def account_event(entry: HistoryEntry) -> pb.AccountEvent:
    event = entry.event
    return pb.AccountEvent(
        account_id=entry.account_id,
        version=entry.version,
        type=_EVENT_TYPE[type(event)],
        amount=getattr(event, "amount", 0),
        reference=getattr(event, "reference", ""),
        balance_after=entry.balance_after,
        reserved_after=entry.reserved_after,
        occurred_at=timestamp(entry.occurred_at),
    )
