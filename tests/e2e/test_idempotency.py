"""Retried calls with the same id or key: same answer, nothing stored twice."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from grpc_common.errors import error_info


def _events(bank, account_id: str) -> list[apb.AccountEvent]:
    return list(
        bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=account_id, page_size=1000)
        ).events
    )


def test_open_account_without_an_id_gets_a_fresh_uuid(bank):
    first = bank.accounts.OpenAccount(apb.OpenAccountRequest(owner="Ada", currency="EUR"))
    second = bank.accounts.OpenAccount(apb.OpenAccountRequest(owner="Ada", currency="EUR"))
    assert uuid.UUID(first.account_id) and first.account_id != second.account_id
    assert (first.version, first.status) == (1, apb.ACCOUNT_STATUS_OPEN)


def test_repeated_deposit_and_withdraw_store_once(bank, open_account):
    account = open_account()
    deposit = apb.DepositRequest(account_id=account.account_id, amount=70, request_id="dep-1")
    withdraw = apb.WithdrawRequest(account_id=account.account_id, amount=20, request_id="wd-1")
    first = bank.accounts.Deposit(deposit)
    assert bank.accounts.Deposit(deposit) == first
    bank.accounts.Withdraw(withdraw)
    again = bank.accounts.Withdraw(withdraw)
    assert (again.balance, again.version) == (50, 3)
    # A repeat answers with the current state, not the state of the first answer.
    assert bank.accounts.Deposit(deposit).balance == 50
    assert len(_events(bank, account.account_id)) == 3


def test_reservation_calls_are_idempotent_by_reference(bank, open_account):
    source, target = open_account(100), open_account()
    rs = bank.reservations
    reserve = apb.ReserveRequest(account_id=source.account_id, reference="t1", amount=40)
    rs.Reserve(reserve)
    for _ in range(2):
        rs.Reserve(reserve)  # while held: a repeat
        rs.Credit(
            apb.CreditRequest(
                account_id=target.account_id, reference="t1", amount=40, currency="EUR"
            )
        )
    for _ in range(2):
        rs.Capture(apb.CaptureRequest(account_id=source.account_id, reference="t1"))
    # Once settled, a reference never holds money again: the repeat is told so.
    with pytest.raises(grpc.RpcError) as settled:
        rs.Reserve(reserve)
    assert settled.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(settled.value).reason == "RESERVATION_SETTLED"
    assert len(_events(bank, source.account_id)) == 4
    assert len(_events(bank, target.account_id)) == 2
    src = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=source.account_id))
    dst = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=target.account_id))
    assert (src.balance, src.reserved, dst.balance) == (60, 0, 40)


def test_repeated_create_transfer_returns_the_same_transfer_and_moves_money_once(
    bank, open_account
):
    alice, bob = open_account(100), open_account()
    request = tpb.CreateTransferRequest(
        transfer_id=str(uuid.uuid4()),
        from_account_id=alice.account_id,
        to_account_id=bob.account_id,
        amount=30,
    )
    first = bank.transfers.CreateTransfer(request)
    assert bank.transfers.CreateTransfer(request) == first
    assert bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob.account_id)).balance == 30


def test_concurrent_repeats_of_one_transfer_move_money_once(bank, open_account):
    alice, bob = open_account(100), open_account()
    request = tpb.CreateTransferRequest(
        transfer_id=str(uuid.uuid4()),
        from_account_id=alice.account_id,
        to_account_id=bob.account_id,
        amount=30,
    )
    stub = bank.transfers
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: stub.CreateTransfer(request), range(16)))
    assert {a.state for a in answers} == {tpb.TRANSFER_STATE_COMPLETED}
    assert len({a.SerializeToString() for a in answers}) == 1
    src = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=alice.account_id))
    dst = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob.account_id))
    assert (src.balance, src.reserved, dst.balance) == (70, 0, 30)
    references = [e.reference for e in _events(bank, alice.account_id)[2:]]
    assert references == [request.transfer_id, request.transfer_id]


def test_repeated_refused_transfer_gives_the_same_refusal(bank, open_account):
    from tests.e2e.conftest import refusal

    alice, bob = open_account(5), open_account()
    request = tpb.CreateTransferRequest(
        transfer_id=str(uuid.uuid4()),
        from_account_id=alice.account_id,
        to_account_id=bob.account_id,
        amount=30,
    )
    first = refusal(lambda: bank.transfers.CreateTransfer(request))
    bank.accounts.Deposit(
        apb.DepositRequest(account_id=alice.account_id, amount=100, request_id="top-up")
    )
    # The recorded outcome stands even though the funds would now suffice.
    assert refusal(lambda: bank.transfers.CreateTransfer(request)) == first
    assert bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob.account_id)).balance == 0
