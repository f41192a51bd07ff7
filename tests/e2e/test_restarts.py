"""Peers going away and coming back: transient faults are retried, never refusals, and a
restarted transfer service finishes what it had started."""

from __future__ import annotations

import time
import uuid

from grpc import StatusCode

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from tests.e2e.conftest import new_account, refusal


def _wait_for_state(bank, transfer_id: str, state: int, timeout: float = 30.0) -> tpb.Transfer:
    deadline = time.monotonic() + timeout
    while True:
        transfer = bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=transfer_id))
        if transfer.state == state or time.monotonic() > deadline:
            return transfer
        time.sleep(0.1)


def test_transfer_waits_out_an_account_service_outage(own_bank):
    bank = own_bank
    alice, bob = new_account(bank, 100), new_account(bank)
    assert bank.account.stop() == 0
    request = tpb.CreateTransferRequest(
        transfer_id=str(uuid.uuid4()),
        from_account_id=alice.account_id,
        to_account_id=bob.account_id,
        amount=40,
    )
    code, reason, metadata = refusal(lambda: bank.transfers.CreateTransfer(request, timeout=2))
    assert (code, reason) == (StatusCode.UNAVAILABLE, "TRANSFER_PENDING")
    assert metadata["transfer_id"] == request.transfer_id
    pending = bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=request.transfer_id))
    assert pending.state == tpb.TRANSFER_STATE_REQUESTED

    bank.account.start()
    done = _wait_for_state(bank, request.transfer_id, tpb.TRANSFER_STATE_COMPLETED)
    assert done.state == tpb.TRANSFER_STATE_COMPLETED
    assert bank.transfers.CreateTransfer(request) == done
    source = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=alice.account_id))
    target = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob.account_id))
    assert (source.balance, source.reserved, target.balance) == (60, 0, 40)


def test_restarted_transfer_service_drives_unfinished_transfers_to_the_end(own_bank):
    bank = own_bank
    alice, bob = new_account(bank, 100), new_account(bank)
    assert bank.account.stop() == 0
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for transfer_id in ids:
        request = tpb.CreateTransferRequest(
            transfer_id=transfer_id,
            from_account_id=alice.account_id,
            to_account_id=bob.account_id,
            amount=10,
        )
        code, _, _ = refusal(
            lambda request=request: bank.transfers.CreateTransfer(request, timeout=1)
        )
        assert code == StatusCode.UNAVAILABLE
    bank.transfer.kill()
    bank.account.start()
    bank.transfer.start()
    for transfer_id in ids:
        assert _wait_for_state(bank, transfer_id, tpb.TRANSFER_STATE_COMPLETED).state == (
            tpb.TRANSFER_STATE_COMPLETED
        )
    source = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=alice.account_id))
    target = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob.account_id))
    assert (source.balance, source.reserved, target.balance) == (70, 0, 30)


def test_account_state_survives_a_kill(own_bank):
    bank = own_bank
    account = new_account(bank, 123)
    bank.account.kill()
    bank.account.start()
    again = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account.account_id))
    assert (again.balance, again.version) == (123, 2)


def test_sigterm_stops_both_services_with_exit_code_zero(own_bank):
    assert own_bank.transfer.stop() == 0
    assert own_bank.account.stop() == 0


def test_a_transfer_stuck_on_a_peer_that_is_down_is_listed_with_its_retries(own_bank):
    bank = own_bank
    alice, bob = new_account(bank, 100), new_account(bank)
    assert bank.account.stop() == 0
    request = tpb.CreateTransferRequest(
        transfer_id=str(uuid.uuid4()),
        from_account_id=alice.account_id,
        to_account_id=bob.account_id,
        amount=25,
    )
    code, _, _ = refusal(lambda: bank.transfers.CreateTransfer(request, timeout=1.5))
    assert code == StatusCode.UNAVAILABLE
    deadline = time.monotonic() + 10
    while True:
        listed = bank.transfers.ListUnfinishedTransfers(tpb.ListUnfinishedTransfersRequest())
        stuck = [u for u in listed.transfers if u.transfer.transfer_id == request.transfer_id]
        if (stuck and stuck[0].attempts >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(stuck) == 1
    assert stuck[0].step == "reserve"
    assert stuck[0].transfer.state == tpb.TRANSFER_STATE_REQUESTED
    assert stuck[0].attempts >= 2 and "UNAVAILABLE" in stuck[0].last_error.upper()
    assert stuck[0].last_attempt_at.seconds > 0

    bank.account.start()
    done = _wait_for_state(bank, request.transfer_id, tpb.TRANSFER_STATE_COMPLETED)
    assert done.state == tpb.TRANSFER_STATE_COMPLETED
    listed = bank.transfers.ListUnfinishedTransfers(tpb.ListUnfinishedTransfersRequest())
    assert request.transfer_id not in {u.transfer.transfer_id for u in listed.transfers}
