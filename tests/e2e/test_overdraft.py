"""Overdraft limits against real processes: debits down to -limit and not beyond, for
withdrawals, reservations, pending holds and multi-leg transfers; a lowered limit only
refuses further debits; SetOverdraftLimit is idempotent by request_id; an overdrawn
account does not close."""

from __future__ import annotations

import uuid

import pytest
from grpc import StatusCode

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from tests.e2e.conftest import new_account, refusal

pytestmark = pytest.mark.e2e


def set_limit(bank, account_id: str, limit: int, request_id: str | None = None) -> apb.Account:
    return bank.accounts.SetOverdraftLimit(
        apb.SetOverdraftLimitRequest(
            account_id=account_id, overdraft_limit=limit, request_id=request_id or str(uuid.uuid4())
        )
    )


def withdraw(bank, account_id: str, amount: int) -> apb.Account:
    request = apb.WithdrawRequest(
        account_id=account_id, amount=amount, request_id=str(uuid.uuid4())
    )
    return bank.accounts.Withdraw(request)


def get(bank, account_id: str) -> apb.Account:
    return bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account_id))


def transfer(bank, **fields) -> tpb.Transfer:
    return bank.transfers.CreateTransfer(tpb.CreateTransferRequest(**fields), timeout=30)


@pytest.fixture
def overdrawable(bank) -> str:
    """An account holding 50.00 with an overdraft limit of 100.00 (in cents)."""
    account_id = new_account(bank, 5_000).account_id
    limited = set_limit(bank, account_id, 10_000)
    assert (limited.overdraft_limit, limited.available, limited.balance) == (10_000, 15_000, 5_000)
    return account_id


def test_a_withdrawal_goes_down_to_the_limit_and_not_beyond(bank, overdrawable) -> None:
    assert withdraw(bank, overdrawable, 14_000).balance == -9_000
    before = get(bank, overdrawable)
    code, reason, metadata = refusal(lambda: withdraw(bank, overdrawable, 1_001))
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert (metadata["available"], metadata["requested"]) == ("1000", "1001")
    assert get(bank, overdrawable).version == before.version
    drained = withdraw(bank, overdrawable, 1_000)
    assert (drained.balance, drained.available) == (-10_000, 0)


