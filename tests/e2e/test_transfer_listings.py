"""Metadata on transfers and the filters of ListTransfers, against real processes."""

from __future__ import annotations

import time
import uuid

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import StatusCode

from bank.v1 import transfer_pb2 as tpb
from tests.e2e.conftest import new_account, refusal

pytestmark = pytest.mark.e2e


def create(bank, **fields) -> tpb.Transfer:
    return bank.transfers.CreateTransfer(tpb.CreateTransferRequest(**fields), timeout=30)


def listed(bank, account_id: str, page_size: int = 1000, **filters) -> list[list[str]]:
    """Every page of the listing, as lists of transfer ids."""
    pages, token = [], ""
    while True:
        page = bank.transfers.ListTransfers(
            tpb.ListTransfersRequest(
                account_id=account_id, page_size=page_size, page_token=token, **filters
            )
        )
        pages.append([t.transfer_id for t in page.transfers])
        token = page.next_page_token
        if not token:
            return pages


def flat(pages: list[list[str]]) -> list[str]:
    return [i for page in pages for i in page]


# --------------------------------------------------------------------------- metadata


def test_metadata_is_kept_and_shown_everywhere(bank) -> None:
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    labels = {"invoice": "INV-2024-7", "customer.id": "c-42", "note": "Grüße ✓"}
    made = create(bank, from_account_id=ada, to_account_id=bob, amount=10, metadata=labels)
    assert dict(made.metadata) == labels
    got = bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=made.transfer_id))
    assert dict(got.metadata) == labels
    (first, *_) = bank.transfers.ListTransfers(tpb.ListTransfersRequest(account_id=bob)).transfers
    assert (first.transfer_id, dict(first.metadata)) == (made.transfer_id, labels)


def test_metadata_is_part_of_the_same_request(bank) -> None:
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    transfer_id = str(uuid.uuid4())
    fields = {"transfer_id": transfer_id, "from_account_id": ada, "to_account_id": bob}
    made = create(bank, **fields, amount=10, metadata={"a": "1", "b": "2"})
    again = create(bank, **fields, amount=10, metadata={"b": "2", "a": "1"})
    assert (again.transfer_id, again.state, dict(again.metadata)) == (
        made.transfer_id,
        tpb.TRANSFER_STATE_COMPLETED,
        {"a": "1", "b": "2"},
    )
    for other in ({"a": "1"}, {"a": "1", "b": "3"}, {}):
        code, reason, _ = refusal(
            lambda other=other: create(bank, **fields, amount=10, metadata=other)
        )
        assert (code, reason) == (StatusCode.ALREADY_EXISTS, "TRANSFER_ALREADY_EXISTS"), other
    plain_id = str(uuid.uuid4())
    create(bank, transfer_id=plain_id, from_account_id=ada, to_account_id=bob, amount=1)
    code, reason, _ = refusal(
        lambda: create(
            bank,
            transfer_id=plain_id,
            from_account_id=ada,
            to_account_id=bob,
            amount=1,
            metadata={"late": "label"},
        )
    )
    assert reason == "TRANSFER_ALREADY_EXISTS"


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{n}": "v" for n in range(17)},
        {"": "v"},
        {"k" * 65: "v"},
        {"Upper": "v"},
        {"sp ace": "v"},
        {"k": "v" * 257},
        {"k": "tab\there"},
    ],
)
def test_metadata_beyond_the_rules_is_invalid_argument(bank, metadata) -> None:
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    transfer_id = str(uuid.uuid4())
    code, reason, details = refusal(
        lambda: create(
            bank,
            transfer_id=transfer_id,
            from_account_id=ada,
            to_account_id=bob,
            amount=5,
            metadata=metadata,
        )
    )
    assert (code, reason, details["field"]) == (
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "metadata",
    )
    assert refusal(
        lambda: bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=transfer_id))
    )[1] == ("TRANSFER_NOT_FOUND")


def test_metadata_at_the_limits_is_taken(bank) -> None:
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    labels = {f"{n:02d}-" + "k" * 61: "v" * 256 for n in range(16)}
    assert (
        dict(
            create(bank, from_account_id=ada, to_account_id=bob, amount=1, metadata=labels).metadata
        )
        == labels
    )


