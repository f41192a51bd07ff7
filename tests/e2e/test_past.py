"""GetAccount as of a version or an instant, against real processes: the account as it
stood then (balances, limit, status, version, the reservations open then), the present
beyond it, ACCOUNT_NOT_FOUND before the opening; checkpoints kept by the running service
and read back after a restart."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import StatusCode

from account_service.streams import stream_id
from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from tests.e2e.conftest import new_account, refusal
from tests.e2e.harness import Bank, running, sqlite_bank

pytestmark = pytest.mark.e2e

CHECKPOINT_EVERY = 4


@pytest.fixture
def past_bank(tmp_path: Path) -> Iterator[Bank]:
    """A bank whose account service keeps a checkpoint every few versions."""
    bank = sqlite_bank(tmp_path, account_args=["--checkpoint-every", str(CHECKPOINT_EVERY)])
    with running(bank) as started:
        yield started


def at_version(bank: Bank, account_id: str, version: int) -> apb.Account:
    request = apb.GetAccountRequest(account_id=account_id, as_of_version=version)
    return bank.accounts.GetAccount(request)


def at_time(bank: Bank, account_id: str, when: Timestamp) -> apb.Account:
    request = apb.GetAccountRequest(account_id=account_id)
    request.as_of_time.CopyFrom(when)
    return bank.accounts.GetAccount(request)


def events(bank: Bank, account_id: str) -> list[apb.AccountEvent]:
    request = apb.ListAccountEventsRequest(account_id=account_id, page_size=1000)
    return list(bank.accounts.ListAccountEvents(request).events)


def standing(account: apb.Account) -> tuple:
    return (
        account.balance,
        account.reserved,
        account.available,
        account.overdraft_limit,
        account.status,
        account.version,
        [(r.reference, r.amount) for r in account.reservations],
    )


def deposit(bank: Bank, account_id: str, amount: int) -> apb.Account:
    request = apb.DepositRequest(account_id=account_id, amount=amount, request_id=str(uuid.uuid4()))
    return bank.accounts.Deposit(request)


def test_every_version_answers_the_balances_it_left(past_bank: Bank) -> None:
    ada = new_account(past_bank, 100).account_id
    bob = new_account(past_bank).account_id
    states = {2: at_version(past_bank, ada, 2)}
    for n in range(1, 6):
        past_bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(from_account_id=ada, to_account_id=bob, amount=n)
        )
        deposit(past_bank, ada, 10 * n)
    history = events(past_bank, ada)
    for event in history:
        past = at_version(past_bank, ada, event.version)
        assert (past.version, past.balance, past.reserved) == (
            event.version,
            event.balance_after,
            event.reserved_after,
        )
        assert past.available == past.balance - past.reserved
    assert standing(at_version(past_bank, ada, 2)) == standing(states[2])


def test_the_reservations_open_then_are_shown_with_their_time(past_bank: Bank) -> None:
    ada = new_account(past_bank, 100).account_id
    bob = new_account(past_bank).account_id
    held = past_bank.transfers.CreateTransfer(
        tpb.CreateTransferRequest(from_account_id=ada, to_account_id=bob, amount=30, pending=True)
    )
    (reserved,) = [e for e in events(past_bank, ada) if e.type == apb.ACCOUNT_EVENT_TYPE_RESERVED]
    past_bank.transfers.VoidTransfer(tpb.VoidTransferRequest(transfer_id=held.transfer_id))
    deposit(past_bank, ada, 5)
    then = at_version(past_bank, ada, reserved.version)
    assert [(r.reference, r.amount, r.reserved_at) for r in then.reservations] == [
        (held.transfer_id, 30, reserved.occurred_at)
    ]
    assert (then.balance, then.reserved, then.available) == (100, 30, 70)
    now = past_bank.accounts.GetAccount(apb.GetAccountRequest(account_id=ada))
    assert (list(now.reservations), now.balance) == ([], 105)


def test_an_instant_answers_what_was_recorded_by_then(past_bank: Bank) -> None:
    ada = new_account(past_bank).account_id
    for amount in (10, 20, 30, 40, 50, 60):
        deposit(past_bank, ada, amount)
        time.sleep(0.002)
    for event in events(past_bank, ada)[1:]:
        assert at_time(past_bank, ada, event.occurred_at).balance == event.balance_after
        just_before = Timestamp()
        just_before.FromDatetime(event.occurred_at.ToDatetime(UTC) - timedelta(microseconds=1))
        assert at_time(past_bank, ada, just_before).balance == event.balance_after - (event.amount)


def test_beyond_the_present_is_the_present(bank: Bank) -> None:
    account = new_account(bank, 70)
    later = Timestamp()
    later.FromDatetime(datetime.now(UTC) + timedelta(days=365))
    assert standing(at_version(bank, account.account_id, account.version + 100)) == standing(
        account
    )
    assert standing(at_time(bank, account.account_id, later)) == standing(account)


def test_before_the_opening_the_account_is_not_found(bank: Bank) -> None:
    account_id = str(uuid.uuid4())
    source = new_account(bank, 50).account_id
    # A transfer to an account not opened yet: its refused credit is stored on that account.
    failed = refusal(
        lambda: bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(from_account_id=source, to_account_id=account_id, amount=5)
        )
    )
    assert failed[1] == "ACCOUNT_NOT_FOUND"
    bank.accounts.OpenAccount(
        apb.OpenAccountRequest(account_id=account_id, owner="Ada", currency="EUR")
    )
    history = events(bank, account_id)
    assert [e.type for e in history] == [
        apb.ACCOUNT_EVENT_TYPE_STEP_REFUSED,
        apb.ACCOUNT_EVENT_TYPE_OPENED,
    ]
    assert refusal(lambda: at_version(bank, account_id, 1))[:2] == (
        StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )
    assert refusal(lambda: at_time(bank, account_id, history[0].occurred_at))[1] == (
        "ACCOUNT_NOT_FOUND"
    )
    long_ago = Timestamp(seconds=0)
    assert refusal(lambda: at_time(bank, account_id, long_ago))[1] == "ACCOUNT_NOT_FOUND"
    assert at_version(bank, account_id, 2).status == apb.ACCOUNT_STATUS_OPEN
    assert refusal(lambda: at_version(bank, str(uuid.uuid4()), 1))[1] == "ACCOUNT_NOT_FOUND"


def test_the_limit_and_the_status_of_then(bank: Bank) -> None:
    account_id = new_account(bank, 10).account_id
    bank.accounts.SetOverdraftLimit(
        apb.SetOverdraftLimitRequest(account_id=account_id, overdraft_limit=500, request_id="l")
    )
    bank.accounts.Withdraw(apb.WithdrawRequest(account_id=account_id, amount=10, request_id="w"))
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=account_id))
    assert (
        at_version(bank, account_id, 2).overdraft_limit,
        at_version(bank, account_id, 2).available,
    ) == (0, 10)
    assert at_version(bank, account_id, 3).available == 510
    assert at_version(bank, account_id, 4).status == apb.ACCOUNT_STATUS_OPEN
    assert at_version(bank, account_id, 5).status == apb.ACCOUNT_STATUS_CLOSED


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"as_of_version": -1}, "as_of_version"),
        ({"as_of_version": 3, "as_of_time": Timestamp(seconds=5)}, "as_of_time"),
        ({"as_of_time": Timestamp(seconds=0, nanos=-1)}, "as_of_time"),
        ({"as_of_time": Timestamp(seconds=0, nanos=1_000_000_000)}, "as_of_time"),
        ({"as_of_time": Timestamp(seconds=253_402_300_800)}, "as_of_time"),
    ],
)
def test_a_bad_point_in_the_past_is_invalid_argument(bank: Bank, change: dict, field: str) -> None:
    account_id = new_account(bank).account_id
    request = apb.GetAccountRequest(account_id=account_id, **change)
    assert refusal(lambda: bank.accounts.GetAccount(request)) == (
        StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        {"field": field},
    )


def test_the_running_service_keeps_checkpoints_and_a_restart_reads_them(
    past_bank: Bank,
) -> None:
    account_id = new_account(past_bank).account_id
    for amount in range(1, 12):
        deposit(past_bank, account_id, amount)
    with sqlite3.connect(past_bank.accounts_db.removeprefix("sqlite:///")) as db:
        kept = [
            v
            for (v,) in db.execute(
                "SELECT version FROM checkpoints WHERE stream_id = ? ORDER BY version",
                (stream_id(account_id),),
            )
        ]
    db.close()
    assert kept == [4, 8, 12]
    before = {v: standing(at_version(past_bank, account_id, v)) for v in range(1, 13)}
    assert past_bank.account is not None
    past_bank.account.stop()
    past_bank.account.start()
    assert {v: standing(at_version(past_bank, account_id, v)) for v in range(1, 13)} == before
    assert before[9][0] == sum(range(1, 9))  # opened, then eight deposits
