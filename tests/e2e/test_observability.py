"""Observability of both services as real processes: Prometheus metrics, JSON logs, tracing
across the two services, and the health service following the database and the drain."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import StatusCode
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import make_url

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from bank_cli.harness import ServiceProcess, free_port
from tests.e2e.conftest import new_account, refusal
from tests.e2e.harness import Bank, running, sqlite_bank

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of a service's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def _transfer(source: str, target: str, amount: int) -> tpb.CreateTransferRequest:
    return tpb.CreateTransferRequest(
        transfer_id=str(uuid.uuid4()), from_account_id=source, to_account_id=target, amount=amount
    )


def _wait_for_state(bank: Bank, transfer_id: str, state: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=transfer_id)).state
        if found == state or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def observed_bank(tmp_path) -> Iterator[tuple[Bank, int, int]]:
    """Both services on SQLite, metrics on, JSON logs: (bank, account port, transfer port)."""
    account_port, transfer_port = free_port(), free_port()
    bank = sqlite_bank(
        tmp_path,
        account_args=["--metrics-port", str(account_port), "--log-format", "json"],
        transfer_args=["--metrics-port", str(transfer_port)],
        transfer_env={"BANK_LOG_FORMAT": "json"},
    )
    with running(bank) as started:
        yield started, account_port, transfer_port


def test_metrics_and_json_logs(observed_bank, tmp_path):
    bank, account_port, transfer_port = observed_bank
    alice, bob = new_account(bank, 100), new_account(bank)

    done = bank.transfers.CreateTransfer(_transfer(alice.account_id, bob.account_id, 30))
    assert done.state == tpb.TRANSFER_STATE_COMPLETED
    refused = _transfer(alice.account_id, bob.account_id, 1000)
    code, reason, _ = refusal(lambda: bank.transfers.CreateTransfer(refused))
    assert (code, reason) == (StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")

    # A hold nobody settles yet: the account service reports it, with its age.
    hold = apb.ReserveRequest(account_id=alice.account_id, reference="held-by-hand", amount=5)
    bank.reservations.Reserve(hold)
    time.sleep(1.1)
    accounts = scrape(account_port)
    assert value(accounts, "bank_reservations_open") == 1
    assert value(accounts, "bank_reservation_oldest_age_seconds") >= 1
    assert value(accounts, "bank_reservation_age_seconds_gcount") == 1
    bank.reservations.Release(
        apb.ReleaseRequest(account_id=alice.account_id, reference=hold.reference)
    )
    assert value(scrape(account_port), "bank_reservations_open") == 0

    accounts = scrape(account_port)
    handled = "bank_grpc_server_handled_total"
    assert (
        value(
            accounts,
            handled,
            grpc_service="bank.v1.AccountService",
            grpc_method="OpenAccount",
            grpc_code="OK",
        )
        >= 2
    )
    assert (
        value(
            accounts,
            handled,
            grpc_service="bank.v1.ReservationService",
            grpc_method="Reserve",
            grpc_code="OK",
        )
        == 1
    )
    # Steps over the ExecuteSteps stream count like unary ones, refusals by their code.
    steps = "bank_reservation_steps_total"
    assert value(accounts, steps, step="reserve", code="OK") == 2  # the transfer, by hand
    assert value(accounts, steps, step="reserve", code="FAILED_PRECONDITION") == 1
    assert value(accounts, steps, step="credit", code="OK") == 1
    assert value(accounts, steps, step="capture", code="OK") == 1
    # The refused transfer's credit and capture were sent to follow its reserve: not run.
    assert value(accounts, steps, step="credit", code="ABORTED") == 1
    assert value(accounts, steps, step="capture", code="ABORTED") == 1
    assert value(accounts, "bank_reservation_step_seconds_count", step="capture") == 2
    assert value(accounts, "bank_event_store_append_seconds_count") > 0
    assert value(accounts, "bank_event_store_commit_appends_count") > 0

    # The account service away for a while: the transfer service retries the reserve step.
    assert bank.account is not None
    assert bank.account.stop() == 0
    pending = _transfer(alice.account_id, bob.account_id, 10)
    code, reason, _ = refusal(lambda: bank.transfers.CreateTransfer(pending, timeout=1.5))
    assert (code, reason) == (StatusCode.UNAVAILABLE, "TRANSFER_PENDING")
    bank.account.start()
    assert _wait_for_state(bank, pending.transfer_id, tpb.TRANSFER_STATE_COMPLETED) == (
        tpb.TRANSFER_STATE_COMPLETED
    )

    transfers = scrape(transfer_port)
    assert value(transfers, "bank_transfers_requested_total") == 3
    assert value(transfers, "bank_transfers_total", state="COMPLETED", reason="") == 2
    assert (
        value(transfers, "bank_transfers_total", state="FAILED", reason="INSUFFICIENT_FUNDS") == 1
    )
    assert value(transfers, "bank_transfer_duration_seconds_count", state="COMPLETED") == 2
    assert total(transfers, "bank_transfer_step_retries_total", step="reserve") > 0
    create = {"grpc_service": "bank.v1.TransferService", "grpc_method": "CreateTransfer"}
    assert value(transfers, handled, **create, grpc_code="OK") == 1
    assert value(transfers, handled, **create, grpc_code="FAILED_PRECONDITION") == 1
    assert value(transfers, handled, **create, grpc_code="UNAVAILABLE") == 1
    assert value(transfers, "bank_grpc_server_handling_seconds_count", **create) == 3
    assert value(transfers, "bank_event_store_append_seconds_count") > 0
    assert value(transfers, "bank_event_store_append_events_count") > 0
    assert value(transfers, "bank_event_store_commit_seconds_count") > 0

    bank.stop()
    # Every line of both logs is one JSON object; the retries name their transfer.
    for name, service in (
        ("account_service.log", "account-service"),
        ("transfer_service.log", "transfer-service"),
    ):
        for entry in _json_lines(tmp_path / name):
            assert {"time", "level", "logger", "message"} <= entry.keys(), entry
            assert entry["service"] == service, entry
    retries = [
        entry
        for entry in _json_lines(tmp_path / "transfer_service.log")
        if "not decided" in entry["message"]
    ]
    assert retries, "no retry was logged"
    assert {entry.get("transfer_id") for entry in retries} == {pending.transfer_id}
    assert all(entry["level"] == "WARNING" for entry in retries)


def test_text_log_lines_name_their_service(own_bank):
    own_bank.stop()
    for module, service in (
        ("account_service", "account-service"),
        ("transfer_service", "transfer-service"),
    ):
        lines = (own_bank.workdir / f"{module}.log").read_text().splitlines()
        assert any(f" INFO {service} grpc_common.server: listening on" in line for line in lines)
        assert any(f" INFO {service} grpc_common.server: stopped" in line for line in lines)


def _spans(path: Path) -> list[dict]:
    """The spans the console exporter wrote among the log lines (one JSON object a line)."""
    spans = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "context" in entry and "trace_id" in entry["context"]:
                spans.append(entry)
    return spans


def test_one_trace_per_transfer_across_both_services(tmp_path):
    bank = Bank(
        f"sqlite:///{tmp_path}/accounts.db",
        f"sqlite:///{tmp_path}/transfers.db",
        tmp_path,
        account_args=["--otel-exporter", "console"],
        transfer_env={"BANK_OTEL_EXPORTER": "console"},
    ).start()
    try:
        alice, bob = new_account(bank, 100), new_account(bank)
        request = _transfer(alice.account_id, bob.account_id, 30)
        done = bank.transfers.CreateTransfer(request)
        assert done.state == tpb.TRANSFER_STATE_COMPLETED
    finally:
        codes = bank.stop()  # the exporters write what they hold before the processes end
    assert codes == {"transfer_service": 0, "account_service": 0}, codes

    transfer_id = request.transfer_id
    found = {}
    for service in ("account_service", "transfer_service"):
        found[service] = [
            span
            for span in _spans(tmp_path / f"{service}.log")
            if span["attributes"].get("bank.transfer_id") == transfer_id
        ]
    names = {service: {(s["name"], s["kind"]) for s in spans} for service, spans in found.items()}
    assert {
        ("bank.v1.TransferService/CreateTransfer", "SpanKind.SERVER"),
        ("transfer", "SpanKind.INTERNAL"),
        ("bank.v1.ReservationService/Reserve", "SpanKind.CLIENT"),
        ("bank.v1.ReservationService/Credit", "SpanKind.CLIENT"),
        ("bank.v1.ReservationService/Capture", "SpanKind.CLIENT"),
    } <= names["transfer_service"]
    assert {
        ("bank.v1.ReservationService/Reserve", "SpanKind.SERVER"),
        ("bank.v1.ReservationService/Credit", "SpanKind.SERVER"),
        ("bank.v1.ReservationService/Capture", "SpanKind.SERVER"),
    } <= names["account_service"]
    traces = {span["context"]["trace_id"] for spans in found.values() for span in spans}
    assert len(traces) == 1, traces
    # Each account-side span is the child of the transfer service's call.
    client_ids = {
        span["context"]["span_id"]
        for span in found["transfer_service"]
        if span["kind"] == "SpanKind.CLIENT"
    }
    assert {span["parent_id"] for span in found["account_service"]} <= client_ids
    services = {
        span["resource"]["attributes"]["service.name"] for spans in found.values() for span in spans
    }
    assert services == {"account-service", "transfer-service"}


# --- health ------------------------------------------------------------------------------


class TcpProxy:
    """A loopback TCP forwarder that can be switched off and on again.

    Off, its port refuses connections and every connection through it is cut: to the
    service behind it, the database has gone away, while the real server is untouched.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)
        with self._lock:
            connections, self._open = self._open, []
        for connection in connections:
            _close(connection)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _close(client)
                    _close(server)
                    return
                self._open += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(target)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _health(address: str) -> int | None:
    """The overall health status, or None when nothing answers."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return None
        return reply.status


def _wait_health(address: str, status: int, timeout: float = 20.0) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        found = _health(address)
        if found == status or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.postgres
def test_health_follows_the_database_and_the_drain(tmp_path, postgres_schema_url):
    url = make_url(postgres_schema_url())
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    service = ServiceProcess(
        "account_service", through_proxy, tmp_path / "account_service.log", ["--grace", "3"]
    )
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    # No database at first: the service waits for it, and serves nothing meanwhile.
    threading.Timer(3.0, proxy.start).start()
    started = time.monotonic()
    try:
        service.start()
        assert time.monotonic() - started >= 2.5
        assert "database not ready" in service.log()

        proxy.stop()
        assert _wait_health(service.address, not_serving) == not_serving
        proxy.start()
        assert _wait_health(service.address, serving) == serving
        with grpc.insecure_channel(service.address) as channel:
            opened = account_pb2_grpc.AccountServiceStub(channel).OpenAccount(
                apb.OpenAccountRequest(owner="Ada", currency="EUR"), timeout=10
            )
        assert opened.account_id

        # The drain: a watcher sees NOT_SERVING as soon as SIGTERM arrives.
        with grpc.insecure_channel(service.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=20
            )
            statuses = iter(watch)
            assert next(statuses).status == serving
            assert service.process is not None
            service.process.send_signal(signal.SIGTERM)
            assert next(statuses).status == not_serving
            watch.cancel()
        assert service.process.wait(30) == 0
    finally:
        if service.process is not None and service.process.poll() is None:
            service.kill()
        proxy.stop()
