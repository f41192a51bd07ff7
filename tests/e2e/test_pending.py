"""Pending transfers against real processes: hold, then post (all of it or part), void, or
let it expire; repeats, refusals and races, as the contract's "Pending transfers" says."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank.v1 import transfer_pb2_grpc
from bank_cli.audit import read_events
from bank_cli.audit_checks import audit
from tests.e2e.conftest import new_account, refusal

pytestmark = pytest.mark.e2e


def hold(bank, source, target, amount, expires_after=None, transfer_id=None) -> tpb.Transfer:
    request = tpb.CreateTransferRequest(
        transfer_id=transfer_id or str(uuid.uuid4()),
        from_account_id=source,
        to_account_id=target,
        amount=amount,
        pending=True,
    )
    if expires_after is not None:
        request.expires_after.CopyFrom(Duration(seconds=expires_after))
    return bank.transfers.CreateTransfer(request, timeout=30)


def post(bank, transfer_id, amount=0) -> tpb.Transfer:
    request = tpb.PostTransferRequest(transfer_id=transfer_id, amount=amount)
    return bank.transfers.PostTransfer(request, timeout=30)


def void(bank, transfer_id) -> tpb.Transfer:
    return bank.transfers.VoidTransfer(tpb.VoidTransferRequest(transfer_id=transfer_id), timeout=30)


def account(bank, account_id) -> apb.Account:
    return bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account_id))


@pytest.fixture
def pair(bank):
    return new_account(bank, 100).account_id, new_account(bank).account_id


def test_a_hold_answers_pending_and_holds_the_amount_on_the_source_only(bank, pair):
    ada, bob = pair
    held = hold(bank, ada, bob, 30, expires_after=3600)
    assert (held.state, held.pending, held.posted_amount) == (tpb.TRANSFER_STATE_PENDING, True, 0)
    assert held.expires_at.seconds - held.created_at.seconds == 3600
    source = account(bank, ada)
    assert (source.balance, source.reserved, source.available) == (100, 30, 70)
    (reservation,) = source.reservations
    assert reservation.expires_at == held.expires_at
    assert account(bank, bob).balance == 0


def test_a_full_post_moves_the_whole_hold(bank, pair):
    ada, bob = pair
    held = hold(bank, ada, bob, 30)
    posted = post(bank, held.transfer_id)
    assert (posted.state, posted.posted_amount) == (tpb.TRANSFER_STATE_COMPLETED, 30)
    assert (account(bank, ada).balance, account(bank, bob).balance) == (70, 30)
    assert account(bank, ada).reserved == 0


def test_a_partial_post_moves_part_and_releases_the_rest(bank, pair):
    ada, bob = pair
    held = hold(bank, ada, bob, 30)
    posted = post(bank, held.transfer_id, 12)
    assert (posted.state, posted.posted_amount, posted.amount) == (
        tpb.TRANSFER_STATE_COMPLETED,
        12,
        30,
    )
    source = account(bank, ada)
    assert (source.balance, source.reserved) == (88, 0)
    assert account(bank, bob).balance == 12


def test_a_post_beyond_the_hold_is_refused_and_moves_nothing(bank, pair):
    ada, bob = pair
    held = hold(bank, ada, bob, 30)
    code, reason, _ = refusal(lambda: post(bank, held.transfer_id, 31))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EXCEEDS_PENDING_AMOUNT")
    assert account(bank, ada).reserved == 30
    assert post(bank, held.transfer_id, 30).state == tpb.TRANSFER_STATE_COMPLETED


def test_a_void_releases_the_hold(bank, pair):
    ada, bob = pair
    held = hold(bank, ada, bob, 30)
    voided = void(bank, held.transfer_id)
    assert (voided.state, voided.posted_amount) == (tpb.TRANSFER_STATE_VOIDED, 0)
    assert (account(bank, ada).balance, account(bank, ada).reserved) == (100, 0)


def test_repeats_answer_the_transfer_and_other_decisions_are_not_pending(bank, pair):
    ada, bob = pair
    posted = hold(bank, ada, bob, 30)
    first = post(bank, posted.transfer_id, 10)
    assert post(bank, posted.transfer_id, 10) == first  # the same post again
    code, reason, _ = refusal(lambda: post(bank, posted.transfer_id, 11))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TRANSFER_NOT_PENDING")
    assert refusal(lambda: void(bank, posted.transfer_id))[1] == "TRANSFER_NOT_PENDING"
    full = hold(bank, ada, bob, 5)
    post(bank, full.transfer_id)
    assert post(bank, full.transfer_id).state == tpb.TRANSFER_STATE_COMPLETED  # 0 after full
    voided = hold(bank, ada, bob, 5)
    void(bank, voided.transfer_id)
    assert void(bank, voided.transfer_id).state == tpb.TRANSFER_STATE_VOIDED
    assert refusal(lambda: post(bank, voided.transfer_id))[1] == "TRANSFER_NOT_PENDING"
    assert account(bank, bob).balance == 15


def test_post_and_void_of_an_immediate_transfer_are_not_pending(bank, pair):
    ada, bob = pair
    done = bank.transfers.CreateTransfer(
        tpb.CreateTransferRequest(from_account_id=ada, to_account_id=bob, amount=5)
    )
    assert refusal(lambda: post(bank, done.transfer_id))[1] == "TRANSFER_NOT_PENDING"
    assert refusal(lambda: void(bank, done.transfer_id))[1] == "TRANSFER_NOT_PENDING"
    code, reason, _ = refusal(lambda: post(bank, str(uuid.uuid4())))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND")


def test_expires_after_needs_pending_and_a_range(bank, pair):
    ada, bob = pair
    request = tpb.CreateTransferRequest(from_account_id=ada, to_account_id=bob, amount=5)
    request.expires_after.CopyFrom(Duration(seconds=10))
    code, reason, meta = refusal(lambda: bank.transfers.CreateTransfer(request))
    assert (code, reason, meta["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "expires_after",
    )
    for seconds in (0, 367 * 86_400):
        request.pending = True
        request.expires_after.CopyFrom(Duration(seconds=seconds, nanos=0 if seconds else 5))
        assert refusal(lambda: bank.transfers.CreateTransfer(request))[2]["field"] == (
            "expires_after"
        )
    assert account(bank, ada).reserved == 0


def test_a_post_to_a_target_closed_meanwhile_releases_the_hold_and_fails(bank, pair):
    ada, bob = pair
    held = hold(bank, ada, bob, 30)
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=bob))
    code, reason, _ = refusal(lambda: post(bank, held.transfer_id))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSED")
    stored = bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=held.transfer_id))
    assert (stored.state, stored.failure_reason) == (tpb.TRANSFER_STATE_FAILED, "ACCOUNT_CLOSED")
    assert (account(bank, ada).balance, account(bank, ada).reserved) == (100, 0)


def test_a_hold_that_is_refused_fails_as_an_immediate_transfer_would(bank, pair):
    ada, bob = pair
    code, reason, _ = refusal(lambda: hold(bank, ada, bob, 1000))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")


def test_a_hold_expires_within_two_seconds_of_its_time(bank, pair):
    ada, bob = pair
    held = hold(bank, ada, bob, 30, expires_after=1)
    expires = held.expires_at.ToDatetime().timestamp()
    request = tpb.GetTransferRequest(transfer_id=held.transfer_id)
    while (stored := bank.transfers.GetTransfer(request)).state == tpb.TRANSFER_STATE_PENDING:
        assert time.time() < expires + 2.0
        time.sleep(0.05)
    assert stored.state == tpb.TRANSFER_STATE_EXPIRED
    assert stored.updated_at.ToDatetime().timestamp() - expires < 2.0
    assert (account(bank, ada).balance, account(bank, ada).reserved) == (100, 0)
    assert refusal(lambda: post(bank, held.transfer_id))[1] == "TRANSFER_NOT_PENDING"


def test_a_hold_that_expired_while_the_service_was_down_expires_within_five_seconds_of_start(
    own_bank,
):
    bank = own_bank
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    held = hold(bank, ada, bob, 30, expires_after=1)
    assert bank.transfer.stop() == 0
    time.sleep(1.5)
    bank.transfer.start()
    started = time.monotonic()
    request = tpb.GetTransferRequest(transfer_id=held.transfer_id)
    while bank.transfers.GetTransfer(request).state != tpb.TRANSFER_STATE_EXPIRED:
        assert time.monotonic() - started < 5.0
        time.sleep(0.05)
    assert account(bank, ada).reserved == 0


async def test_a_hundred_races_of_post_void_and_expiry_each_have_one_winner(own_bank, capsys):
    bank = own_bank
    ada = new_account(bank, 100_000).account_id
    bob = new_account(bank).account_id
    holds = [hold(bank, ada, bob, 100, expires_after=1) for _ in range(100)]
    async with grpc.aio.insecure_channel(bank.transfer.address) as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)

        async def contest(n: int, transfer_id: str) -> None:
            # Posts and voids fire close to the expiry, so all three compete.
            await asyncio.sleep(0.85 + (n % 10) * 0.03)
            calls = [
                stub.PostTransfer(tpb.PostTransferRequest(transfer_id=transfer_id, amount=40)),
                stub.VoidTransfer(tpb.VoidTransferRequest(transfer_id=transfer_id)),
            ]
            await asyncio.gather(*calls, return_exceptions=True)

        await asyncio.gather(*(contest(n, h.transfer_id) for n, h in enumerate(holds)))
    ends = {}
    for h in holds:
        request = tpb.GetTransferRequest(transfer_id=h.transfer_id)
        deadline = time.monotonic() + 10
        while (stored := bank.transfers.GetTransfer(request)).state == tpb.TRANSFER_STATE_PENDING:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        ends[h.transfer_id] = stored
    posted = sum(t.posted_amount for t in ends.values())
    assert all(
        t.state
        in (tpb.TRANSFER_STATE_COMPLETED, tpb.TRANSFER_STATE_VOIDED, tpb.TRANSFER_STATE_EXPIRED)
        for t in ends.values()
    )
    assert all(
        (t.state == tpb.TRANSFER_STATE_COMPLETED) == (t.posted_amount == 40) for t in ends.values()
    )
    source, target = account(bank, ada), account(bank, bob)
    assert (source.balance, source.reserved, target.balance) == (100_000 - posted, 0, posted)
    report = audit(read_events(bank.accounts_db), read_events(bank.transfers_db))
    assert report.ok, report.render()
    with capsys.disabled():
        counts = {tpb.TransferState.Name(s): 0 for s in (4, 7, 8)}
        for t in ends.values():
            counts[tpb.TransferState.Name(t.state)] += 1
        print(f"\n[pending] 100 races of post, void and expiry: {counts}")


def test_concurrent_posts_of_one_hold_move_it_once(bank, pair):
    ada, bob = pair
    held = hold(bank, ada, bob, 30)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(bank, held.transfer_id, 30), range(8)))
    assert {a.state for a in answers} == {tpb.TRANSFER_STATE_COMPLETED}
    assert account(bank, bob).balance == 30
