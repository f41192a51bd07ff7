"""The reservation protocol's steps as requested: each one parsed into the account it acts
on and the decision it asks of that account."""

from __future__ import annotations

from operator import methodcaller

from google.protobuf.timestamp_pb2 import Timestamp

from account_service.domain import Account
from account_service.mailboxes import Decision
from account_service.views import AccountView
from bank.v1 import account_pb2 as pb
from grpc_common.caller import owned_by
from grpc_common.timestamps import parse_timestamp
from shared_kernel.errors import InvalidArgument
from shared_kernel.values import INT64_MAX, parse_amount, parse_currency, parse_id, parse_key


def _epoch(value: int) -> int:
    if value > INT64_MAX:
        raise InvalidArgument("epoch", "must fit in int64")
    return value


def _micros(timestamp: Timestamp) -> int:
    # Within what a Timestamp may hold first: a time past year 9999 is no time at all.
    parse_timestamp(timestamp, "expires_at")
    micros = timestamp.seconds * 1_000_000 + timestamp.nanos // 1_000
    if micros <= 0:
        raise InvalidArgument("expires_at", "must be after 1970")
    return micros


def _account_and_reference(request) -> tuple[str, str]:
    return parse_id(request.account_id, "account_id"), parse_key(request.reference, "reference")


def reserve(request: pb.ReserveRequest) -> tuple[str, Decision]:
    account_id, reference = _account_and_reference(request)
    amount = parse_amount(request.amount)
    currency = parse_currency(request.currency) if request.currency else ""
    expires_at = _micros(request.expires_at) if request.HasField("expires_at") else 0
    epoch = _epoch(request.epoch)
    decision = methodcaller("reserve", amount, reference, currency, epoch, expires_at)
    # The owner the transfer's caller is bound to: only a reservation caller can set it.
    return account_id, owned_by(request.owner, decision, _owner)


def _owner(account: Account) -> str:
    return account.owner


def credit(request: pb.CreditRequest) -> tuple[str, Decision]:
    account_id, reference = _account_and_reference(request)
    amount = parse_amount(request.amount)
    currency = parse_currency(request.currency)
    return account_id, methodcaller("credit", amount, reference, currency, _epoch(request.epoch))


def hold_credit(request: pb.HoldCreditRequest) -> tuple[str, Decision]:
    account_id, reference = _account_and_reference(request)
    amount = parse_amount(request.amount)
    currency = parse_currency(request.currency)
    epoch = _epoch(request.epoch)
    return account_id, methodcaller("hold_credit", amount, reference, currency, epoch)


def capture(request: pb.CaptureRequest) -> tuple[str, Decision]:
    account_id, reference = _account_and_reference(request)
    if request.amount < 0:
        raise InvalidArgument("amount", "must not be negative (0: the whole hold)")
    return account_id, methodcaller("capture", reference, request.amount, _epoch(request.epoch))


def release(request: pb.ReleaseRequest) -> tuple[str, Decision]:
    account_id, reference = _account_and_reference(request)
    return account_id, methodcaller("release", reference, _epoch(request.epoch))


def confirm_credit(request: pb.ConfirmCreditRequest) -> tuple[str, Decision]:
    account_id, reference = _account_and_reference(request)
    return account_id, methodcaller("confirm_credit", reference, _epoch(request.epoch))


def cancel_credit(request: pb.CancelCreditRequest) -> tuple[str, Decision]:
    account_id, reference = _account_and_reference(request)
    return account_id, methodcaller("cancel_credit", reference, _epoch(request.epoch))


# By the name of a Step's action.
STEPS = {
    "reserve": reserve,
    "credit": credit,
    "hold_credit": hold_credit,
    "capture": capture,
    "release": release,
    "confirm_credit": confirm_credit,
    "cancel_credit": cancel_credit,
}
# Steps that may take their currency from the step before them.
_TAKE_CURRENCY = ("reserve", "credit", "hold_credit")


def fill_currency(step: pb.Step, kind: str, currency: str) -> None:
    """A step without a currency of its own, run after another, takes the currency of the
    account that one answered with."""
    if kind in _TAKE_CURRENCY and currency:
        request = getattr(step, kind)
        if not request.currency:
            request.currency = currency


def decision_after(step: pb.Step, kind: str, before: AccountView | None) -> Decision:
    """A step's decision in a sequence, after the state the step before it left."""
    if before is not None:
        fill_currency(step, kind, before.currency)
    return STEPS[kind](getattr(step, kind))[1]
