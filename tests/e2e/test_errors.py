"""Every row of the contract's error table, with its ErrorInfo, against real processes.

Each refusal is also checked to have stored nothing: the account's version is unchanged.
"""

from __future__ import annotations

import uuid

import pytest
from grpc import RpcError, StatusCode

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from tests.e2e.conftest import refusal

INT64_MAX = 2**63 - 1


def _version(bank, account_id: str) -> int:
    return bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account_id)).version


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (apb.GetAccountRequest(account_id=""), "account_id"),
        (apb.GetAccountRequest(account_id="not-a-uuid"), "account_id"),
        (apb.GetAccountRequest(account_id="x" * 4_000), "account_id"),
    ],
)
def test_malformed_account_id_is_invalid_argument(bank, request_, field):
    code, reason, metadata = refusal(lambda: bank.accounts.GetAccount(request_))
    assert (code, reason, metadata["field"]) == (
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        field,
    )


@pytest.mark.parametrize("amount", [0, -1, -(2**63)])
def test_amount_not_above_zero_is_invalid_argument(bank, open_account, amount):
    account = open_account(10)
    code, reason, metadata = refusal(
        lambda: bank.accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=amount, request_id="r")
        )
    )
    assert (code, reason, metadata["field"]) == (
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "amount",
    )
    assert _version(bank, account.account_id) == account.version


@pytest.mark.parametrize(
    ("request_id", "why"),
    [("", "missing"), ("x" * 129, "too long"), ("caf\u00e9", "not ASCII"), ("a\nb", "control")],
)
def test_bad_request_id_is_invalid_argument(bank, open_account, request_id, why):
    account = open_account()
    code, _, metadata = refusal(
        lambda: bank.accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=1, request_id=request_id)
        )
    )
    assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "request_id"), why


@pytest.mark.parametrize("currency", ["", "eur", "EURO", "E1R"])
def test_bad_currency_is_invalid_argument(bank, currency):
    code, _, metadata = refusal(
        lambda: bank.accounts.OpenAccount(apb.OpenAccountRequest(owner="Ada", currency=currency))
    )
    assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "currency")


@pytest.mark.parametrize(
    ("currency", "why"),
    [("XYZ", "is not an ISO 4217 currency code"), ("XAU", "has no minor unit")],
)
def test_a_code_outside_iso_4217_is_invalid_argument(bank, currency, why):
    code, reason, metadata = refusal(
        lambda: bank.accounts.OpenAccount(apb.OpenAccountRequest(owner="Ada", currency=currency))
    )
    assert (code, reason, metadata["field"]) == (
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "currency",
    )
    with pytest.raises(RpcError) as caught:
        bank.accounts.OpenAccount(apb.OpenAccountRequest(owner="Ada", currency=currency))
    assert why in caught.value.details()


@pytest.mark.parametrize("currency", ["EUR", "USD", "JPY"])
def test_iso_4217_currencies_open_accounts(bank, currency):
    account = bank.accounts.OpenAccount(apb.OpenAccountRequest(owner="Ada", currency=currency))
    assert account.currency == currency


def test_same_source_and_target_is_invalid_argument(bank, open_account):
    account = open_account(10)
    code, _, metadata = refusal(
        lambda: bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=account.account_id, to_account_id=account.account_id, amount=1
            )
        )
    )
    assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "to_account_id")
    assert _version(bank, account.account_id) == account.version


def test_negative_page_size_is_invalid_argument(bank, open_account):
    account = open_account()
    code, _, metadata = refusal(
        lambda: bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=account.account_id, page_size=-1)
        )
    )
    assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "page_size")
    code, _, metadata = refusal(
        lambda: bank.transfers.ListTransfers(
            tpb.ListTransfersRequest(account_id=account.account_id, page_size=-1)
        )
    )
    assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "page_size")


def test_page_size_above_the_maximum_means_the_maximum(bank, open_account):
    account = open_account()
    page = bank.accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=account.account_id, page_size=2**31 - 1)
    )
    assert len(page.events) == 1 and page.next_page_token == ""


def test_page_token_the_server_did_not_issue_is_invalid_argument(bank, open_account):
    account, other = open_account(), open_account()
    for n in range(3):
        bank.accounts.Deposit(
            apb.DepositRequest(account_id=other.account_id, amount=1, request_id=str(n))
        )
    foreign = bank.accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=other.account_id, page_size=1)
    ).next_page_token
    assert foreign
    for token in ["garbage", foreign, foreign[:-2] + "AA"]:
        code, _, metadata = refusal(
            lambda token=token: bank.accounts.ListAccountEvents(
                apb.ListAccountEventsRequest(account_id=account.account_id, page_token=token)
            )
        )
        assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "page_token")
    code, _, _ = refusal(
        lambda: bank.transfers.ListTransfers(
            tpb.ListTransfersRequest(account_id=other.account_id, page_token=foreign)
        )
    )
    assert code == StatusCode.INVALID_ARGUMENT


