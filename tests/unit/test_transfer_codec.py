"""The stored form of transfer events."""

from __future__ import annotations

import json

import pytest

from transfer_service.codec import decode, encode
from transfer_service.domain import (
    EVENT_CLASSES,
    HoldExpired,
    Leg,
    PostRequested,
    ReversalReserved,
    ReversalSettled,
    TransferCompleted,
    TransferCredited,
    TransferExpired,
    TransferFailed,
    TransferRefused,
    TransferRequested,
    TransferReserved,
    TransferVoided,
    VoidRequested,
    requested,
)

A, B, C = (
    "22222222-2222-4222-8222-222222222222",
    "33333333-3333-4333-8333-333333333333",
    "44444444-4444-4444-8444-444444444444",
)

EVENTS = [
    TransferRequested("t-1", "a-1", "a-2", 500),
    requested(
        "t-2",
        [Leg(A, B, 5), Leg(A, C, 1)],
        pending=True,
        expires_after=3_600_000_000,
        metadata={"order": "42"},
    ),
    TransferReserved("EUR"),
    PostRequested(300),
    VoidRequested(),
    HoldExpired(),
    TransferCredited(),
    TransferRefused("CURRENCY_MISMATCH", "hold", 2),
    TransferCompleted(),
    TransferFailed("INSUFFICIENT_FUNDS"),
    TransferVoided(),
    TransferExpired(),
    ReversalReserved("r-1", 25),
    ReversalSettled("r-1", True),
]


def test_every_event_type_is_covered():
    assert {type(e) for e in EVENTS} == set(EVENT_CLASSES)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_json(event):
    type_name, data = encode(event)
    assert decode(type_name, json.loads(json.dumps(data))) == event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_type_name_is_the_class_name(event):
    assert encode(event)[0] == type(event).__name__


def test_a_simple_request_is_stored_as_it_always_was():
    assert encode(TransferRequested("t-1", "a-1", "a-2", 500)) == (
        "TransferRequested",
        {"transfer_id": "t-1", "from_account_id": "a-1", "to_account_id": "a-2", "amount": 500},
    )


def test_a_refused_credit_stored_under_its_old_name_still_reads():
    assert decode("CreditRefused", {"reason": "ACCOUNT_CLOSED"}) == TransferRefused(
        "ACCOUNT_CLOSED", "credit", 0
    )


def test_events_without_fields_encode_to_an_empty_dict():
    assert encode(TransferCompleted()) == ("TransferCompleted", {})


@pytest.mark.parametrize(
    ("type_name", "data"),
    [
        ("Nope", {}),
        ("TransferReserved", {}),
        ("TransferReserved", {"currency": 1}),
        ("TransferReserved", {"currency": "EUR", "extra": 1}),
        (
            "TransferRequested",
            {"transfer_id": "t", "from_account_id": "a", "to_account_id": "b", "amount": True},
        ),
        ("PostRequested", {"amount": "5"}),
        ("TransferReserved", ["EUR"]),
    ],
)
def test_damaged_events_are_refused(type_name, data):
    with pytest.raises(ValueError):
        decode(type_name, data)


def test_encoding_a_non_event_is_refused():
    with pytest.raises(ValueError):
        encode("TransferCompleted")  # type: ignore[arg-type]
