"""The stored form of account events: type name plus JSON object, and back."""

from __future__ import annotations

import json
import typing
from datetime import datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from account_service import codec
from account_service.domain import (
    AccountClosed,
    AccountEvent,
    AccountOpened,
    CreditCancelled,
    CreditConfirmed,
    Credited,
    CreditHeld,
    Deposited,
    OverdraftLimitSet,
    ReservationCaptured,
    ReservationReleased,
    Reserved,
    StepRefused,
    Withdrawn,
)
from grpc_common.timestamps import timestamp
from shared_kernel.values import INT64_MAX

ACCOUNT_ID = "6f1c3a52-8d0e-4f57-9a35-1b2c3d4e5f60"

EVENTS = [
    AccountOpened(ACCOUNT_ID, "Ada Lovelace", "EUR"),
    Deposited(INT64_MAX, "req-1"),
    Withdrawn(1, "req-2"),
    Reserved(250, "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
    ReservationReleased(250, "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
    ReservationCaptured(250, "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
    Credited(99, "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
    Reserved(250, "7c9e6679-7425-40de-944b-e07fc1f90ae7", 3, 1_767_225_600_000_000),
    CreditHeld(80, "7c9e6679-7425-40de-944b-e07fc1f90ae7", 2),
    CreditConfirmed(80, "7c9e6679-7425-40de-944b-e07fc1f90ae7", 2),
    CreditCancelled(80, "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
    StepRefused(
        "reserve",
        500,
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "InsufficientFunds",
        "account has 10 available, 500 requested",
        {"available": "10", "requested": "500"},
        1,
    ),
    OverdraftLimitSet(10_000, "limit-1"),
    AccountClosed(),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_json(event):
    type_name, data = codec.encode(event)
    stored = json.loads(json.dumps(data))
    assert codec.decode(type_name, stored) == event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_type_name_is_the_class_name(event):
    assert codec.encode(event)[0] == type(event).__name__


def test_every_event_type_is_covered():
    assert {type(e) for e in EVENTS} == set(typing.get_args(AccountEvent))


def test_encoded_data_holds_exactly_the_event_fields():
    assert codec.encode(Deposited(5, "r")) == ("Deposited", {"amount": 5, "reference": "r"})
    assert codec.encode(AccountClosed()) == ("AccountClosed", {})
    assert codec.encode(AccountOpened(ACCOUNT_ID, "o", "USD")) == (
        "AccountOpened",
        {"account_id": ACCOUNT_ID, "owner": "o", "currency": "USD"},
    )


def test_unknown_type_is_a_value_error():
    with pytest.raises(ValueError, match="unknown"):
        codec.decode("Teleported", {"amount": 5, "reference": "r"})


def test_missing_field_is_a_value_error():
    with pytest.raises(ValueError, match="reference"):
        codec.decode("Deposited", {"amount": 5})


@pytest.mark.parametrize(
    "data",
    [
        {"amount": "5", "reference": "r"},
        {"amount": 5.0, "reference": "r"},
        {"amount": True, "reference": "r"},
        {"amount": None, "reference": "r"},
        {"amount": 5, "reference": 7},
    ],
)
def test_field_of_wrong_type_is_a_value_error(data):
    with pytest.raises(ValueError):
        codec.decode("Deposited", data)


def test_data_that_is_not_an_object_is_a_value_error():
    with pytest.raises(ValueError):
        codec.decode("Deposited", [5, "r"])  # type: ignore[arg-type]


def test_unknown_keys_are_ignored():
    assert codec.decode("Deposited", {"amount": 5, "reference": "r", "note": "x"}) == Deposited(
        5, "r"
    )


def test_encoding_something_else_is_a_type_error():
    with pytest.raises(TypeError):
        codec.encode(object())  # type: ignore[arg-type]


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.none() | st.timezones(),
    )
)
def test_timestamps_are_what_protobuf_makes_of_the_datetime(at):
    expected = Timestamp()
    expected.FromDatetime(at)
    assert timestamp(at) == expected


def test_events_stored_before_the_epoch_field_existed_still_decode():
    assert codec.decode("Reserved", {"amount": 5, "reference": "r"}) == Reserved(5, "r", 0, 0)
    assert codec.decode("Credited", {"amount": 5, "reference": "r"}) == Credited(5, "r")


def test_a_stored_refusal_keeps_its_details():
    (refused,) = [e for e in EVENTS if isinstance(e, StepRefused)]
    _, data = codec.encode(refused)
    assert data["details"] == {"available": "10", "requested": "500"}
    assert data["error"] == "InsufficientFunds"