def test_unknown_account_is_not_found(bank):
    unknown = str(uuid.uuid4())
    for call in [
        lambda: bank.accounts.GetAccount(apb.GetAccountRequest(account_id=unknown)),
        lambda: bank.accounts.Deposit(
            apb.DepositRequest(account_id=unknown, amount=1, request_id="r")
        ),
        lambda: bank.accounts.ListAccountEvents(apb.ListAccountEventsRequest(account_id=unknown)),
        lambda: next(iter(bank.accounts.WatchAccount(apb.WatchAccountRequest(account_id=unknown)))),
    ]:
        code, reason, _ = refusal(call)
        assert (code, reason) == (StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


def test_unknown_transfer_is_not_found(bank):
    code, reason, _ = refusal(
        lambda: bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=str(uuid.uuid4())))
    )
    assert (code, reason) == (StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND")


@pytest.mark.parametrize("missing", ["from", "to"])
def test_transfer_with_an_unknown_account_is_not_found_and_recorded_failed(
    bank, open_account, missing
):
    known = open_account(100)
    unknown = str(uuid.uuid4())
    source, target = (
        (unknown, known.account_id) if missing == "from" else (known.account_id, unknown)
    )
    transfer_id = str(uuid.uuid4())
    code, reason, _ = refusal(
        lambda: bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                transfer_id=transfer_id, from_account_id=source, to_account_id=target, amount=10
            )
        )
    )
    assert (code, reason) == (StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    stored = bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=transfer_id))
    assert (stored.state, stored.failure_reason) == (tpb.TRANSFER_STATE_FAILED, "ACCOUNT_NOT_FOUND")
    after = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=known.account_id))
    assert (after.balance, after.reserved) == (100, 0)


def test_open_again_with_other_owner_is_already_exists(bank, open_account):
    account = open_account(owner="Ada")
    again = apb.OpenAccountRequest(account_id=account.account_id, owner="Ada", currency="EUR")
    assert bank.accounts.OpenAccount(again) == account
    code, reason, _ = refusal(
        lambda: bank.accounts.OpenAccount(
            apb.OpenAccountRequest(account_id=account.account_id, owner="Bob", currency="EUR")
        )
    )
    assert (code, reason) == (StatusCode.ALREADY_EXISTS, "ACCOUNT_ALREADY_EXISTS")


def test_request_id_reused_with_another_amount_is_already_exists(bank, open_account):
    account = open_account()
    bank.accounts.Deposit(
        apb.DepositRequest(account_id=account.account_id, amount=5, request_id="k")
    )
    code, reason, _ = refusal(
        lambda: bank.accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=6, request_id="k")
        )
    )
    assert (code, reason) == (StatusCode.ALREADY_EXISTS, "REFERENCE_REUSED")
    assert _version(bank, account.account_id) == 2


def test_transfer_id_reused_with_other_fields_is_already_exists(bank, open_account):
    alice, bob = open_account(100), open_account()
    transfer_id = str(uuid.uuid4())
    request = tpb.CreateTransferRequest(
        transfer_id=transfer_id,
        from_account_id=alice.account_id,
        to_account_id=bob.account_id,
        amount=10,
    )
    bank.transfers.CreateTransfer(request)
    request.amount = 11
    code, reason, _ = refusal(lambda: bank.transfers.CreateTransfer(request))
    assert (code, reason) == (StatusCode.ALREADY_EXISTS, "TRANSFER_ALREADY_EXISTS")
    assert bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob.account_id)).balance == 10


