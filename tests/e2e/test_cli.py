"""The bank command against both services as real processes.

Most commands run in this process (``bank_cli.__main__.main``), their output captured;
``watch`` and one plain call run as subprocesses, as a person would start them.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.__main__ import main
from bank_cli.harness import free_port

pytestmark = pytest.mark.e2e


def _open(bank_cli, owner: str = "Ada", currency: str = "EUR", balance: int = 0) -> str:
    result = bank_cli("open", "--owner", owner, "--currency", currency, "--json")
    assert result.status == 0, result.err
    account_id = result.json()["account_id"]
    if balance:
        assert bank_cli("deposit", account_id, str(balance)).status == 0
    return account_id


def _field(text: str, name: str) -> str:
    match = re.search(rf"^{name}\s+(.+?)\s*$", text, re.MULTILINE)
    assert match, f"no {name!r} in:\n{text}"
    return match.group(1)


# --------------------------------------------------------------------------- happy path


def test_happy_path_as_tables(bank_cli):
    opened = bank_cli("open", "--owner", "Ada", "--currency", "eur")
    assert opened.status == 0, opened.err
    ada = re.search(r"^opened account (\S+)$", opened.out, re.MULTILINE).group(1)
    assert uuid.UUID(ada)
    assert _field(opened.out, "owner") == "Ada"
    assert _field(opened.out, "balance") == "0.00 EUR"
    bob = str(uuid.uuid4())
    opened = bank_cli("open", "--owner", "Bob", "--currency", "EUR", "--account-id", bob)
    assert (opened.status, _field(opened.out, "account")) == (0, bob)

    deposited = bank_cli("deposit", ada, "10000")
    assert deposited.status == 0, deposited.err
    request_id = re.search(r"^deposited 100\.00 EUR \(request id (\S+)\)$", deposited.out, re.M)
    assert request_id and uuid.UUID(request_id.group(1))
    assert _field(deposited.out, "available") == "100.00 EUR"

    moved = bank_cli("transfer", ada, bob, "2500")
    assert moved.status == 0, moved.err
    assert f"transferred 25.00 EUR from {ada} to {bob}" in moved.out
    assert _field(moved.out, "state") == "COMPLETED"
    transfer_id = _field(moved.out, "transfer")

    shown = bank_cli("show", ada)
    assert shown.status == 0
    assert _field(shown.out, "balance") == "75.00 EUR"
    assert _field(shown.out, "reserved") == "0.00 EUR"
    assert _field(shown.out, "available") == "75.00 EUR"
    assert _field(shown.out, "status") == "OPEN"
    assert _field(shown.out, "version") == "4"
    assert "no open reservations" in shown.out

    history = bank_cli("history", ada)
    assert history.status == 0
    lines = history.out.splitlines()
    assert lines[0].split() == [
        "VERSION",
        "TIME",
        "TYPE",
        "AMOUNT",
        "BALANCE",
        "RESERVED",
        "REFERENCE",
    ]
    types = [line.split()[3] for line in lines[1:]]
    assert types == ["OPENED", "DEPOSITED", "RESERVED", "RESERVATION_CAPTURED"]
    assert "+100.00 EUR" in lines[2]
    assert "-25.00 EUR" in lines[4] and lines[4].rstrip().endswith(transfer_id)

    listed = bank_cli("transfers", ada)
    assert listed.status == 0
    (row,) = listed.out.splitlines()[1:]
    assert transfer_id in row and "out" in row and bob in row
    assert "25.00 EUR" in row and "COMPLETED" in row
    incoming = bank_cli("transfers", bob).out.splitlines()[1]
    assert transfer_id in incoming and " in " in incoming and ada in incoming

    assert bank_cli("withdraw", ada, "7500").status == 0
    closed = bank_cli("close", ada)
    assert closed.status == 0, closed.err
    assert f"closed account {ada}" in closed.out
    assert _field(closed.out, "status") == "CLOSED"


def test_happy_path_as_json(bank_cli):
    ada = _open(bank_cli, "Ada")
    bob = _open(bank_cli, "Bob")

    deposited = bank_cli("deposit", ada, "10000", "--request-id", "salary-1", "--json").json()
    assert deposited["request_id"] == "salary-1"
    assert deposited["account"]["balance"] == "10000"
    assert deposited["account"]["version"] == "2"

    transfer_id = str(uuid.uuid4())
    moved = bank_cli("transfer", ada, bob, "2500", "--transfer-id", transfer_id, "--json").json()
    assert moved["transfer_id"] == transfer_id
    assert (moved["from_account_id"], moved["to_account_id"]) == (ada, bob)
    assert (moved["amount"], moved["currency"]) == ("2500", "EUR")
    assert moved["state"] == "TRANSFER_STATE_COMPLETED"
    assert moved["failure_reason"] == ""

    account = bank_cli("show", ada, "--json").json()
    assert account["account_id"] == ada
    assert (account["balance"], account["reserved"], account["available"]) == ("7500", "0", "7500")
    assert account["status"] == "ACCOUNT_STATUS_OPEN"
    assert account["reservations"] == []

    history = bank_cli("history", ada, "--json").json()
    assert (history["account_id"], history["currency"]) == (ada, "EUR")
    assert [e["type"] for e in history["events"]] == [
        "ACCOUNT_EVENT_TYPE_OPENED",
        "ACCOUNT_EVENT_TYPE_DEPOSITED",
        "ACCOUNT_EVENT_TYPE_RESERVED",
        "ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED",
    ]
    assert history["events"][1]["reference"] == "salary-1"
    assert history["events"][3]["balance_after"] == "7500"

    listed = bank_cli("transfers", bob, "--json").json()
    assert listed["account_id"] == bob
    assert [t["transfer_id"] for t in listed["transfers"]] == [transfer_id]

    assert bank_cli("withdraw", ada, "7500", "--json").json()["account"]["balance"] == "0"
    closed = bank_cli("close", ada, "--json").json()
    assert closed["status"] == "ACCOUNT_STATUS_CLOSED"


def test_show_lists_open_reservations_with_their_age(bank, bank_cli):
    ada = _open(bank_cli, balance=1000)
    reference = str(uuid.uuid4())
    bank.reservations.Reserve(apb.ReserveRequest(account_id=ada, reference=reference, amount=250))
    shown = bank_cli("show", ada)
    assert _field(shown.out, "reserved") == "2.50 EUR"
    assert _field(shown.out, "available") == "7.50 EUR"
    (row,) = shown.out.split("open reservations:\n")[1].splitlines()[1:]
    assert row.startswith(reference)
    assert "2.50 EUR" in row
    assert re.search(r"\d+s$", row)
    as_json = bank_cli("show", ada, "--json").json()
    assert as_json["reservations"][0]["reference"] == reference
    assert as_json["reservations"][0]["amount"] == "250"
    bank.reservations.Release(apb.ReleaseRequest(account_id=ada, reference=reference))


def test_history_pages_through_every_event_and_stops_at_the_limit(bank, bank_cli):
    ada = _open(bank_cli)
    for n in range(24):
        bank.accounts.Deposit(apb.DepositRequest(account_id=ada, amount=n + 1, request_id=f"d{n}"))
    everything = bank_cli("history", ada, "--page-size", "5", "--json").json()["events"]
    assert [int(e["version"]) for e in everything] == list(range(1, 26))
    first = bank_cli("history", ada, "--page-size", "4", "--limit", "10", "--json").json()
    assert [int(e["version"]) for e in first["events"]] == list(range(1, 11))
    table = bank_cli("history", ada, "--page-size", "3", "--limit", "7")
    assert len(table.out.splitlines()) == 1 + 7
    assert "--limit to see more" in table.err


def test_transfers_are_listed_newest_first_and_limited(bank_cli):
    ada = _open(bank_cli, balance=1000)
    bob = _open(bank_cli, "Bob")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for n, transfer_id in enumerate(ids):
        assert bank_cli("transfer", ada, bob, str(n + 1), "--transfer-id", transfer_id).status == 0
    listed = bank_cli("transfers", ada, "--page-size", "2", "--json").json()["transfers"]
    assert [t["transfer_id"] for t in listed] == ids[::-1]
    newest = bank_cli("transfers", ada, "--limit", "1", "--json").json()["transfers"]
    assert [t["transfer_id"] for t in newest] == [ids[-1]]


def test_overdraft_sets_the_limit_and_show_shows_it(bank_cli):
    ada = _open(bank_cli, balance=1000)
    set_ = bank_cli("overdraft", ada, "50000", "--request-id", "limit-1")
    assert set_.status == 0, set_.err
    assert "overdraft limit set to 500.00 EUR (request id limit-1)" in set_.out
    shown = bank_cli("show", ada)
    assert _field(shown.out, "overdraft limit") == "500.00 EUR"
    assert _field(shown.out, "available") == "510.00 EUR"
    assert bank_cli("withdraw", ada, "51000").status == 0
    assert _field(bank_cli("show", ada).out, "balance") == "-500.00 EUR"
    as_json = bank_cli("show", ada, "--json").json()
    assert (as_json["overdraft_limit"], as_json["available"]) == ("50000", "0")
    again = bank_cli("overdraft", ada, "50000", "--request-id", "limit-1", "--json").json()
    assert (again["request_id"], again["account"]["version"]) == ("limit-1", as_json["version"])
    reused = bank_cli("overdraft", ada, "0", "--request-id", "limit-1")
    assert reused.status == 1, reused.err
    lowered = bank_cli("overdraft", ada, "0", "--json").json()["account"]
    assert (lowered["overdraft_limit"], lowered["available"]) == ("0", "-50000")
    refused = bank_cli("withdraw", ada, "1")
    assert refused.status == 1
    assert "insufficient funds" in refused.err


@pytest.mark.parametrize("limit", ["-1", "1.5", "lots"])
def test_overdraft_with_a_bad_limit_is_a_usage_error(bank_cli, capsys, limit):
    ada = _open(bank_cli)
    with pytest.raises(SystemExit) as exited:
        bank_cli("overdraft", ada, limit)
    assert exited.value.code == 2
    assert "LIMIT" in capsys.readouterr().err


def _now() -> str:
    time.sleep(0.005)
    instant = datetime.now(UTC).isoformat()
    time.sleep(0.005)
    return instant


def test_statement_between_two_instants(bank, bank_cli):
    ada = _open(bank_cli, "Ada", balance=10000)
    bob = _open(bank_cli, "Bob", balance=10000)
    carol = _open(bank_cli, "Carol", balance=10000)
    start = _now()
    assert bank_cli("withdraw", ada, "3000", "--request-id", "cash").status == 0
    assert bank_cli("transfer", ada, bob, "2000").status == 0
    assert bank_cli("transfer", carol, ada, "5000").status == 0
    dave = _open(bank_cli, "Dave")
    # Two targets: the credit of the first is held for it, then confirmed.
    legs = [
        tpb.Leg(from_account_id=bob, to_account_id=ada, amount=1000),
        tpb.Leg(from_account_id=carol, to_account_id=dave, amount=300),
    ]
    bank.transfers.CreateTransfer(tpb.CreateTransferRequest(legs=legs))
    end = _now()
    assert bank_cli("deposit", ada, "99900").status == 0  # after the statement's end

    result = bank_cli("statement", ada, "--from", start, "--to", end, "--json")
    assert result.status == 0, result.err
    statement = result.json()
    assert (statement["opening_balance"], statement["closing_balance"]) == ("10000", "11000")
    moves = [(m["type"], m["amount"]) for m in statement["movements"]]
    assert moves == [
        ("ACCOUNT_EVENT_TYPE_WITHDRAWN", "-3000"),
        ("ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED", "-2000"),
        ("ACCOUNT_EVENT_TYPE_CREDITED", "5000"),
        ("ACCOUNT_EVENT_TYPE_CREDIT_CONFIRMED", "1000"),
    ]
    assert int(statement["opening_balance"]) + sum(int(a) for _, a in moves) == 11000
    assert statement["movements"][0]["reference"] == "cash"
    assert statement["movements"][-1]["balance_after"] == "11000"

    table = bank_cli("statement", ada, "--from", start, "--to", end)
    assert table.status == 0, table.err
    assert f"statement of account {ada} (Ada), EUR" in table.out
    assert re.search(r"opening balance\s+100\.00 EUR", table.out)
    assert re.search(r"closing balance\s+110\.00 EUR", table.out)
    assert re.search(r"WITHDRAWN\s+-30\.00 EUR\s+70\.00 EUR\s+cash", table.out)
    assert re.search(r"CREDIT_CONFIRMED\s+\+10\.00 EUR\s+110\.00 EUR", table.out)

    whole = bank_cli("statement", ada, "--json").json()
    assert (whole["opening_balance"], whole["closing_balance"]) == ("0", "110900")
    assert len(whole["movements"]) == 6  # with the opening deposit and the late one


def test_statement_of_a_stretch_before_the_opening_starts_from_nothing(bank_cli):
    start = _now()
    ada = _open(bank_cli, balance=2500)
    statement = bank_cli("statement", ada, "--from", start, "--json").json()
    assert (statement["opening_balance"], statement["closing_balance"]) == ("0", "2500")
    assert [m["amount"] for m in statement["movements"]] == ["2500"]


def test_statement_refuses_an_end_before_its_start(bank_cli):
    ada = _open(bank_cli)
    result = bank_cli("statement", ada, "--from", "2024-06-02", "--to", "2024-06-01")
    assert result.status == 2
    assert "--from" in result.err


def test_statement_before_the_account_existed_is_not_found(bank_cli):
    ada = _open(bank_cli)
    result = bank_cli("statement", ada, "--to", "2000-01-01")
    assert result.status == 3, result.err


def test_repeating_a_deposit_with_its_request_id_applies_it_once(bank_cli):
    ada = _open(bank_cli)
    first = bank_cli("deposit", ada, "500", "--request-id", "once")
    again = bank_cli("deposit", ada, "500", "--request-id", "once")
    assert (first.status, again.status) == (0, 0)
    assert _field(again.out, "balance") == "5.00 EUR"
    assert "(request id once)" in again.out


def test_addresses_from_the_environment(bank, capsys, monkeypatch):
    monkeypatch.setenv("BANK_ACCOUNTS", bank.account.address)
    monkeypatch.setenv("BANK_TRANSFERS", bank.transfer.address)
    assert main(["open", "--owner", "Env", "--currency", "USD", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["currency"] == "USD"


# --------------------------------------------------------------------------- errors


def test_insufficient_funds_on_withdraw(bank_cli):
    ada = _open(bank_cli, balance=750)
    result = bank_cli("withdraw", ada, "1000")
    assert result.status == 1
    assert result.err.strip() == (
        "bank withdraw: refused: insufficient funds (available 7.50 EUR, requested 10.00 EUR)"
    )
    assert result.out == ""


def test_insufficient_funds_on_transfer(bank_cli):
    ada = _open(bank_cli, balance=750)
    bob = _open(bank_cli, "Bob")
    transfer_id = str(uuid.uuid4())
    result = bank_cli("transfer", ada, bob, "1000", "--transfer-id", transfer_id)
    assert result.status == 1
    assert result.err.strip() == (
        "bank transfer: refused: insufficient funds (available 7.50 EUR, requested 10.00 EUR);"
        f" transfer {transfer_id} is recorded as FAILED, nothing moved"
    )
    row = bank_cli("transfers", ada).out.splitlines()[1]
    assert "FAILED" in row and "INSUFFICIENT_FUNDS" in row


def test_insufficient_funds_as_json(bank_cli):
    ada = _open(bank_cli, balance=750)
    result = bank_cli("withdraw", ada, "1000", "--json")
    error = result.json()["error"]
    assert (error["code"], error["reason"], error["exit_status"]) == (
        "FAILED_PRECONDITION",
        "INSUFFICIENT_FUNDS",
        1,
    )
    assert (error["metadata"]["available"], error["metadata"]["requested"]) == ("750", "1000")
    assert "insufficient funds" in result.err


def test_not_found(bank_cli):
    nobody = str(uuid.uuid4())
    for command in (["show", nobody], ["history", nobody], ["deposit", nobody, "5"]):
        result = bank_cli(*command)
        assert result.status == 3, result.err
        assert result.err.strip().endswith(f"not found: account {nobody} does not exist")
    ada = _open(bank_cli, balance=100)
    result = bank_cli("transfer", ada, nobody, "5")
    assert result.status == 3
    assert f"not found: target account {nobody} does not exist; transfer" in result.err
    assert "recorded as FAILED" in result.err


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (["show", "not-a-uuid"], "account_id"),
        (["deposit", "not-a-uuid", "5"], "account_id"),
        (["open", "--owner", "Ada", "--currency", "EURO"], "currency"),
        (["open", "--owner", "Ada", "--currency", "XYZ"], "currency"),
        (["open", "--owner", " ", "--currency", "EUR"], "owner"),
    ],
)
def test_invalid_argument(bank_cli, command, field):
    result = bank_cli(*command)
    assert result.status == 2
    assert f"invalid argument: {field}: " in result.err


def test_transfer_to_itself_is_invalid(bank_cli):
    ada = _open(bank_cli, balance=100)
    result = bank_cli("transfer", ada, ada, "5")
    assert result.status == 2
    assert "invalid argument: to_account_id: must differ from from_account_id" in result.err


def test_an_amount_with_a_decimal_point_is_a_usage_error(bank_cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        bank_cli("deposit", str(uuid.uuid4()), "25.00")
    assert exit_.value.code == 2
    assert "AMOUNT is in minor units, a whole number (write 2500 for 25.00)" in (
        capsys.readouterr().err
    )


def test_already_exists(bank_cli):
    ada = _open(bank_cli, balance=100)
    result = bank_cli("open", "--owner", "Eve", "--currency", "EUR", "--account-id", ada)
    assert result.status == 1
    assert f"refused: account {ada} already exists with another owner or currency" in result.err

    assert bank_cli("deposit", ada, "5", "--request-id", "k").status == 0
    result = bank_cli("deposit", ada, "6", "--request-id", "k")
    assert result.status == 1
    assert "refused: request id 'k' was already used for a deposit with other contents" in (
        result.err
    )

    bob = _open(bank_cli, "Bob")
    transfer_id = str(uuid.uuid4())
    assert bank_cli("transfer", ada, bob, "5", "--transfer-id", transfer_id).status == 0
    result = bank_cli("transfer", ada, bob, "6", "--transfer-id", transfer_id)
    assert result.status == 1
    assert f"refused: transfer {transfer_id} already exists with other accounts or amount" in (
        result.err
    )


def test_closed_and_not_empty(bank_cli):
    ada = _open(bank_cli, balance=1200)
    result = bank_cli("close", ada)
    assert result.status == 1
    assert f"refused: account {ada} is not empty (balance 12.00 EUR, reserved 0.00 EUR)" in (
        result.err
    )
    assert bank_cli("withdraw", ada, "1200").status == 0
    assert bank_cli("close", ada).status == 0
    result = bank_cli("deposit", ada, "5")
    assert (result.status, result.err.strip()) == (
        1,
        f"bank deposit: refused: account {ada} is closed",
    )
    bob = _open(bank_cli, "Bob", balance=100)
    result = bank_cli("transfer", bob, ada, "5")
    assert result.status == 1
    assert f"refused: target account {ada} is closed; transfer" in result.err


def test_currency_mismatch(bank_cli):
    ada = _open(bank_cli, balance=100)
    bob = _open(bank_cli, "Bob", currency="USD")
    result = bank_cli("transfer", ada, bob, "5")
    assert result.status == 1
    assert "currency mismatch: the source account holds EUR, the target account USD" in (result.err)


def test_unreachable_service_exits_4(capsys):
    nowhere = f"127.0.0.1:{free_port()}"
    request_id = "try-1"
    argv = ["deposit", str(uuid.uuid4()), "5", "--request-id", request_id, "--accounts", nowhere]
    status = main([*argv, "--timeout", "5"])
    err = capsys.readouterr().err
    assert status == 4
    assert f"unavailable: cannot reach the account service at {nowhere}" in err
    assert f"safe to retry with --request-id {request_id}" in err


def test_help_lists_the_exit_status(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for line in ("1    refused", "2    usage", "3    not found", "4    unavailable"):
        assert line in out
    assert "2500 is 25.00 EUR" in out


# --------------------------------------------------------------------------- subprocesses


def _bank_command() -> list[str]:
    script = Path(sys.executable).with_name("bank")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bank_cli"]


def test_the_installed_command(bank):
    account = bank.accounts.OpenAccount(apb.OpenAccountRequest(owner="Sub", currency="EUR"))
    done = subprocess.run(
        [*_bank_command(), "show", account.account_id, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BANK_ACCOUNTS": bank.account.address},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["owner"] == "Sub"


def test_watch_prints_history_then_live_events_until_ctrl_c(bank, bank_cli):
    ada = _open(bank_cli, balance=100)
    bank.accounts.Deposit(apb.DepositRequest(account_id=ada, amount=200, request_id="second"))
    watcher = subprocess.Popen(
        [*_bank_command(), "watch", ada, "--json", "--accounts", bank.account.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout])
    reader.start()
    try:
        try:
            events = [json.loads(lines.get(timeout=30)) for _ in range(3)]
        except queue.Empty:
            watcher.kill()
            pytest.fail(f"watch printed nothing; exit {watcher.wait()}: {watcher.stderr.read()}")
        assert [e["version"] for e in events] == ["1", "2", "3"]
        assert events[2]["reference"] == "second"
        bank.accounts.Deposit(apb.DepositRequest(account_id=ada, amount=300, request_id="live"))
        live = json.loads(lines.get(timeout=30))
        assert (live["version"], live["type"], live["amount"]) == (
            "4",
            "ACCOUNT_EVENT_TYPE_DEPOSITED",
            "300",
        )
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(30) == 0, watcher.stderr.read()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        reader.join(10)


def test_watch_with_a_timeout_ends_by_itself(bank_cli):
    ada = _open(bank_cli, balance=100)
    result = bank_cli("watch", ada, "--timeout", "1")
    assert result.status == 0
    rows = result.out.splitlines()
    assert rows[0].split()[:3] == ["VERSION", "TIME", "TYPE"]
    assert [row.split()[3] for row in rows[1:]] == ["OPENED", "DEPOSITED"]
