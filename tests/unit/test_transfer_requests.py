"""TransferService requests as the domain's values: metadata on transfers, and the filters
of ListTransfers with the listing name their page tokens are bound to."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from bank.v1 import transfer_pb2 as pb
from shared_kernel.errors import InvalidArgument
from transfer_service.domain import TransferState
from transfer_service.grpc_api import requests
from transfer_service.listings import TransferQuery

SRC = "22222222-2222-4222-8222-222222222222"
DST = "33333333-3333-4333-8333-333333333333"


def create(metadata: dict[str, str]) -> pb.CreateTransferRequest:
    return pb.CreateTransferRequest(
        from_account_id=SRC, to_account_id=DST, amount=5, metadata=metadata
    )


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"order": "42"},
        {"a": ""},
        {"k" * 64: "v" * 256},
        {"invoice.id": "INV-7", "batch_no": "3", "x-y": "Grüße, 東京 ✓"},
        {f"key{n}": str(n) for n in range(16)},
    ],
)
def test_metadata_within_the_rules_is_kept(metadata: dict[str, str]) -> None:
    assert requests.transfer_request(create(metadata)).metadata == metadata


@pytest.mark.parametrize(
    "metadata",
    [
        {f"key{n}": str(n) for n in range(17)},
        {"": "empty key"},
        {"k" * 65: "v"},
        {"Order": "upper case"},
        {"with space": "v"},
        {"ключ": "v"},
        {"order": "v" * 257},
        {"order": "line\nbreak"},
        {"order": "\x00"},
    ],
)
def test_metadata_beyond_the_rules_is_refused_naming_the_field(metadata: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        requests.transfer_request(create(metadata))
    assert refused.value.metadata == {"field": "metadata"}


def test_the_same_labels_in_another_order_are_the_same_request() -> None:
    one = requests.transfer_request(
        pb.CreateTransferRequest(
            transfer_id=SRC,
            from_account_id=SRC,
            to_account_id=DST,
            amount=5,
            metadata={"a": "1", "b": "2"},
        )
    )
    two = requests.transfer_request(
        pb.CreateTransferRequest(
            transfer_id=SRC,
            from_account_id=SRC,
            to_account_id=DST,
            amount=5,
            metadata={"b": "2", "a": "1"},
        )
    )
    assert one == two


def stamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def test_the_filters_of_a_listing_become_its_query() -> None:
    query = requests.transfer_query(
        pb.ListTransfersRequest(
            account_id=SRC.upper(),
            state=pb.TRANSFER_STATE_FAILED,
            created_after=stamp(1_700_000_000),
            created_before=stamp(1_700_000_100),
            oldest_first=True,
        )
    )
    assert query == TransferQuery(
        SRC,
        state=TransferState.FAILED,
        created_after=datetime.fromtimestamp(1_700_000_000, UTC),
        created_before=datetime.fromtimestamp(1_700_000_100, UTC),
        oldest_first=True,
    )


def test_a_bound_before_within_a_microsecond_keeps_that_microsecond() -> None:
    query = requests.transfer_query(
        pb.ListTransfersRequest(account_id=SRC, created_before=stamp(10, 1_500))
    )
    # 10 s + 1.5 µs: a transfer created at 10 s + 1 µs is before it.
    assert query.created_before == datetime.fromtimestamp(10, UTC).replace(microsecond=2)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListTransfersRequest(account_id=SRC, state=99), "state"),
        (pb.ListTransfersRequest(account_id=SRC, created_after=stamp(0, -1)), "created_after"),
        (
            pb.ListTransfersRequest(account_id=SRC, created_before=stamp(300_000_000_000)),
            "created_before",
        ),
        (pb.ListTransfersRequest(account_id="nope"), "account_id"),
    ],
)
def test_bad_filters_are_refused_naming_the_field(
    request_: pb.ListTransfersRequest, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        requests.transfer_query(request_)
    assert refused.value.metadata == {"field": field}


def test_every_filter_is_part_of_the_listing_name() -> None:
    base = TransferQuery(SRC)
    variants = [
        base,
        TransferQuery(DST),
        TransferQuery(SRC, state=TransferState.FAILED),
        TransferQuery(SRC, state=TransferState.COMPLETED),
        TransferQuery(SRC, created_after=datetime.fromtimestamp(1, UTC)),
        TransferQuery(SRC, created_after=datetime.fromtimestamp(2, UTC)),
        TransferQuery(SRC, created_before=datetime.fromtimestamp(1, UTC)),
        TransferQuery(SRC, oldest_first=True),
    ]
    names = [requests.listing(query) for query in variants]
    assert len(set(names)) == len(names)
    assert requests.listing(base) == f"transfers:{SRC}"  # the unfiltered name of old