def test_metadata_in_a_batch_is_checked_per_item(bank) -> None:
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    items = [
        tpb.CreateTransferRequest(from_account_id=ada, to_account_id=bob, amount=1, metadata=m)
        for m in ({"ok": "yes"}, {"BAD": "key"})
    ]
    results = bank.transfers.CreateTransfers(tpb.CreateTransfersRequest(transfers=items)).results
    assert dict(results[0].transfer.metadata) == {"ok": "yes"}
    assert results[1].error.code == StatusCode.INVALID_ARGUMENT.value[0]


# --------------------------------------------------------------------------- filters


@pytest.fixture
def history(bank) -> tuple[str, list[tpb.Transfer]]:
    """An account with nine transfers, one after the other: completed, failed (too
    large), pending, in turn."""
    ada, bob = new_account(bank, 1_000).account_id, new_account(bank).account_id
    made = []
    for n in range(9):
        fields = {"from_account_id": ada, "to_account_id": bob, "transfer_id": str(uuid.uuid4())}
        if n % 3 == 1:
            assert refusal(lambda f=fields: create(bank, **f, amount=99_999))[1] == (
                "INSUFFICIENT_FUNDS"
            )
            made.append(
                bank.transfers.GetTransfer(
                    tpb.GetTransferRequest(transfer_id=fields["transfer_id"])
                )
            )
        else:
            made.append(create(bank, **fields, amount=10 + n, pending=n % 3 == 2))
        time.sleep(0.002)
    return ada, made


def ids(transfers) -> list[str]:
    return [t.transfer_id for t in transfers]


def test_newest_first_and_oldest_first(bank, history) -> None:
    ada, made = history
    assert listed(bank, ada, 4) == [ids(made[8:4:-1]), ids(made[4:0:-1]), ids(made[:1])]
    assert listed(bank, ada, 4, oldest_first=True) == [ids(made[:4]), ids(made[4:8]), ids(made[8:])]


@pytest.mark.parametrize(
    "state", [tpb.TRANSFER_STATE_COMPLETED, tpb.TRANSFER_STATE_FAILED, tpb.TRANSFER_STATE_PENDING]
)
def test_one_state_only(bank, history, state) -> None:
    ada, made = history
    expected = [t.transfer_id for t in reversed(made) if t.state == state]
    assert len(expected) == 3
    assert flat(listed(bank, ada, 2, state=state)) == expected
    assert flat(listed(bank, ada, 1, state=state, oldest_first=True)) == expected[::-1]


def test_created_between_two_instants_exclusive(bank, history) -> None:
    ada, made = history
    after, before = made[2].created_at, made[6].created_at
    assert flat(listed(bank, ada, 2, created_after=after, created_before=before)) == ids(
        made[5:2:-1]
    )
    assert flat(listed(bank, ada, created_after=after, oldest_first=True)) == ids(made[3:])
    assert flat(listed(bank, ada, created_before=after)) == ids(made[1::-1])
    assert flat(
        listed(
            bank, ada, created_after=after, created_before=before, state=tpb.TRANSFER_STATE_FAILED
        )
    ) == [made[4].transfer_id]
    assert listed(bank, ada, created_after=before, created_before=after) == [[]]


@pytest.mark.parametrize(
    "other",
    [
        {"state": tpb.TRANSFER_STATE_FAILED},
        {"oldest_first": True},
        {"created_after": Timestamp(seconds=1)},
        {"created_before": Timestamp(seconds=4_000_000_000)},
    ],
)
def test_a_page_token_is_good_only_for_its_filters(bank, history, other) -> None:
    ada, _ = history
    first = bank.transfers.ListTransfers(tpb.ListTransfersRequest(account_id=ada, page_size=2))
    assert first.next_page_token
    code, reason, details = refusal(
        lambda: bank.transfers.ListTransfers(
            tpb.ListTransfersRequest(
                account_id=ada, page_size=2, page_token=first.next_page_token, **other
            )
        )
    )
    assert (code, reason, details["field"]) == (
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "page_token",
    )


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"state": 42}, "state"),
        ({"created_after": Timestamp(seconds=0, nanos=-5)}, "created_after"),
        ({"created_before": Timestamp(seconds=-62_135_596_801)}, "created_before"),
    ],
)
def test_bad_filters_are_invalid_argument(bank, filters, field) -> None:
    account_id = new_account(bank).account_id
    code, _, details = refusal(
        lambda: bank.transfers.ListTransfers(
            tpb.ListTransfersRequest(account_id=account_id, **filters)
        )
    )
    assert (code, details["field"]) == (StatusCode.INVALID_ARGUMENT, field)
