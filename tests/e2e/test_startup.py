"""A service that cannot start as asked says why and stops with exit status 2, leaving the
one already running alone: a database another service owns, an address already taken."""

from __future__ import annotations

import subprocess
import sys

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc
from bank_cli.harness import ServiceProcess, free_port

pytestmark = pytest.mark.e2e


def start_refused(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m <module> <args>``, which must stop by itself."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def still_serving(service: ServiceProcess) -> bool:
    with service.open_channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def account_service(tmp_path):
    service = ServiceProcess(
        "account_service", f"sqlite:///{tmp_path}/bank.db", tmp_path / "account_service.log"
    ).start()
    yield service
    assert service.stop() == 0


def test_a_service_pointed_at_another_services_database_refuses_to_start(account_service):
    refused = start_refused(
        "transfer_service",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--db",
        account_service.db,
        "--accounts",
        account_service.address,
    )
    assert refused.returncode == 2, refused.stderr
    assert "the database belongs to account-service, not to transfer-service" in refused.stderr
    assert "give transfer-service another --db" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert still_serving(account_service)
    with account_service.open_channel() as channel:
        opened = account_pb2_grpc.AccountServiceStub(channel).OpenAccount(
            apb.OpenAccountRequest(owner="Ada", currency="EUR"), timeout=5
        )
    assert opened.currency == "EUR"


def test_the_owner_itself_starts_again_on_its_database(account_service):
    assert account_service.stop() == 0
    account_service.start()
    assert still_serving(account_service)


def test_a_service_whose_address_is_taken_says_so(account_service, tmp_path):
    refused = start_refused(
        "account_service",
        "--listen",
        account_service.address,
        "--db",
        f"sqlite:///{tmp_path}/other.db",
    )
    assert refused.returncode == 2, refused.stderr
    assert f"cannot listen on {account_service.address}: the address is in use" in (refused.stderr)
    assert "Traceback" not in refused.stderr
    assert still_serving(account_service)
