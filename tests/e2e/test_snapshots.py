"""Snapshots on a real account service: a restart starts from them, and a snapshot that
cannot be trusted is passed over for the events, which stay the truth."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import StatusCode

from account_service.snapshots import SNAPSHOT_COST_RATIO
from account_service.streams import stream_id
from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc
from event_store import SqliteEventStore
from tests.e2e.conftest import new_account, refusal
from tests.e2e.harness import Bank, running, sqlite_bank

SNAPSHOT_EVERY = 250
DEPOSITS = 3000
IN_FLIGHT = 100


@pytest.fixture
def snapshot_bank(tmp_path: Path) -> Iterator[Bank]:
    bank = sqlite_bank(tmp_path, account_args=["--snapshot-every", str(SNAPSHOT_EVERY)])
    with running(bank) as started:
        yield started


def _db_path(bank: Bank) -> str:
    return bank.accounts_db.removeprefix("sqlite:///")


def _snapshot_version(bank: Bank, account_id: str) -> int:
    store = SqliteEventStore(bank.accounts_db)
    try:
        snapshot = store.load_snapshot(stream_id(account_id))
    finally:
        store.close()
    return 0 if snapshot is None else snapshot.version


def _write_snapshot(bank: Bank, account_id: str, version: int, data: str) -> None:
    """Puts a snapshot row in place as it is, behind the service's back."""
    with sqlite3.connect(_db_path(bank)) as db:
        db.execute(
            "INSERT INTO snapshots (stream_id, version, data) VALUES (?, ?, ?)"
            " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,"
            " data = excluded.data",
            (stream_id(account_id), version, data),
        )
    db.close()


def _read_snapshot(bank: Bank, account_id: str) -> tuple[int, dict]:
    with sqlite3.connect(_db_path(bank)) as db:
        version, data = db.execute(
            "SELECT version, data FROM snapshots WHERE stream_id = ?", (stream_id(account_id),)
        ).fetchone()
    db.close()
    return version, json.loads(data)


async def _deposit_many(address: str, account_id: str, amounts: list[int]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = account_pb2_grpc.AccountServiceStub(channel)
        pending = iter(enumerate(amounts))

        async def worker() -> None:
            for n, amount in pending:
                await stub.Deposit(
                    apb.DepositRequest(account_id=account_id, amount=amount, request_id=f"d-{n}"),
                    timeout=60,
                )

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


def _history(bank: Bank, account_id: str) -> list[apb.AccountEvent]:
    events: list[apb.AccountEvent] = []
    token = ""
    while True:
        page = bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=account_id, page_size=1000, page_token=token)
        )
        events += page.events
        token = page.next_page_token
        if not token:
            return events


def _get(bank: Bank, account_id: str) -> apb.Account:
    return bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account_id))


def _without_reservations(account: apb.Account) -> apb.Account:
    """As the commands answer: only GetAccount lists the open reservations."""
    copy = apb.Account()
    copy.CopyFrom(account)
    copy.ClearField("reservations")
    return copy


def _restart_accounts(bank: Bank) -> None:
    assert bank.account is not None
    assert bank.account.stop() == 0
    bank.account.start()


def _long_account(bank: Bank) -> apb.Account:
    """An account with DEPOSITS deposits made IN_FLIGHT at a time, two settled
    reservations and two open ones."""
    assert bank.account is not None
    account = new_account(bank, 1_000)
    amounts = [1 + n % 7 for n in range(DEPOSITS)]
    asyncio.run(_deposit_many(bank.account.address, account.account_id, amounts))
    reservations = bank.reservations
    for n in range(4):
        reservations.Reserve(
            apb.ReserveRequest(account_id=account.account_id, reference=f"t-{n}", amount=10 + n)
        )
    reservations.Capture(apb.CaptureRequest(account_id=account.account_id, reference="t-0"))
    reservations.Release(apb.ReleaseRequest(account_id=account.account_id, reference="t-1"))
    bank.accounts.Withdraw(
        apb.WithdrawRequest(account_id=account.account_id, amount=5, request_id="w-0")
    )
    return _get(bank, account.account_id)