def test_a_reservation_goes_down_to_the_limit_and_not_beyond(bank, overdrawable) -> None:
    held = bank.reservations.Reserve(
        apb.ReserveRequest(account_id=overdrawable, reference="r-1", amount=15_000)
    )
    assert (held.balance, held.reserved, held.available) == (5_000, 15_000, 0)
    code, reason, _ = refusal(
        lambda: bank.reservations.Reserve(
            apb.ReserveRequest(account_id=overdrawable, reference="r-2", amount=1)
        )
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    captured = bank.reservations.Capture(
        apb.CaptureRequest(account_id=overdrawable, reference="r-1")
    )
    assert (captured.balance, captured.reserved, captured.available) == (-10_000, 0, 0)


def test_a_pending_hold_goes_down_to_the_limit_and_not_beyond(bank, overdrawable) -> None:
    target = new_account(bank).account_id
    held = transfer(
        bank, from_account_id=overdrawable, to_account_id=target, amount=12_000, pending=True
    )
    assert held.state == tpb.TRANSFER_STATE_PENDING
    assert get(bank, overdrawable).available == 3_000
    code, reason, _ = refusal(
        lambda: transfer(
            bank, from_account_id=overdrawable, to_account_id=target, amount=3_001, pending=True
        )
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    posted = bank.transfers.PostTransfer(tpb.PostTransferRequest(transfer_id=held.transfer_id))
    assert posted.state == tpb.TRANSFER_STATE_COMPLETED
    assert (get(bank, overdrawable).balance, get(bank, target).balance) == (-7_000, 12_000)


def test_a_multi_leg_transfer_goes_down_to_the_limit_and_not_beyond(bank, overdrawable) -> None:
    one, two = new_account(bank).account_id, new_account(bank).account_id

    def legs(first: int, second: int) -> list[tpb.Leg]:
        return [
            tpb.Leg(from_account_id=overdrawable, to_account_id=one, amount=first),
            tpb.Leg(from_account_id=overdrawable, to_account_id=two, amount=second),
        ]

    code, reason, _ = refusal(lambda: transfer(bank, legs=legs(10_000, 5_001)))
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    untouched = [get(bank, a) for a in (overdrawable, one, two)]
    assert [(a.balance, a.reserved, a.pending_credits) for a in untouched] == [
        (5_000, 0, 0),
        (0, 0, 0),
        (0, 0, 0),
    ]
    done = transfer(bank, legs=legs(10_000, 5_000))
    assert done.state == tpb.TRANSFER_STATE_COMPLETED
    assert [get(bank, a).balance for a in (overdrawable, one, two)] == [-10_000, 10_000, 5_000]


def test_a_lowered_limit_only_refuses_further_debits(bank, overdrawable) -> None:
    withdraw(bank, overdrawable, 13_000)  # balance -80.00, within the limit of 100.00
    lowered = set_limit(bank, overdrawable, 5_000)
    assert (lowered.balance, lowered.overdraft_limit, lowered.available) == (-8_000, 5_000, -3_000)
    code, reason, _ = refusal(lambda: withdraw(bank, overdrawable, 1))
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    source = new_account(bank, 2_000).account_id
    credited = transfer(bank, from_account_id=source, to_account_id=overdrawable, amount=2_000)
    assert credited.state == tpb.TRANSFER_STATE_COMPLETED
    assert get(bank, overdrawable).available == -1_000  # credits still come in
    code, reason, _ = refusal(
        lambda: transfer(bank, from_account_id=overdrawable, to_account_id=source, amount=1)
    )
    assert reason == "INSUFFICIENT_FUNDS"


def test_set_overdraft_limit_is_idempotent_by_request_id(bank) -> None:
    account_id = new_account(bank).account_id
    first = set_limit(bank, account_id, 700, request_id="limit-1")
    again = set_limit(bank, account_id, 700, request_id="limit-1")
    assert (again.version, again.overdraft_limit) == (first.version, 700)
    code, reason, _ = refusal(lambda: set_limit(bank, account_id, 800, request_id="limit-1"))
    assert (code, reason) == (StatusCode.ALREADY_EXISTS, "REFERENCE_REUSED")
    assert get(bank, account_id).version == first.version
    history = bank.accounts.ListAccountEvents(apb.ListAccountEventsRequest(account_id=account_id))
    (limit_set,) = [
        e for e in history.events if e.type == apb.ACCOUNT_EVENT_TYPE_OVERDRAFT_LIMIT_SET
    ]
    assert (limit_set.amount, limit_set.reference) == (700, "limit-1")


def test_a_negative_limit_is_invalid_argument(bank) -> None:
    account_id = new_account(bank).account_id
    code, _, metadata = refusal(lambda: set_limit(bank, account_id, -1))
    assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "overdraft_limit")


def test_an_overdrawn_account_does_not_close_until_its_balance_is_zero(bank, overdrawable) -> None:
    withdraw(bank, overdrawable, 5_500)
    set_limit(bank, overdrawable, 0)
    code, reason, _ = refusal(
        lambda: bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=overdrawable))
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_EMPTY")
    bank.accounts.Deposit(apb.DepositRequest(account_id=overdrawable, amount=500, request_id="d"))
    closed = bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=overdrawable))
    assert (closed.status, closed.balance) == (apb.ACCOUNT_STATUS_CLOSED, 0)


def test_holds_under_a_huge_limit_never_pass_int64_and_the_account_stays_readable(bank) -> None:
    account_id = new_account(bank, 10).account_id
    target = new_account(bank, 0).account_id
    limited = set_limit(bank, account_id, 2**63 - 1)
    # balance - reserved + limit is past int64: the answer says the most it can carry.
    assert (limited.balance, limited.available) == (10, 2**63 - 1)
    held = transfer(
        bank, from_account_id=account_id, to_account_id=target, amount=2**63 - 6, pending=True
    )
    assert held.state == tpb.TRANSFER_STATE_PENDING
    code, reason, _ = refusal(
        lambda: transfer(bank, from_account_id=account_id, to_account_id=target, amount=10)
    )
    assert (code, reason) == (StatusCode.OUT_OF_RANGE, "BALANCE_OUT_OF_RANGE")
    after = get(bank, account_id)
    assert (after.balance, after.reserved, after.available) == (10, 2**63 - 6, 15)
    assert get(bank, target).balance == 0
