"""The reservation protocol's steps as requested: each one parsed into the account it acts
on and the decision it asks of that account."""

from __future__ import annotations

from operator import methodcaller

from account_service.mailboxes import Decision
from account_service.views import AccountView
from bank.v1 import account_pb2 as pb
from shared_kernel.values import parse_amount, parse_currency, parse_id, parse_key


def reserve(request: pb.ReserveRequest) -> tuple[str, Decision]:
    account_id = parse_id(request.account_id, "account_id")
    reference = parse_key(request.reference, "reference")
    amount = parse_amount(request.amount)
    return account_id, methodcaller("reserve", amount, reference)


def credit(request: pb.CreditRequest) -> tuple[str, Decision]:
    account_id = parse_id(request.account_id, "account_id")
    reference = parse_key(request.reference, "reference")
    amount = parse_amount(request.amount)
    currency = parse_currency(request.currency)
    return account_id, methodcaller("credit", amount, reference, currency)


def capture(request: pb.CaptureRequest) -> tuple[str, Decision]:
    account_id = parse_id(request.account_id, "account_id")
    return account_id, methodcaller("capture", parse_key(request.reference, "reference"))


def release(request: pb.ReleaseRequest) -> tuple[str, Decision]:
    account_id = parse_id(request.account_id, "account_id")
    return account_id, methodcaller("release", parse_key(request.reference, "reference"))


# By the name of a Step's action.
STEPS = {"reserve": reserve, "credit": credit, "capture": capture, "release": release}


def decision_after(step: pb.Step, kind: str, before: AccountView | None) -> Decision:
    """A step's decision in a sequence; a credit without a currency takes the one of the
    account the step before it left (as a follower started step by step does)."""
    if kind == "credit" and before is not None and not step.credit.currency:
        step.credit.currency = before.currency
    return STEPS[kind](getattr(step, kind))[1]
