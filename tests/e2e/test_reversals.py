"""Reversals against real processes, as the contract's "Reversals" says: a new transfer
back, by the same protocol, never beyond what the original moved, even when concurrent."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank.v1 import transfer_pb2_grpc
from bank_cli.audit import read_events
from bank_cli.audit_checks import audit
from tests.e2e.conftest import new_account, refusal

pytestmark = pytest.mark.e2e


def transfer(bank, source, target, amount) -> tpb.Transfer:
    return bank.transfers.CreateTransfer(
        tpb.CreateTransferRequest(from_account_id=source, to_account_id=target, amount=amount)
    )


def reverse(bank, transfer_id, amount=0, reversal_id="", reason="") -> tpb.Transfer:
    request = tpb.ReverseTransferRequest(
        transfer_id=transfer_id, reversal_id=reversal_id, amount=amount, reason=reason
    )
    return bank.transfers.ReverseTransfer(request, timeout=30)


def get(bank, transfer_id) -> tpb.Transfer:
    return bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=transfer_id))


def balances(bank, *ids) -> list[int]:
    return [bank.accounts.GetAccount(apb.GetAccountRequest(account_id=a)).balance for a in ids]


def clean(bank) -> None:
    report = audit(read_events(bank.accounts_db), read_events(bank.transfers_db))
    assert report.ok, report.render()


@pytest.fixture
def paid(bank):
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    return ada, bob, transfer(bank, ada, bob, 60)


def test_a_whole_reversal_moves_everything_back(bank, paid):
    ada, bob, original = paid
    back = reverse(bank, original.transfer_id, reason="customer refund")
    assert back.state == tpb.TRANSFER_STATE_COMPLETED
    assert (back.from_account_id, back.to_account_id, back.amount) == (bob, ada, 60)
    assert (back.reverses_transfer_id, back.reason) == (original.transfer_id, "customer refund")
    assert get(bank, original.transfer_id).reversed_amount == 60
    assert balances(bank, ada, bob) == [100, 0]
    code, reason, _ = refusal(lambda: reverse(bank, original.transfer_id))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EXCEEDS_REVERSIBLE_AMOUNT")
    clean(bank)


def test_partial_reversals_add_up_to_at_most_what_moved(bank, paid):
    ada, bob, original = paid
    reverse(bank, original.transfer_id, 25)
    reverse(bank, original.transfer_id, 30)
    assert get(bank, original.transfer_id).reversed_amount == 55
    _, reason, meta = refusal(lambda: reverse(bank, original.transfer_id, 6))
    assert (reason, meta["reversible"]) == ("EXCEEDS_REVERSIBLE_AMOUNT", "5")
    assert reverse(bank, original.transfer_id).amount == 5  # 0: all that is left
    assert balances(bank, ada, bob) == [100, 0]


def test_a_reversal_is_idempotent_by_its_id(bank, paid):
    _, bob, original = paid
    reversal_id = str(uuid.uuid4())
    first = reverse(bank, original.transfer_id, 20, reversal_id)
    assert reverse(bank, original.transfer_id, 20, reversal_id) == first
    assert reverse(bank, original.transfer_id, 0, reversal_id) == first
    code, reason, _ = refusal(lambda: reverse(bank, original.transfer_id, 21, reversal_id))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "TRANSFER_ALREADY_EXISTS")
    assert get(bank, original.transfer_id).reversed_amount == 20
    assert balances(bank, bob) == [40]


def test_only_a_completed_transfer_is_reversed(bank):
    ada, bob = new_account(bank, 10).account_id, new_account(bank).account_id
    failed_id = str(uuid.uuid4())
    request = tpb.CreateTransferRequest(
        transfer_id=failed_id, from_account_id=ada, to_account_id=bob, amount=50
    )
    assert refusal(lambda: bank.transfers.CreateTransfer(request))[1] == "INSUFFICIENT_FUNDS"
    code, reason, _ = refusal(lambda: reverse(bank, failed_id))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TRANSFER_NOT_COMPLETED")
    code, reason, _ = refusal(lambda: reverse(bank, str(uuid.uuid4())))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND")


def test_a_reversal_refused_because_the_target_spent_the_money_reverses_nothing(bank, paid):
    ada, bob, original = paid
    bank.accounts.Withdraw(apb.WithdrawRequest(account_id=bob, amount=50, request_id="spent"))
    code, reason, _ = refusal(lambda: reverse(bank, original.transfer_id))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    stored = get(bank, original.transfer_id)
    assert stored.reversed_amount == 0
    assert balances(bank, ada, bob) == [40, 10]
    # What was set aside is free again: a smaller reversal goes through.
    assert reverse(bank, original.transfer_id, 10).state == tpb.TRANSFER_STATE_COMPLETED
    clean(bank)


def test_a_multi_leg_transfer_is_reversed_whole_only(bank):
    ada, bob, fees = (new_account(bank, n).account_id for n in (100, 0, 0))
    legs = [
        tpb.Leg(from_account_id=ada, to_account_id=bob, amount=40),
        tpb.Leg(from_account_id=ada, to_account_id=fees, amount=2),
    ]
    paid = bank.transfers.CreateTransfer(tpb.CreateTransferRequest(legs=legs))
    code, _, meta = refusal(lambda: reverse(bank, paid.transfer_id, 10))
    assert (code, meta["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "amount")
    back = reverse(bank, paid.transfer_id)
    assert [(leg.from_account_id, leg.to_account_id, leg.amount) for leg in back.legs] == [
        (bob, ada, 40),
        (fees, ada, 2),
    ]
    assert balances(bank, ada, bob, fees) == [100, 0, 0]


def test_a_long_reason_is_invalid(bank, paid):
    _, _, original = paid
    code, _, meta = refusal(lambda: reverse(bank, original.transfer_id, reason="x" * 201))
    assert (code, meta["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "reason")


async def test_ten_concurrent_partial_reversals_move_exactly_the_reversible_amount(bank, capsys):
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    original = transfer(bank, ada, bob, 60)
    async with grpc.aio.insecure_channel(bank.transfer.address) as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)

        async def one() -> str:
            request = tpb.ReverseTransferRequest(transfer_id=original.transfer_id, amount=9)
            try:
                await stub.ReverseTransfer(request, timeout=30)
                return "COMPLETED"
            except grpc.aio.AioRpcError as error:
                return error.code().name

        outcomes = await asyncio.gather(*(one() for _ in range(10)))
    assert outcomes.count("COMPLETED") == 6  # 6 x 9 = 54 of 60; a seventh would exceed it
    assert outcomes.count("FAILED_PRECONDITION") == 4
    assert get(bank, original.transfer_id).reversed_amount == 54
    assert balances(bank, ada, bob) == [94, 6]
    clean(bank)
    with capsys.disabled():
        print(f"\n[reversals] 10 concurrent reversals of 9 out of 60: {sorted(outcomes)}")
