"""``bank audit`` on the stores of a real bank: clean after real transfers, loud on damage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from event_store import NewEvent, open_store
from tests.e2e.conftest import new_account, refusal

pytestmark = pytest.mark.e2e


def bank_audit(accounts_db: str, transfers_db: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bank_cli", "audit", "--accounts-db", accounts_db,
         "--transfers-db", transfers_db, *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def copy_store(url: str, into: Path) -> str:
    """A copy of a SQLite store (with its WAL, if any), as a URL."""
    source = Path(url.removeprefix("sqlite:///"))
    into.mkdir(exist_ok=True)
    for part in source.parent.glob(source.name + "*"):
        shutil.copy2(part, into / part.name)
    return f"sqlite:///{into / source.name}"


def append_account_event(url: str, account_id: str, kind: str, data: dict) -> None:
    store = open_store(url)
    try:
        stream = "account-" + account_id
        version = store.stream_version(stream)
        last = store.read_stream(stream, after_version=version - 1)[0].data
        balance = last["balance_after"]
        if kind == "ReservationCaptured":
            balance -= data["amount"]
        elif kind == "Credited":
            balance += data["amount"]
        # Running balances that agree with the planted event: the damage is in the protocol.
        full = {**data, "balance_after": balance, "reserved_after": last["reserved_after"]}
        store.append(stream, version, [NewEvent(kind, full)])
    finally:
        store.close()


@pytest.fixture
def history(own_bank):
    """A bank that ran completed, refused and compensated transfers, then stopped."""
    bank = own_bank
    ada, bob = new_account(bank, 1_000, owner="Ada"), new_account(bank, 50, owner="Bob")
    carol = new_account(bank, owner="Carol")
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=carol.account_id))

    def transfer(source, target, amount: int) -> tpb.CreateTransferRequest:
        return tpb.CreateTransferRequest(
            transfer_id=str(uuid.uuid4()),
            from_account_id=source.account_id,
            to_account_id=target.account_id,
            amount=amount,
        )

    completed = transfer(ada, bob, 300)
    assert bank.transfers.CreateTransfer(completed).state == tpb.TRANSFER_STATE_COMPLETED
    back = transfer(bob, ada, 100)
    assert bank.transfers.CreateTransfer(back).state == tpb.TRANSFER_STATE_COMPLETED
    for request, reason in (
        (transfer(ada, carol, 40), "ACCOUNT_CLOSED"),  # reserved, credit refused, released
        (transfer(bob, ada, 10_000), "INSUFFICIENT_FUNDS"),  # nothing reserved
    ):
        _, got, _ = refusal(lambda request=request: bank.transfers.CreateTransfer(request))
        assert got == reason
    bank.accounts.Withdraw(
        apb.WithdrawRequest(account_id=ada.account_id, amount=25, request_id="cash")
    )
    assert bank.stop() == {"transfer_service": 0, "account_service": 0}
    return bank, {"ada": ada.account_id, "bob": bob.account_id, "completed": completed}


def test_a_clean_bank_passes(history):
    bank, _ = history
    done = bank_audit(bank.accounts_db, bank.transfers_db)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "violations: 0" in done.stdout
    assert done.stdout.rstrip().endswith("OK")

    report = json.loads(bank_audit(bank.accounts_db, bank.transfers_db, "--json").stdout)
    assert report["ok"] is True
    assert report["transfer_states"] == {"COMPLETED": 2, "FAILED": 2}
    assert list(report["totals"]) == ["EUR"]
    totals = report["totals"]["EUR"]
    assert (totals["deposits"], totals["withdrawals"]) == (1_050, 25)
    assert (totals["credits"], totals["captures"], totals["in_transit"]) == (400, 400, 0)
    assert totals["balances"] == totals["expected_balances"] == 1_025
    assert (totals["reserved"], report["in_flight"]) == (0, [])


def test_money_is_totalled_per_currency(own_bank):
    bank = own_bank
    ada, bob = new_account(bank, 1_000, owner="Ada"), new_account(bank, owner="Bob")
    dan = new_account(bank, 500, currency="USD", owner="Dan")
    eve = new_account(bank, currency="USD", owner="Eve")
    for source, target, amount in ((ada, bob, 300), (dan, eve, 200)):
        request = tpb.CreateTransferRequest(
            transfer_id=str(uuid.uuid4()),
            from_account_id=source.account_id,
            to_account_id=target.account_id,
            amount=amount,
        )
        assert bank.transfers.CreateTransfer(request).state == tpb.TRANSFER_STATE_COMPLETED
    assert bank.stop() == {"transfer_service": 0, "account_service": 0}

    done = bank_audit(bank.accounts_db, bank.transfers_db)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "money in EUR: deposits 1000, withdrawals 0, credits 300, captures 300" in done.stdout
    assert "money in USD: deposits 500, withdrawals 0, credits 200, captures 200" in done.stdout
    totals = json.loads(bank_audit(bank.accounts_db, bank.transfers_db, "--json").stdout)["totals"]
    assert {code: (t["deposits"], t["balances"]) for code, t in totals.items()} == {
        "EUR": (1_000, 1_000),
        "USD": (500, 500),
    }


def test_a_second_capture_planted_in_a_copy_is_named(history, tmp_path):
    bank, ids = history
    accounts_copy = copy_store(bank.accounts_db, tmp_path / "planted")
    completed = ids["completed"]
    append_account_event(
        accounts_copy,
        ids["ada"],
        "ReservationCaptured",
        {"amount": completed.amount, "reference": completed.transfer_id},
    )

    done = bank_audit(accounts_copy, bank.transfers_db)
    assert done.returncode == 1, done.stdout + done.stderr
    for kind in ("duplicate-reference", "settled-without-hold", "unexpected-effect"):
        assert f"[{kind}]" in done.stdout, done.stdout
    assert f"transfer {completed.transfer_id}: COMPLETED but 2 ReservationCaptured" in done.stdout
    assert done.stdout.rstrip().endswith("FAILED")
    # The original store is untouched and still passes.
    assert bank_audit(bank.accounts_db, bank.transfers_db).returncode == 0


def test_a_credit_with_no_transfer_planted_in_a_copy_is_named(history, tmp_path):
    bank, ids = history
    accounts_copy = copy_store(bank.accounts_db, tmp_path / "planted")
    stray = str(uuid.uuid4())
    append_account_event(accounts_copy, ids["bob"], "Credited", {"amount": 7, "reference": stray})

    report = json.loads(bank_audit(accounts_copy, bank.transfers_db, "--json").stdout)
    assert report["ok"] is False
    kinds = {(v["kind"], v["subject"]) for v in report["violations"]}
    assert ("unknown-transfer", f"account {ids['bob']}") in kinds
    assert ("in-transit-mismatch", "bank") in kinds
    assert any(stray in v["detail"] for v in report["violations"])


def test_a_store_that_is_not_there_is_an_error_and_is_not_created(history, tmp_path):
    bank, _ = history
    missing = tmp_path / "no-such-accounts.db"
    done = bank_audit(f"sqlite:///{missing}", bank.transfers_db)
    assert done.returncode == 2
    assert "no such database file" in done.stderr
    assert not missing.exists()
