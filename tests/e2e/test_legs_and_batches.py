"""Multi-leg transfers (all legs or none) and CreateTransfers batches, against real
processes, as the contract's "Multi-leg transfers" and "Batches" say."""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank.v1 import transfer_pb2_grpc
from bank_cli.audit import read_events
from bank_cli.audit_checks import audit
from tests.e2e.conftest import new_account, refusal

pytestmark = pytest.mark.e2e


def legs(*triples: tuple[str, str, int]) -> list[tpb.Leg]:
    return [tpb.Leg(from_account_id=f, to_account_id=t, amount=n) for f, t, n in triples]


def create(bank, *triples, pending=False, transfer_id=None) -> tpb.Transfer:
    request = tpb.CreateTransferRequest(
        transfer_id=transfer_id or str(uuid.uuid4()), legs=legs(*triples), pending=pending
    )
    return bank.transfers.CreateTransfer(request, timeout=30)


def account(bank, account_id) -> apb.Account:
    return bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account_id))


def balances(bank, *ids) -> list[int]:
    return [account(bank, a).balance for a in ids]


def clean(bank) -> None:
    report = audit(read_events(bank.accounts_db), read_events(bank.transfers_db))
    assert report.ok, report.render()


@pytest.fixture
def people(bank):
    ada, bob, fees = (new_account(bank, n).account_id for n in (100, 0, 0))
    return ada, bob, fees


def test_a_payment_with_a_fee_moves_both_legs(bank, people):
    ada, bob, fees = people
    done = create(bank, (ada, bob, 40), (ada, fees, 2))
    assert done.state == tpb.TRANSFER_STATE_COMPLETED
    assert (done.from_account_id, done.to_account_id, done.amount) == ("", "", 42)
    assert [(leg.from_account_id, leg.to_account_id, leg.amount) for leg in done.legs] == [
        (ada, bob, 40),
        (ada, fees, 2),
    ]
    assert balances(bank, ada, bob, fees) == [58, 40, 2]
    listed = bank.transfers.ListTransfers(tpb.ListTransfersRequest(account_id=fees))
    assert [t.transfer_id for t in listed.transfers] == [done.transfer_id]


