"""The stored form of transfer events."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transfer_service.codec import decode, encode
from transfer_service.domain import (
    CreditRefused,
    TransferCompleted,
    TransferCredited,
    TransferFailed,
    TransferRequested,
    TransferReserved,
)

EVENTS = [
    TransferRequested("t-1", "a-1", "a-2", 500),
    TransferReserved("EUR"),
    TransferCredited(),
    CreditRefused("CURRENCY_MISMATCH"),
    TransferCompleted(),
    TransferFailed("INSUFFICIENT_FUNDS"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_json(event):
    type_name, data = encode(event)
    assert decode(type_name, json.loads(json.dumps(data))) == event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_type_name_is_the_class_name(event):
    assert encode(event)[0] == type(event).__name__


def test_requested_encodes_its_fields_by_name():
    assert encode(TransferRequested("t-1", "a-1", "a-2", 500)) == (
        "TransferRequested",
        {"transfer_id": "t-1", "from_account_id": "a-1", "to_account_id": "a-2", "amount": 500},
    )


def test_events_without_fields_encode_to_an_empty_dict():
    assert encode(TransferCompleted()) == ("TransferCompleted", {})


def test_decode_unknown_type_is_value_error():
    with pytest.raises(ValueError, match="unknown"):
        decode("TransferTeleported", {})


def test_decode_missing_field_is_value_error():
    with pytest.raises(ValueError):
        decode("TransferReserved", {})


def test_decode_extra_field_is_value_error():
    with pytest.raises(ValueError):
        decode("TransferCompleted", {"note": "x"})


@pytest.mark.parametrize("amount", ["500", 5.0, True, None])
def test_decode_wrongly_typed_field_is_value_error(amount):
    data = {"transfer_id": "t", "from_account_id": "a", "to_account_id": "b", "amount": amount}
    with pytest.raises(ValueError):
        decode("TransferRequested", data)


def test_encode_non_event_is_value_error():
    with pytest.raises(ValueError):
        encode("TransferCompleted")  # type: ignore[arg-type]


@given(
    st.text(),
    st.text(),
    st.text(),
    st.integers(min_value=1, max_value=2**63 - 1),
)
def test_any_requested_event_round_trips(transfer_id, src, dst, amount):
    event = TransferRequested(transfer_id, src, dst, amount)
    type_name, data = encode(event)
    assert decode(type_name, json.loads(json.dumps(data))) == event
