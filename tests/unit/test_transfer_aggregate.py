"""The Transfer aggregate: folding, transitions, idempotent repeats and request validation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared_kernel.errors import AlreadyExists, InvalidArgument
from transfer_service.domain import (
    CreditRefused,
    InvalidTransition,
    Step,
    Transfer,
    TransferAlreadyExists,
    TransferCompleted,
    TransferCredited,
    TransferFailed,
    TransferNotFound,
    TransferRequested,
    TransferReserved,
    TransferState,
)

TID = "11111111-1111-4111-8111-111111111111"
SRC = "22222222-2222-4222-8222-222222222222"
DST = "33333333-3333-4333-8333-333333333333"


def at(n: int) -> datetime:
    return datetime(2024, 1, 1, 0, 0, n, tzinfo=UTC)


def build(*events) -> Transfer:
    return Transfer.from_events(TID, [(e, at(i)) for i, e in enumerate(events)])


REQUESTED = (TransferRequested(TID, SRC, DST, 500),)
RESERVED = (*REQUESTED, TransferReserved("EUR"))
RELEASING = (*RESERVED, CreditRefused("ACCOUNT_CLOSED"))
CREDITED = (*RESERVED, TransferCredited())
COMPLETED = (*CREDITED, TransferCompleted())
FAILED_ON_RESERVE = (*REQUESTED, TransferFailed("INSUFFICIENT_FUNDS"))
FAILED_AFTER_RELEASE = (*RELEASING, TransferFailed("ACCOUNT_CLOSED"))

ALL_HISTORIES = {
    "empty": (),
    "requested": REQUESTED,
    "reserved": RESERVED,
    "releasing": RELEASING,
    "credited": CREDITED,
    "completed": COMPLETED,
    "failed_on_reserve": FAILED_ON_RESERVE,
    "failed_after_release": FAILED_AFTER_RELEASE,
}


# --- empty and from_events ---


def test_empty_transfer_has_no_state_and_version_zero():
    t = Transfer.empty(TID)
    assert t.transfer_id == TID
    assert t.state is None
    assert t.version == 0
    assert t.currency == ""
    assert t.failure_reason == ""
    assert t.created_at is None and t.updated_at is None
    assert not t.is_terminal
    assert t.next_step is None


def test_from_events_folds_fields_version_and_times():
    t = build(*COMPLETED)
    assert (t.transfer_id, t.from_account_id, t.to_account_id, t.amount) == (TID, SRC, DST, 500)
    assert t.currency == "EUR"
    assert t.state is TransferState.COMPLETED
    assert t.version == 4
    assert t.created_at == at(0)
    assert t.updated_at == at(3)
    assert t.failure_reason == ""


def test_apply_without_time_keeps_previous_times():
    t = build(*REQUESTED)
    t.apply(TransferReserved("EUR"))
    assert t.version == 2
    assert t.created_at == at(0)
    assert t.updated_at == at(0)


def test_apply_does_not_validate():
    t = Transfer.empty(TID)
    t.apply(TransferCompleted())
    assert t.state is TransferState.COMPLETED
    assert t.version == 1


def test_apply_rejects_non_events():
    with pytest.raises(TypeError):
        Transfer.empty(TID).apply("TransferCompleted")  # type: ignore[arg-type]


def test_credit_refused_keeps_state_reserved_and_records_reason():
    t = build(*RELEASING)
    assert t.state is TransferState.RESERVED
    assert t.failure_reason == "ACCOUNT_CLOSED"
    assert t.credit_was_refused
    assert not t.is_terminal


def test_failed_records_reason():
    t = build(*FAILED_ON_RESERVE)
    assert t.state is TransferState.FAILED
    assert t.failure_reason == "INSUFFICIENT_FUNDS"
    assert t.is_terminal


# --- next_step and is_terminal ---


@pytest.mark.parametrize(
    ("history", "step"),
    [
        ("empty", None),
        ("requested", Step.RESERVE),
        ("reserved", Step.CREDIT),
        ("releasing", Step.RELEASE),
        ("credited", Step.CAPTURE),
        ("completed", None),
        ("failed_on_reserve", None),
        ("failed_after_release", None),
    ],
)
def test_next_step_follows_the_protocol(history, step):
    assert build(*ALL_HISTORIES[history]).next_step is step


@pytest.mark.parametrize("history", ["completed", "failed_on_reserve", "failed_after_release"])
def test_completed_and_failed_are_terminal(history):
    assert build(*ALL_HISTORIES[history]).is_terminal


@pytest.mark.parametrize("history", ["empty", "requested", "reserved", "releasing", "credited"])
def test_other_states_are_not_terminal(history):
    assert not build(*ALL_HISTORIES[history]).is_terminal


# --- request and matches ---


def test_request_on_new_transfer_returns_requested_event():
    assert Transfer.empty(TID).request(SRC, DST, 500) == [TransferRequested(TID, SRC, DST, 500)]


def test_request_same_contents_again_is_a_no_op():
    assert build(*REQUESTED).request(SRC, DST, 500) == []


def test_request_same_contents_on_terminal_transfer_is_a_no_op():
    assert build(*FAILED_ON_RESERVE).request(SRC, DST, 500) == []


@pytest.mark.parametrize(
    ("src", "dst", "amount"),
    [(SRC, DST, 501), (DST, SRC, 500), (SRC, "44444444-4444-4444-8444-444444444444", 500)],
)
def test_request_other_contents_on_existing_transfer_is_already_exists(src, dst, amount):
    with pytest.raises(TransferAlreadyExists) as info:
        build(*REQUESTED).request(src, dst, amount)
    assert isinstance(info.value, AlreadyExists)
    assert info.value.metadata == {"transfer_id": TID}


@pytest.mark.parametrize("amount", [0, -1])
def test_request_with_non_positive_amount_is_invalid_amount(amount):
    with pytest.raises(InvalidArgument) as info:
        Transfer.empty(TID).request(SRC, DST, amount)
    assert info.value.field == "amount"


def test_request_with_amount_beyond_int64_is_invalid_amount():
    with pytest.raises(InvalidArgument) as info:
        Transfer.empty(TID).request(SRC, DST, 2**63)
    assert info.value.field == "amount"


def test_request_between_the_same_account_is_invalid_target():
    with pytest.raises(InvalidArgument) as info:
        Transfer.empty(TID).request(SRC, SRC, 500)
    assert info.value.field == "to_account_id"
    assert info.value.metadata == {"field": "to_account_id"}


def test_matches_is_true_for_same_request_only():
    t = build(*RESERVED)
    assert t.matches(SRC, DST, 500)
    assert not t.matches(SRC, DST, 499)
    assert not t.matches(DST, SRC, 500)


def test_empty_transfer_matches_nothing():
    assert not Transfer.empty(TID).matches("", "", 0)


# --- legal transitions ---


def test_reserved_from_requested():
    assert build(*REQUESTED).reserved("EUR") == [TransferReserved("EUR")]


def test_failed_from_requested():
    assert build(*REQUESTED).failed("INSUFFICIENT_FUNDS") == [TransferFailed("INSUFFICIENT_FUNDS")]


def test_credited_from_reserved():
    assert build(*RESERVED).credited() == [TransferCredited()]


def test_credit_refused_from_reserved():
    assert build(*RESERVED).credit_refused("CURRENCY_MISMATCH") == [
        CreditRefused("CURRENCY_MISMATCH")
    ]


def test_failed_after_credit_refused():
    assert build(*RELEASING).failed("ACCOUNT_CLOSED") == [TransferFailed("ACCOUNT_CLOSED")]


def test_completed_from_credited():
    assert build(*CREDITED).completed() == [TransferCompleted()]


def test_decisions_do_not_change_the_transfer():
    t = build(*REQUESTED)
    before = build(*REQUESTED)
    t.reserved("EUR")
    t.failed("INSUFFICIENT_FUNDS")
    assert t == before


# --- idempotent repeats ---


@pytest.mark.parametrize(
    ("history", "decide"),
    [
        ("reserved", lambda t: t.reserved("EUR")),
        ("credited", lambda t: t.reserved("EUR")),
        ("completed", lambda t: t.reserved("EUR")),
        ("releasing", lambda t: t.reserved("EUR")),
        ("failed_after_release", lambda t: t.reserved("EUR")),
        ("credited", lambda t: t.credited()),
        ("completed", lambda t: t.credited()),
        ("releasing", lambda t: t.credit_refused("ACCOUNT_CLOSED")),
        ("failed_after_release", lambda t: t.credit_refused("ACCOUNT_CLOSED")),
        ("completed", lambda t: t.completed()),
        ("failed_on_reserve", lambda t: t.failed("INSUFFICIENT_FUNDS")),
        ("failed_after_release", lambda t: t.failed("ACCOUNT_CLOSED")),
    ],
)
def test_repeating_a_recorded_decision_returns_no_events(history, decide):
    assert decide(build(*ALL_HISTORIES[history])) == []


# --- illegal transitions ---


@pytest.mark.parametrize(
    ("history", "decide"),
    [
        # reserved: only from REQUESTED, and never in another currency
        ("empty", lambda t: t.reserved("EUR")),
        ("failed_on_reserve", lambda t: t.reserved("EUR")),
        ("reserved", lambda t: t.reserved("USD")),
        # credited: only from RESERVED without a refusal
        ("empty", lambda t: t.credited()),
        ("requested", lambda t: t.credited()),
        ("releasing", lambda t: t.credited()),
        ("failed_on_reserve", lambda t: t.credited()),
        ("failed_after_release", lambda t: t.credited()),
        # credit_refused: only from RESERVED, before a credit
        ("empty", lambda t: t.credit_refused("ACCOUNT_CLOSED")),
        ("requested", lambda t: t.credit_refused("ACCOUNT_CLOSED")),
        ("credited", lambda t: t.credit_refused("ACCOUNT_CLOSED")),
        ("completed", lambda t: t.credit_refused("ACCOUNT_CLOSED")),
        ("failed_on_reserve", lambda t: t.credit_refused("ACCOUNT_CLOSED")),
        ("releasing", lambda t: t.credit_refused("CURRENCY_MISMATCH")),
        # completed: only from CREDITED
        ("empty", lambda t: t.completed()),
        ("requested", lambda t: t.completed()),
        ("reserved", lambda t: t.completed()),
        ("releasing", lambda t: t.completed()),
        ("failed_on_reserve", lambda t: t.completed()),
        ("failed_after_release", lambda t: t.completed()),
        # failed: from REQUESTED, or from RESERVED after a refused credit
        ("empty", lambda t: t.failed("INSUFFICIENT_FUNDS")),
        ("reserved", lambda t: t.failed("ACCOUNT_CLOSED")),
        ("credited", lambda t: t.failed("ACCOUNT_CLOSED")),
        ("completed", lambda t: t.failed("ACCOUNT_CLOSED")),
        ("failed_on_reserve", lambda t: t.failed("ACCOUNT_NOT_FOUND")),
    ],
)
def test_illegal_transition_raises(history, decide):
    with pytest.raises(InvalidTransition):
        decide(build(*ALL_HISTORIES[history]))


def test_invalid_transition_is_not_a_domain_error():
    from shared_kernel.errors import DomainError

    assert not issubclass(InvalidTransition, DomainError)


def test_transfer_not_found_carries_the_id():
    err = TransferNotFound(TID)
    assert err.metadata == {"transfer_id": TID}
    assert TID in err.message


# --- events ---


def test_events_are_frozen():
    event = TransferReserved("EUR")
    with pytest.raises(AttributeError):
        event.currency = "USD"  # type: ignore[misc]
