"""Both services on Postgres: the happy path, a refusal, and state that outlives a kill."""

from __future__ import annotations

import pytest
from grpc import StatusCode

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from tests.e2e.conftest import new_account, refusal

pytestmark = pytest.mark.postgres


def test_transfer_refusal_and_restart_on_postgres(pg_bank):
    alice, bob = new_account(pg_bank, 1_000), new_account(pg_bank)
    done = pg_bank.transfers.CreateTransfer(
        tpb.CreateTransferRequest(
            from_account_id=alice.account_id, to_account_id=bob.account_id, amount=400
        )
    )
    assert done.state == tpb.TRANSFER_STATE_COMPLETED
    code, reason, _ = refusal(
        lambda: pg_bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=alice.account_id, to_account_id=bob.account_id, amount=601
            )
        )
    )
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")

    pg_bank.account.kill()
    pg_bank.account.start()
    source = pg_bank.accounts.GetAccount(apb.GetAccountRequest(account_id=alice.account_id))
    target = pg_bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob.account_id))
    assert (source.balance, source.reserved, target.balance) == (600, 0, 400)
    listed = pg_bank.transfers.ListTransfers(tpb.ListTransfersRequest(account_id=bob.account_id))
    assert [t.state for t in listed.transfers] == [
        tpb.TRANSFER_STATE_FAILED,
        tpb.TRANSFER_STATE_COMPLETED,
    ]
