"""Translation from the application's views to bank.v1 messages, and of the requests'
parts that are more than one field."""

from __future__ import annotations

from datetime import datetime

from account_service import domain
from account_service.grpc_api.errors import refusal_reason
from account_service.views import AccountView, HistoryEntry
from bank.v1 import account_pb2 as pb
from grpc_common.timestamps import parse_timestamp, set_timestamp, timestamp
from shared_kernel.errors import InvalidArgument

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
    domain.OverdraftLimitSet: pb.ACCOUNT_EVENT_TYPE_OVERDRAFT_LIMIT_SET,
    domain.StepRefused: pb.ACCOUNT_EVENT_TYPE_STEP_REFUSED,
    domain.CreditHeld: pb.ACCOUNT_EVENT_TYPE_CREDIT_HELD,
    domain.CreditConfirmed: pb.ACCOUNT_EVENT_TYPE_CREDIT_CONFIRMED,
    domain.CreditCancelled: pb.ACCOUNT_EVENT_TYPE_CREDIT_CANCELLED,
}


def account(view: AccountView) -> pb.Account:
    message = pb.Account()
    fill_account(message, view)
    return message


def fill_account(message: pb.Account, view: AccountView) -> None:
    """Sets ``message`` (empty) to ``view``, field by field: a keyword-built message copies
    every sub-message it is given, which a step's outcome paid per step."""
    message.account_id = view.account_id
    message.owner = view.owner
    message.currency = view.currency
    message.balance = view.balance
    message.reserved = view.reserved
    message.available = view.available
    message.status = _STATUS[view.status]
    message.version = view.version
    message.pending_credits = view.pending_credits
    message.overdraft_limit = view.overdraft_limit
    for reference, hold in view.reservations:
        reservation = message.reservations.add(reference=reference, amount=hold.amount)
        set_timestamp(reservation.reserved_at, hold.reserved_at)
        set_timestamp(reservation.expires_at, hold.expires_at)


def account_event(entry: HistoryEntry) -> pb.AccountEvent:
    event = entry.event
    message = pb.AccountEvent(
        account_id=entry.account_id,
        version=entry.version,
        type=_EVENT_TYPE[type(event)],
        amount=getattr(event, "amount", getattr(event, "limit", 0)),
        reference=getattr(event, "reference", ""),
        balance_after=entry.balance_after,
        reserved_after=entry.reserved_after,
        occurred_at=timestamp(entry.occurred_at),
    )
    if isinstance(event, domain.StepRefused):
        message.reason = refusal_reason(event.error)
        message.step = event.step
    return message


def as_of(request: pb.GetAccountRequest) -> dict[str, int | datetime] | None:
    """When a GetAccount asks for the account: ``version=`` or ``instant=``; None for now."""
    if request.as_of_version < 0:
        raise InvalidArgument("as_of_version", "must not be negative (0: the present)")
    if request.HasField("as_of_time"):
        if request.as_of_version:
            raise InvalidArgument("as_of_time", "give as_of_version or as_of_time, not both")
        return {"instant": parse_timestamp(request.as_of_time, "as_of_time")}
    if request.as_of_version:
        return {"version": request.as_of_version}
    return None
