"""``bank bench --quick`` end to end, and the naive strategy's switch."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bank.experimental.v1 import naive_pb2, naive_pb2_grpc
from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc
from bank_cli.harness import ServiceProcess
from grpc_common.errors import error_info
from tests.e2e.conftest import new_account

pytestmark = pytest.mark.e2e

NAIVE_SERVICE = "bank.experimental.v1.NaiveTransferService"


def _listed_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
    return {service.name for service in reply.list_services_response.service}


def _naive_request(source: str, target: str, amount: int) -> naive_pb2.NaiveTransferRequest:
    return naive_pb2.NaiveTransferRequest(
        transfer_id=str(uuid.uuid4()), from_account_id=source, to_account_id=target, amount=amount
    )


def _bank(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``bank <args>`` as a subprocess; it must exit 0."""
    completed = subprocess.run(
        [sys.executable, "-m", "bank_cli", *args], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


def _quick_bench(out: Path, runs: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``bank bench --quick`` on SQLite: what it printed, and its report (which says OK)."""
    completed = _bank("bench", "--quick", "--runs", runs, "--out", str(out))
    report = json.loads((out / "bench-sqlite.json").read_text())
    assert report["ok"] is True, completed.stdout
    return completed, report


def test_bench_quick_runs_and_conserves_money(tmp_path):
    out = tmp_path / "results"
    completed, report = _quick_bench(out, "seed,sweep")
    results = report["results"]
    assert {r["group"] for r in results} == {"seed", "sweep"}
    for group in ("seed", "sweep"):
        strategies = {r["strategy"] for r in results if r["group"] == group}
        assert strategies == {"reservation", "naive"}, group
    for result in results:
        money = result["money"]
        assert result["status"] == "OK", result
        assert money["ok"] and money["sum_after"] == money["sum_before"], result
        assert money["reserved_after"] == 0, result
        assert result["succeeded"] + result["failed"] == result["requested"]
        if result["strategy"] == "reservation":
            # Nothing refuses these transfers: every one completes.
            assert result["succeeded"] == result["requested"], result
    # The seed's observation: opposite transfers on the same pair deadlock until a lock
    # wait times out.
    naive_seed = [r for r in results if r["strategy"] == "naive" and r["in_flight"] > 1]
    assert any(r["failures"].get("LOCK_TIMEOUT") for r in naive_seed), naive_seed

    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "bench-sqlite.png").stat().st_size > 0
    else:
        assert "no chart" in completed.stdout


def test_bench_quick_long_run_is_compared_with_controls_on_the_same_services(tmp_path):
    completed, report = _quick_bench(tmp_path / "results", "long")
    results = report["results"]
    assert [r["control"] for r in results] == [True, False, True]
    for result in results:
        assert result["status"] == "OK", result
        assert result["succeeded"] == result["requested"], result
        assert result["money"]["reserved_after"] == 0, result
    measured = results[1]
    assert measured["preloaded_events"] > 0 and len(measured["first_touch_ms"]) == 2
    past = measured["past_ms"]
    for kind in ("long", "fresh"):
        for point in ("version", "time"):
            figures = past[kind][point]
            assert 0 < figures["p50"] <= figures["p99"], past
    assert (
        past["ratio"]["version"]
        == past["long"]["version"]["mean"] / (past["fresh"]["version"]["mean"])
    )
    assert "reads of the past, 20 each" in completed.stdout
    (comparison,) = report["comparisons"]
    rates = [r["requests_per_second"] for r in results]
    assert comparison["measured_per_second"] == [rates[1]]
    assert comparison["control_per_second"] == [rates[0], rates[2]]
    assert comparison["ratio"] == rates[1] / ((rates[0] + rates[2]) / 2)
    assert "on the same services" in completed.stdout


def test_naive_transfers_are_off_by_default(bank):
    assert NAIVE_SERVICE not in _listed_services(bank.account.address)
    source = new_account(bank, balance=100)
    target = new_account(bank)
    naive = naive_pb2_grpc.NaiveTransferServiceStub(bank.channel(bank.account.address))
    with pytest.raises(grpc.RpcError) as failure:
        naive.Transfer(_naive_request(source.account_id, target.account_id, 10), timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=source.account_id))
    assert after.balance == 100


@pytest.fixture
def naive_accounts(tmp_path):
    service = ServiceProcess(
        "account_service",
        f"sqlite:///{tmp_path}/accounts.db",
        tmp_path / "account_service.log",
        extra_args=["--experimental-naive-transfers", "--experimental-naive-lock-timeout", "0.3"],
    ).start()
    try:
        yield service
    finally:
        assert service.stop() == 0


def test_naive_transfer_when_switched_on(naive_accounts):
    address = naive_accounts.address
    assert NAIVE_SERVICE in _listed_services(address)
    with grpc.insecure_channel(address) as channel:
        accounts = account_pb2_grpc.AccountServiceStub(channel)
        naive = naive_pb2_grpc.NaiveTransferServiceStub(channel)
        ids = []
        for owner in ("A", "B"):
            account_id = str(uuid.uuid4())
            accounts.OpenAccount(
                apb.OpenAccountRequest(account_id=account_id, owner=owner, currency="EUR")
            )
            accounts.Deposit(
                apb.DepositRequest(account_id=account_id, amount=100, request_id="opening")
            )
            ids.append(account_id)

        request = _naive_request(ids[0], ids[1], 30)
        reply = naive.Transfer(request, timeout=10)
        assert (reply.from_account.balance, reply.to_account.balance) == (70, 130)
        # Idempotent by transfer id: nothing moves twice.
        again = naive.Transfer(request, timeout=10)
        assert (again.from_account.balance, again.to_account.balance) == (70, 130)

        with pytest.raises(grpc.RpcError) as failure:
            naive.Transfer(_naive_request(ids[0], ids[1], 1_000), timeout=10)
        assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(failure.value).reason == "INSUFFICIENT_FUNDS"

        # Opposite directions at once: each holds its target and waits for its source.
        calls = [
            naive.Transfer.future(_naive_request(ids[n % 2], ids[1 - n % 2], 1), timeout=10)
            for n in range(16)
        ]
        reasons = []
        for call in calls:
            try:
                call.result()
                reasons.append("OK")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.ABORTED
                reasons.append(error_info(error).reason)
        assert "LOCK_TIMEOUT" in reasons, reasons

        balances = [accounts.GetAccount(apb.GetAccountRequest(account_id=a)).balance for a in ids]
        assert sum(balances) == 200