def test_one_refused_leg_fails_everything_with_nothing_moved_and_nothing_held(bank, people):
    ada, bob, _ = people
    closed = new_account(bank).account_id
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=closed))
    code, reason, _ = refusal(lambda: create(bank, (ada, bob, 40), (ada, closed, 2)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSED")
    for account_id, balance in ((ada, 100), (bob, 0), (closed, 0)):
        found = account(bank, account_id)
        assert (found.balance, found.reserved, found.pending_credits) == (balance, 0, 0)
    poor = new_account(bank, 1).account_id
    code, reason, _ = refusal(lambda: create(bank, (ada, bob, 40), (poor, bob, 2)))
    assert reason == "INSUFFICIENT_FUNDS"
    missing = str(uuid.uuid4())
    code, reason, _ = refusal(lambda: create(bank, (ada, bob, 40), (ada, missing, 2)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    assert balances(bank, ada, bob, poor) == [100, 0, 1]
    assert account(bank, ada).reserved == 0
    clean(bank)


def test_legs_in_two_currencies_fail_with_currency_mismatch(bank, people):
    ada, bob, _ = people
    dollars = new_account(bank, 100, currency="USD").account_id
    code, reason, _ = refusal(lambda: create(bank, (ada, bob, 10), (dollars, bob, 10)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH")
    assert balances(bank, ada, bob, dollars) == [100, 0, 100]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("no-accounts", "legs"),
        ("same-account", "legs"),
        ("zero", "legs"),
        ("seventeen", "legs"),
        ("with-amount", "legs"),
    ],
)
def test_bad_legs_are_invalid_argument(bank, people, shape, message):
    ada, bob, _ = people
    request = tpb.CreateTransferRequest(legs=legs((ada, bob, 1)))
    if shape == "no-accounts":
        request.legs[0].from_account_id = ""
    elif shape == "same-account":
        request.legs[0].to_account_id = ada
    elif shape == "zero":
        request.legs[0].amount = 0
    elif shape == "seventeen":
        request.legs.extend(legs(*[(ada, bob, 1)] * 16))
    elif shape == "with-amount":
        request.amount = 1
    code, reason, meta = refusal(lambda: bank.transfers.CreateTransfer(request))
    assert (code, reason, meta["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        message,
    )


def test_a_pending_payment_holds_every_debit_and_posts_or_voids_every_leg(bank, people):
    ada, bob, fees = people
    held = create(bank, (ada, bob, 40), (ada, fees, 2), pending=True)
    assert held.state == tpb.TRANSFER_STATE_PENDING
    assert account(bank, ada).reserved == 42
    code, _, meta = refusal(
        lambda: bank.transfers.PostTransfer(
            tpb.PostTransferRequest(transfer_id=held.transfer_id, amount=10)
        )
    )
    assert (code, meta["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "amount")
    posted = bank.transfers.PostTransfer(tpb.PostTransferRequest(transfer_id=held.transfer_id))
    assert (posted.state, posted.posted_amount) == (tpb.TRANSFER_STATE_COMPLETED, 42)
    assert balances(bank, ada, bob, fees) == [58, 40, 2]
    voided = create(bank, (ada, bob, 10), (ada, fees, 1), pending=True)
    bank.transfers.VoidTransfer(tpb.VoidTransferRequest(transfer_id=voided.transfer_id))
    assert (account(bank, ada).balance, account(bank, ada).reserved) == (58, 0)


async def test_two_hundred_concurrent_multi_leg_transfers_conserve_money(own_bank, capsys):
    bank = own_bank
    ids = [new_account(bank, 1_000).account_id for _ in range(8)]
    closed = new_account(bank).account_id
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=closed))
    rng = random.Random(11)
    outcomes: dict[str, tuple[tpb.CreateTransferRequest, str]] = {}
    async with grpc.aio.insecure_channel(bank.transfer.address) as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)

        async def one(n: int) -> None:
            a, b, c = rng.sample(ids, 3)
            fee_to = closed if n % 10 == 0 else c
            request = tpb.CreateTransferRequest(
                transfer_id=str(uuid.uuid4()),
                legs=legs((a, b, 1 + n % 300), (a, fee_to, 1 + n % 7), (b, c, 1 + n % 11)),
            )
            try:
                answer = await stub.CreateTransfer(request, timeout=60)
                outcomes[request.transfer_id] = (request, tpb.TransferState.Name(answer.state))
            except grpc.aio.AioRpcError as error:
                outcomes[request.transfer_id] = (request, error.code().name)

        await asyncio.gather(*(one(n) for n in range(200)))
    expected = dict.fromkeys(ids, 1_000)
    for request, outcome in outcomes.values():
        assert outcome in ("TRANSFER_STATE_COMPLETED", "FAILED_PRECONDITION"), outcome
        if outcome == "TRANSFER_STATE_COMPLETED":
            for leg in request.legs:
                expected[leg.from_account_id] -= leg.amount
                expected[leg.to_account_id] += leg.amount
    for account_id, balance in expected.items():
        found = account(bank, account_id)
        assert (found.balance, found.reserved, found.pending_credits) == (balance, 0, 0)
    clean(bank)
    completed = sum(o == "TRANSFER_STATE_COMPLETED" for _, o in outcomes.values())
    with capsys.disabled():
        print(f"\n[legs] 200 concurrent three-leg transfers: {completed} completed, money exact")


def _status_reason(status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def test_a_batch_answers_each_item_in_order(bank, people):
    ada, bob, _ = people
    items = [
        tpb.CreateTransferRequest(from_account_id=ada, to_account_id=bob, amount=10),
        tpb.CreateTransferRequest(from_account_id=ada, to_account_id=ada, amount=10),
        tpb.CreateTransferRequest(from_account_id=ada, to_account_id=bob, amount=10_000),
        tpb.CreateTransferRequest(from_account_id=ada, to_account_id=bob, amount=5, pending=True),
        tpb.CreateTransferRequest(from_account_id="nope", to_account_id=bob, amount=1),
    ]
    answer = bank.transfers.CreateTransfers(tpb.CreateTransfersRequest(transfers=items))
    kinds = [
        r.WhichOneof("outcome") if False else ("transfer" if r.HasField("transfer") else "error")
        for r in answer.results
    ]
    assert kinds == ["transfer", "error", "error", "transfer", "error"]
    first, invalid, refused, pending, bad_id = answer.results
    assert first.transfer.state == tpb.TRANSFER_STATE_COMPLETED
    assert (invalid.error.code, _status_reason(invalid.error)) == (
        code_pb2.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert (refused.error.code, _status_reason(refused.error)) == (
        code_pb2.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    )
    assert pending.transfer.state == tpb.TRANSFER_STATE_PENDING
    assert _status_reason(bad_id.error) == "INVALID_ARGUMENT"
    assert (account(bank, ada).balance, account(bank, ada).reserved) == (90, 5)


def test_a_repeated_batch_moves_nothing_twice(bank, people):
    ada, bob, _ = people
    items = [
        tpb.CreateTransferRequest(
            transfer_id=str(uuid.uuid4()), from_account_id=ada, to_account_id=bob, amount=n
        )
        for n in (1, 2, 3)
    ]
    first = bank.transfers.CreateTransfers(tpb.CreateTransfersRequest(transfers=items))
    again = bank.transfers.CreateTransfers(tpb.CreateTransfersRequest(transfers=items))
    assert [r.transfer for r in first.results] == [r.transfer for r in again.results]
    assert balances(bank, ada, bob) == [94, 6]


def test_a_batch_of_none_or_more_than_a_thousand_is_invalid(bank, people):
    ada, bob, _ = people
    for size in (0, 1001):
        items = [tpb.CreateTransferRequest(from_account_id=ada, to_account_id=bob, amount=1)] * size
        code, _, meta = refusal(
            lambda items=items: bank.transfers.CreateTransfers(
                tpb.CreateTransfersRequest(transfers=items)
            )
        )
        assert (code, meta["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "transfers")
    assert balances(bank, ada, bob) == [100, 0]


def test_a_batch_of_a_thousand_over_many_accounts_conserves_money(own_bank, capsys):
    bank = own_bank
    ids = [new_account(bank, 10_000).account_id for _ in range(100)]
    rng = random.Random(5)
    items = []
    for n in range(1000):
        a, b = rng.sample(ids, 2)
        items.append(
            tpb.CreateTransferRequest(from_account_id=a, to_account_id=b, amount=1 + n % 90)
        )
    answer = bank.transfers.CreateTransfers(
        tpb.CreateTransfersRequest(transfers=items), timeout=120
    )
    assert len(answer.results) == 1000
    expected = dict.fromkeys(ids, 10_000)
    for item, result in zip(items, answer.results, strict=True):
        assert result.transfer.state == tpb.TRANSFER_STATE_COMPLETED
        expected[item.from_account_id] -= item.amount
        expected[item.to_account_id] += item.amount
    assert {a: account(bank, a).balance for a in ids} == expected
    clean(bank)