def _latest_due(version: int) -> int:
    """The oldest version the newest snapshot of an account at ``version`` may have.

    Snapshots are at least SNAPSHOT_EVERY apart, and at least a tenth of the references
    the account remembers; it remembers at most one per event, so ``version`` bounds that.
    """
    return version - max(SNAPSHOT_EVERY, version // SNAPSHOT_COST_RATIO)


def _wait_for_snapshot(bank: Bank, account_id: str, at_least: int) -> int:
    deadline = time.monotonic() + 30
    while (version := _snapshot_version(bank, account_id)) < at_least:
        assert time.monotonic() < deadline, f"no snapshot at {at_least} or later: {version}"
        time.sleep(0.1)
    return version


def test_a_restarted_service_has_every_account_as_it_was(snapshot_bank: Bank) -> None:
    bank = snapshot_bank
    before = _long_account(bank)
    account_id = before.account_id
    total = 2 + DEPOSITS + 4 + 2 + 1
    assert before.version == total
    assert before.balance == 1_000 + sum(1 + n % 7 for n in range(DEPOSITS)) - 10 - 5
    assert before.reserved == 12 + 13
    history = _history(bank, account_id)
    snapshotted = _wait_for_snapshot(bank, account_id, _latest_due(total))
    assert snapshotted <= total

    _restart_accounts(bank)

    assert _get(bank, account_id) == before
    assert _history(bank, account_id) == history
    assert [e.version for e in history] == list(range(1, total + 1))
    deposits = [e for e in history if e.type == apb.ACCOUNT_EVENT_TYPE_DEPOSITED]
    assert sorted(e.reference for e in deposits) == sorted(
        ["opening", *(f"d-{n}" for n in range(DEPOSITS))]
    )
    # The memory of every reference came through: repeats store nothing, reuse is refused.
    repeat = bank.accounts.Deposit(
        apb.DepositRequest(account_id=account_id, amount=1 + 17 % 7, request_id="d-17")
    )
    assert repeat == _without_reservations(before)
    code, reason, _ = refusal(
        lambda: bank.accounts.Deposit(
            apb.DepositRequest(account_id=account_id, amount=99, request_id="d-17")
        )
    )
    assert (code, reason) == (StatusCode.ALREADY_EXISTS, "REFERENCE_REUSED")
    captured = bank.reservations.Capture(apb.CaptureRequest(account_id=account_id, reference="t-0"))
    assert captured.version == total
    # And the account carries on from there.
    after = bank.reservations.Capture(apb.CaptureRequest(account_id=account_id, reference="t-2"))
    assert (after.version, after.balance, after.reserved) == (
        total + 1,
        before.balance - 12,
        13,
    )


def test_a_restart_starts_from_the_snapshot(snapshot_bank: Bank) -> None:
    """Shown by a snapshot altered behind the service's back: its owner is what the
    restarted service reports, so the events before it were not replayed."""
    bank = snapshot_bank
    before = _long_account(bank)
    account_id = before.account_id
    _wait_for_snapshot(bank, account_id, _latest_due(before.version))
    assert bank.account is not None
    assert bank.account.stop() == 0
    version, data = _read_snapshot(bank, account_id)
    data["owner"] = "as the snapshot has it"
    _write_snapshot(bank, account_id, version, json.dumps(data))
    bank.account.start()

    after = _get(bank, account_id)
    assert after.owner == "as the snapshot has it"
    before.owner = after.owner
    assert after == before


def _plain_account(bank: Bank) -> apb.Account:
    account = new_account(bank, 500)
    for n in range(5):
        account = bank.accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=1, request_id=f"p-{n}")
        )
    return bank.reservations.Reserve(
        apb.ReserveRequest(account_id=account.account_id, reference="hold", amount=7)
    )


def test_a_snapshot_that_cannot_be_trusted_is_passed_over(snapshot_bank: Bank) -> None:
    bank = snapshot_bank
    accounts = [_plain_account(bank) for _ in range(5)]
    expected = {a.account_id: _get(bank, a.account_id) for a in accounts}
    histories = {a.account_id: _history(bank, a.account_id) for a in accounts}
    assert bank.account is not None
    assert bank.account.stop() == 0
    unknown, garbled, not_json, ahead, foreign = (a.account_id for a in accounts)
    lie = {"format": 99, "version": 8, "balance": 10**9}
    _write_snapshot(bank, unknown, 8, json.dumps(lie))
    _write_snapshot(bank, garbled, 8, json.dumps({"format": 1, "version": 8, "owner": 5}))
    _write_snapshot(bank, not_json, 8, "{not json")
    # Well formed, but of a version the stream never reached.
    valid = {
        "format": 1,
        "account_id": ahead,
        "version": 50,
        "owner": "Ada",
        "currency": "EUR",
        "status": "open",
        "balance": 10**9,
        "holds": [],
        "deposits": [[], []],
        "withdrawals": [[], []],
        "credits": [[], []],
        "captured": [[], []],
        "released": [[], []],
    }
    _write_snapshot(bank, ahead, 50, json.dumps(valid))
    # Well formed, but of another account.
    _write_snapshot(bank, foreign, 8, json.dumps({**valid, "account_id": str(uuid.uuid4())}))
    bank.account.start()

    for account_id, account in expected.items():
        assert _get(bank, account_id) == account
        assert _history(bank, account_id) == histories[account_id]
        # Still working on the stored state.
        moved = bank.reservations.Capture(
            apb.CaptureRequest(account_id=account_id, reference="hold")
        )
        assert (moved.version, moved.balance, moved.reserved) == (
            account.version + 1,
            account.balance - 7,
            0,
        )
    log = bank.account.log()
    assert log.count("not used") >= 4, log
    assert "ahead of its stream" in log, log