def test_withdraw_more_than_available_is_insufficient_funds(bank, open_account):
    account = open_account(10)
    code, reason, _ = refusal(
        lambda: bank.accounts.Withdraw(
            apb.WithdrawRequest(account_id=account.account_id, amount=11, request_id="w")
        )
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert _version(bank, account.account_id) == account.version


def test_transfer_more_than_available_fails_with_insufficient_funds(bank, open_account):
    alice, bob = open_account(10), open_account()
    transfer_id = str(uuid.uuid4())
    code, reason, _ = refusal(
        lambda: bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                transfer_id=transfer_id,
                from_account_id=alice.account_id,
                to_account_id=bob.account_id,
                amount=11,
            )
        )
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    stored = bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=transfer_id))
    assert (stored.state, stored.failure_reason) == (
        tpb.TRANSFER_STATE_FAILED,
        "INSUFFICIENT_FUNDS",
    )
    # The refusal is stored on the account, for every repeat to be answered the same.
    assert _version(bank, alice.account_id) == alice.version + 1
    history = bank.accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=alice.account_id)
    )
    refused = history.events[-1]
    assert (refused.type, refused.reason, refused.step, refused.reference) == (
        apb.ACCOUNT_EVENT_TYPE_STEP_REFUSED,
        "INSUFFICIENT_FUNDS",
        "reserve",
        transfer_id,
    )
    assert (refused.balance_after, refused.amount) == (10, 11)


def test_transfer_to_a_closed_account_is_released_and_fails_with_account_closed(bank, open_account):
    alice, bob = open_account(100), open_account()
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=bob.account_id))
    code, reason, _ = refusal(
        lambda: bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=alice.account_id, to_account_id=bob.account_id, amount=10
            )
        )
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSED")
    after = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=alice.account_id))
    assert (after.balance, after.reserved, list(after.reservations)) == (100, 0, [])
    types = [
        e.type
        for e in bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=alice.account_id)
        ).events
    ]
    assert types[-2:] == [
        apb.ACCOUNT_EVENT_TYPE_RESERVED,
        apb.ACCOUNT_EVENT_TYPE_RESERVATION_RELEASED,
    ]


def test_deposit_to_a_closed_account_is_account_closed(bank, open_account):
    account = open_account()
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=account.account_id))
    code, reason, _ = refusal(
        lambda: bank.accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=1, request_id="d")
        )
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSED")


def test_transfer_across_currencies_fails_with_currency_mismatch(bank, open_account):
    euros, dollars = open_account(100, currency="EUR"), open_account(currency="USD")
    code, reason, _ = refusal(
        lambda: bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=euros.account_id, to_account_id=dollars.account_id, amount=10
            )
        )
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH")
    assert (
        bank.accounts.GetAccount(apb.GetAccountRequest(account_id=euros.account_id)).available
        == 100
    )


def test_close_with_money_is_account_not_empty(bank, open_account):
    account = open_account(1)
    code, reason, _ = refusal(
        lambda: bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=account.account_id))
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_EMPTY")


def test_capture_or_release_of_an_unknown_reference_is_reservation_not_found(bank, open_account):
    aid = open_account(10).account_id
    calls = [
        lambda: bank.reservations.Capture(apb.CaptureRequest(account_id=aid, reference="nope")),
        lambda: bank.reservations.Release(apb.ReleaseRequest(account_id=aid, reference="nope")),
    ]
    for call in calls:
        code, reason, _ = refusal(call)
        assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "RESERVATION_NOT_FOUND")


def test_capture_after_release_and_release_after_capture_are_reservation_settled(
    bank, open_account
):
    account = open_account(10)
    rs, aid = bank.reservations, account.account_id
    rs.Reserve(apb.ReserveRequest(account_id=aid, reference="a", amount=3))
    rs.Release(apb.ReleaseRequest(account_id=aid, reference="a"))
    code, reason, _ = refusal(lambda: rs.Capture(apb.CaptureRequest(account_id=aid, reference="a")))
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "RESERVATION_SETTLED")
    rs.Reserve(apb.ReserveRequest(account_id=aid, reference="b", amount=3))
    rs.Capture(apb.CaptureRequest(account_id=aid, reference="b"))
    code, reason, _ = refusal(lambda: rs.Release(apb.ReleaseRequest(account_id=aid, reference="b")))
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "RESERVATION_SETTLED")
    after = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=aid))
    assert (after.balance, after.reserved) == (7, 0)


def test_deposit_past_int64_is_out_of_range(bank, open_account):
    account = open_account(INT64_MAX)
    code, reason, _ = refusal(
        lambda: bank.accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=1, request_id="o")
        )
    )
    assert (code, reason) == (StatusCode.OUT_OF_RANGE, "BALANCE_OUT_OF_RANGE")
    assert (
        bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account.account_id)).balance
        == INT64_MAX
    )


def test_a_reservation_expiring_after_year_9999_is_invalid_argument(bank, open_account):
    account = open_account(1_000)
    request = apb.ReserveRequest(account_id=account.account_id, reference="late", amount=5)
    request.expires_at.seconds = 2**63 - 2
    code, _, metadata = refusal(lambda: bank.reservations.Reserve(request))
    assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "expires_at")
    assert _version(bank, account.account_id) == account.version
