"""Metrics, tracing and log formats, in process: the interceptors on a real grpc.aio server
over an in-memory store, the store and transfer hooks, the JSON log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from prometheus_client import CollectorRegistry

from account_service.application import Accounts
from account_service.server import build as build_accounts
from bank.v1 import account_pb2 as pb
from bank.v1 import account_pb2_grpc
from event_store import (
    AppendRequest,
    AsyncEventStore,
    ConcurrencyConflict,
    InMemoryEventStore,
    NewEvent,
)
from grpc_common import logs, metrics, tracing
from grpc_common.interceptors import DecodeGuard
from grpc_common.rpc_metrics import ServerMetrics
from grpc_common.server import observability_interceptors
from tests.unit.fakes import FakeAccounts, InMemoryTransferRepository
from transfer_service.accounts_client import UnaryAccounts
from transfer_service.domain import AccountStep, Action, Applied, Leg, Refused, Transfer, requested
from transfer_service.process import Backoff, TransferProcess
from transfer_service.server import _CountedTransfers, _SampledSteps

TID = "11111111-1111-4111-8111-111111111111"
SRC = "22222222-2222-4222-8222-222222222222"
DST = "33333333-3333-4333-8333-333333333333"


# --- logs --------------------------------------------------------------------------------


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("bank.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize(
    ("msg", "args", "expected"),
    [
        ("transfer %s: reserve not decided (%s)", (TID, "x"), {"transfer_id": TID}),
        ("account %s stayed locked for %gs", (SRC, 5), {"account_id": SRC}),
        ("transfer_id=%s account_id: %s", (TID, SRC), {"transfer_id": TID, "account_id": SRC}),
        (f"transfer {TID} failed on account '{DST}'", (), {"transfer_id": TID, "account_id": DST}),
        # A UUID named by something else, and an account service's address, are not ids.
        ("request %s from %s", (TID, SRC), {}),
        ("account service %s: %s", ("127.0.0.1:50051", "plaintext"), {}),
        ("transfer %s", ("not-a-uuid",), {}),
    ],
)
def test_id_filter_finds_the_ids_a_message_names(msg, args, expected):
    record = _record(msg, *args)
    assert logs.IdFilter().filter(record)
    found = {f: getattr(record, f) for f in logs.ID_FIELDS if getattr(record, f, None)}
    assert found == expected


def test_id_filter_keeps_ids_given_as_extra():
    record = _record("transfer %s: done", TID, transfer_id="given")
    logs.IdFilter().filter(record)
    assert record.transfer_id == "given"


def test_json_lines_hold_time_level_logger_message_ids_and_exception():
    record = _record("transfer %s: %s not decided", TID, "reserve")
    logs.IdFilter().filter(record)
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "bank.test"
    assert entry["message"] == f"transfer {TID}: reserve not decided"
    assert entry["transfer_id"] == TID
    assert "account_id" not in entry
    stamp = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(stamp - datetime.now(UTC)) < timedelta(minutes=1)

    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        failed = logging.LogRecord(
            "bank.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = logs.JsonFormatter().format(failed)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_a_log_line_names_its_service_in_text_and_json():
    record = _record("transfer %s: done", TID)
    assert logs.ServiceFilter("transfer-service").filter(record)
    assert json.loads(logs.JsonFormatter().format(record))["service"] == "transfer-service"
    text = logging.Formatter(logs.TEXT_FORMAT).format(record)
    assert f" WARNING transfer-service bank.test: transfer {TID}: done" in text


# --- metrics: configuration, store, transfers --------------------------------------------


@pytest.mark.parametrize(
    ("flag", "listen", "expected"),
    [
        ("", "127.0.0.1:50051", None),
        ("9464", "127.0.0.1:50051", metrics.Address("127.0.0.1", 9464)),
        ("9464", "0.0.0.0:50051", metrics.Address("0.0.0.0", 9464)),
        ("9464", "[::]:50051", metrics.Address("::", 9464)),
        ("10.0.0.5:9000", "127.0.0.1:50051", metrics.Address("10.0.0.5", 9000)),
        ("[::1]:9000", "127.0.0.1:50051", metrics.Address("::1", 9000)),
    ],
)
def test_metrics_address(flag, listen, expected):
    assert metrics.parse_address(flag, listen) == expected


@pytest.mark.parametrize("flag", ["0", "70000", "port", "host:"])
def test_metrics_address_refused(flag):
    with pytest.raises(metrics.MetricsConfigError):
        metrics.parse_address(flag, "127.0.0.1:50051")


@pytest.fixture
def measured() -> metrics.Metrics:
    return metrics.Metrics(CollectorRegistry())


def _sample(m: metrics.Metrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_store_appends_and_group_commits_are_measured(measured):
    store = AsyncEventStore(InMemoryEventStore(), observer=measured.event_store)
    await store.start()
    try:
        assert isinstance(store, AsyncEventStore)
        await store.append("s-1", 0, [NewEvent("A", {}), NewEvent("B", {})])
        await store.append("s-2", 0, [NewEvent("A", {})])
        with pytest.raises(ConcurrencyConflict):
            await store.append("s-1", 0, [NewEvent("A", {})])
        # Several streams at once: each stream's part is an append.
        await store.append_batch(
            [
                AppendRequest("s-3", 0, [NewEvent("A", {})] * 2),
                AppendRequest("s-4", 0, [NewEvent("A", {})]),
            ]
        )
        with pytest.raises(ConcurrencyConflict):
            await store.append_batch(
                [
                    AppendRequest("s-5", 0, [NewEvent("A", {})]),
                    AppendRequest("s-1", 0, [NewEvent("A", {})]),
                ]
            )
    finally:
        await store.close()
    assert _sample(measured, "bank_event_store_append_seconds_count") == 3 + 2 + 2
    assert _sample(measured, "bank_event_store_append_events_count") == 2 + 2  # stored ones
    assert _sample(measured, "bank_event_store_append_events_sum") == 3 + 3
    failures = "bank_event_store_append_failures_total"
    assert _sample(measured, failures, error="ConcurrencyConflict") == 1 + 2
    assert _sample(measured, "bank_event_store_commit_seconds_count") >= 4
    assert _sample(measured, "bank_event_store_commit_appends_sum") >= 5


async def _no_sleep(delay: float) -> None:
    return None


async def test_transfers_are_counted_by_end_state_and_reason(measured):
    accounts = FakeAccounts()
    accounts.open(SRC, balance=100)
    accounts.open(DST)
    repository = InMemoryTransferRepository()
    counts = measured.transfers()
    process = TransferProcess(
        accounts,
        _CountedTransfers(repository, counts),
        backoff=Backoff(sleep=_no_sleep),
        on_retry=counts.retried,
    )
    accounts.fail_next(Action.CREDIT, times=2)

    async def run(transfer_id: str, amount: int) -> Transfer:
        request = requested(transfer_id, [Leg(SRC, DST, amount)])
        recorded = await process.record(Transfer.empty(transfer_id), [request], 1)
        return await process.drive(recorded, 1)

    done = await run(TID, 60)
    failed = await run("44444444-4444-4444-8444-444444444444", 500)
    assert (done.state.name, failed.state.name) == ("COMPLETED", "FAILED")

    assert _sample(measured, "bank_transfers_requested_total") == 2
    assert _sample(measured, "bank_transfers_total", state="COMPLETED", reason="") == 1
    assert (
        _sample(measured, "bank_transfers_total", state="FAILED", reason="INSUFFICIENT_FUNDS") == 1
    )
    assert _sample(measured, "bank_transfer_duration_seconds_count", state="COMPLETED") == 1
    assert _sample(measured, "bank_transfer_duration_seconds_sum", state="COMPLETED") > 0
    assert (
        _sample(measured, "bank_transfer_step_retries_total", step="credit", error="StepUnanswered")
        == 2
    )


async def test_holds_of_pending_transfers_are_counted_by_what_became_of_them(measured):
    accounts = FakeAccounts()
    accounts.open(SRC, balance=100)
    accounts.open(DST)
    counts = measured.transfers()
    process = TransferProcess(
        accounts, _CountedTransfers(InMemoryTransferRepository(), counts), backoff=Backoff()
    )
    ends = {}
    for n, settle in enumerate(("post", "void", "expire", "post")):
        transfer_id = f"{n + 5}{TID[1:]}"
        request = requested(transfer_id, [Leg(SRC, DST, 10)], pending=True, expires_after=1)
        held = await process.drive(
            await process.record(Transfer.empty(transfer_id), [request], 1), 1
        )
        assert held.state.name == "PENDING"
        later = held.created_at + timedelta(seconds=1)
        decided = {"post": held.post(0), "void": held.void(), "expire": held.expire(later)}
        ended = await process.drive(await process.record(held, decided[settle], 1), 1)
        ends[ended.state.name] = ends.get(ended.state.name, 0) + 1
    assert ends == {"COMPLETED": 2, "VOIDED": 1, "EXPIRED": 1}
    assert _sample(measured, "bank_holds_total", outcome="placed") == 4
    assert _sample(measured, "bank_holds_total", outcome="posted") == 2
    assert _sample(measured, "bank_holds_total", outcome="voided") == 1
    assert _sample(measured, "bank_holds_total", outcome="expired") == 1
    assert _sample(measured, "bank_transfers_total", state="VOIDED", reason="") == 1
    assert _sample(measured, "bank_transfers_total", state="EXPIRED", reason="") == 1


def test_pending_holds_and_the_oldest_are_read_when_scraped(measured):
    now = datetime.now(UTC)
    holds = [now - timedelta(seconds=90), now - timedelta(seconds=30), None]
    pending = [now - timedelta(seconds=30)]
    measured.watch_reservations(lambda: holds, pending_hold_times=lambda: pending)
    assert _sample(measured, "bank_reservations_open") == 3
    assert _sample(measured, "bank_pending_holds_open") == 1
    assert 29 < _sample(measured, "bank_pending_hold_oldest_age_seconds") < 40
    pending.clear()
    assert _sample(measured, "bank_pending_holds_open") == 0
    assert _sample(measured, "bank_pending_hold_oldest_age_seconds") == 0


def test_open_reservations_are_read_when_scraped(measured):
    now = datetime.now(UTC)
    holds = [now - timedelta(seconds=90), now - timedelta(seconds=2), None]
    measured.watch_reservations(lambda: holds)
    assert _sample(measured, "bank_reservations_open") == 3
    assert 89 < _sample(measured, "bank_reservation_oldest_age_seconds") < 100
    assert _sample(measured, "bank_reservation_age_seconds_bucket", le="1.0") == 1
    assert _sample(measured, "bank_reservation_age_seconds_bucket", le="60.0") == 2
    assert _sample(measured, "bank_reservation_age_seconds_bucket", le="+Inf") == 3
    holds.clear()
    assert _sample(measured, "bank_reservations_open") == 0
    assert _sample(measured, "bank_reservation_oldest_age_seconds") == 0


async def test_open_reservations_are_read_on_the_event_loop_when_scraped_elsewhere(measured):
    store = AsyncEventStore(InMemoryEventStore())
    await store.start()
    try:
        accounts = Accounts(store)
        await accounts.execute(SRC, lambda account: account.open("Ada", "EUR"))
        await accounts.execute(SRC, lambda account: account.deposit(100, "d"))
        for reference in ("t-1", "t-2"):
            await accounts.execute(SRC, lambda account, r=reference: account.reserve(10, r))
        read_on: list[threading.Thread] = []

        def hold_times() -> list[datetime | None]:
            read_on.append(threading.current_thread())
            return accounts.open_hold_times()

        measured.watch_reservations(hold_times, asyncio.get_running_loop())
        # From the HTTP server's side: another thread, which asks the loop.
        assert await asyncio.to_thread(_sample, measured, "bank_reservations_open") == 2
        # From the loop's own thread: read at once.
        assert _sample(measured, "bank_reservation_age_seconds_bucket", le="+Inf") == 2
        assert read_on == [threading.current_thread()] * 2
    finally:
        await store.close()


def test_open_reservations_are_left_out_of_a_scrape_the_loop_does_not_answer(
    measured, monkeypatch, caplog
):
    monkeypatch.setattr(metrics, "HOLD_TIMES_TIMEOUT", 0.05)
    idle = asyncio.new_event_loop()  # never run: it never answers
    try:
        measured.watch_reservations(lambda: [None], idle)
        with caplog.at_level(logging.WARNING, logger="grpc_common.metrics"):
            assert measured.registry.get_sample_value("bank_reservations_open") is None
        assert "did not answer" in caplog.text
    finally:
        idle.close()


# --- the interceptors on a real server ---------------------------------------------------


async def _account_server(interceptors: list) -> AsyncIterator[tuple[grpc.aio.Channel, str]]:
    store = AsyncEventStore(InMemoryEventStore())
    await store.start()
    assembly = build_accounts(store)
    server = grpc.aio.server(interceptors=[*interceptors, DecodeGuard()])
    for service in assembly.services:
        service.add_to_server(service.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, f"127.0.0.1:{port}"
    finally:
        await channel.close()
        for hook in assembly.on_drain:
            await hook()
        await server.stop(0)
        await store.close()


@pytest.fixture
async def metered_server(measured) -> AsyncIterator[grpc.aio.Channel]:
    async for channel, _ in _account_server([ServerMetrics(measured)]):
        yield channel


async def test_server_metrics_count_calls_codes_and_steps(measured, metered_server):
    accounts = account_pb2_grpc.AccountServiceStub(metered_server)
    reservations = account_pb2_grpc.ReservationServiceStub(metered_server)
    opened = await accounts.OpenAccount(pb.OpenAccountRequest(owner="Ada", currency="EUR"))
    await accounts.Deposit(
        pb.DepositRequest(account_id=opened.account_id, amount=100, request_id="d")
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await accounts.GetAccount(pb.GetAccountRequest(account_id=DST))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await accounts.GetAccount(pb.GetAccountRequest(account_id="nope"))
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await reservations.Reserve(
        pb.ReserveRequest(account_id=opened.account_id, reference="r1", amount=10)
    )

    call = reservations.ExecuteSteps()
    steps = [
        pb.Step(
            step_id=1,
            capture=pb.CaptureRequest(account_id=opened.account_id, reference="r1"),
        ),
        pb.Step(
            step_id=2,
            reserve=pb.ReserveRequest(account_id=opened.account_id, reference="r2", amount=999),
        ),
    ]
    await call.write(pb.ExecuteStepsRequest(steps=steps))
    answered = 0
    while answered < 2:
        answered += len((await call.read()).outcomes)
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK

    handled = "bank_grpc_server_handled_total"
    svc = {"grpc_service": "bank.v1.AccountService"}
    assert _sample(measured, handled, **svc, grpc_method="OpenAccount", grpc_code="OK") == 1
    assert _sample(measured, handled, **svc, grpc_method="GetAccount", grpc_code="NOT_FOUND") == 1
    assert (
        _sample(measured, handled, **svc, grpc_method="GetAccount", grpc_code="INVALID_ARGUMENT")
        == 1
    )
    assert (
        _sample(
            measured, "bank_grpc_server_handling_seconds_count", **svc, grpc_method="GetAccount"
        )
        == 2
    )
    res = {"grpc_service": "bank.v1.ReservationService"}
    assert _sample(measured, handled, **res, grpc_method="ExecuteSteps", grpc_code="OK") == 1
    assert (
        _sample(measured, "bank_grpc_server_msg_received_total", **res, grpc_method="ExecuteSteps")
        == 1
    )
    assert (
        _sample(measured, "bank_grpc_server_msg_sent_total", **res, grpc_method="ExecuteSteps") >= 1
    )
    # A unary method has no message counts: its one message is the call.
    assert (
        measured.registry.get_sample_value(
            "bank_grpc_server_msg_received_total", {**svc, "grpc_method": "OpenAccount"}
        )
        is None
    )
    steps_total = "bank_reservation_steps_total"
    assert _sample(measured, steps_total, step="reserve", code="OK") == 1  # unary
    assert _sample(measured, steps_total, step="capture", code="OK") == 1  # streamed
    assert _sample(measured, steps_total, step="reserve", code="FAILED_PRECONDITION") == 1
    assert _sample(measured, "bank_reservation_step_seconds_count", step="reserve") == 2


@pytest.fixture
def exporter() -> Iterator[object]:
    """Tracing on for one test, its spans kept in memory (exported as each one ends)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter), "test-service", set_global=False)
    try:
        yield exporter
    finally:
        tracing.shutdown()


async def test_client_and_server_spans_share_the_transfer_trace(exporter):
    async for channel, address in _account_server([tracing.ServerTracing()]):
        accounts = account_pb2_grpc.AccountServiceStub(channel)
        opened = await accounts.OpenAccount(pb.OpenAccountRequest(owner="Ada", currency="EUR"))
        await accounts.Deposit(
            pb.DepositRequest(account_id=opened.account_id, amount=100, request_id="d")
        )
        traced = tracing.TracedChannel(grpc.aio.insecure_channel(address))
        steps = UnaryAccounts({address: traced}, lambda _, a=address: a, deadline=5)
        with tracing.span("transfer", {tracing.TRANSFER_ID: TID}):
            reserve = [AccountStep(Action.RESERVE, opened.account_id, 30)]
            assert await steps.run(reserve, TID, 1) == [Applied("EUR")]
            too_much = [AccountStep(Action.RESERVE, opened.account_id, 1000)]
            (refused,) = await steps.run(too_much, "another", 1)
            assert isinstance(refused, Refused) and refused.reason == "INSUFFICIENT_FUNDS"
        await traced.close()
    by_name: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    transfer = by_name["transfer"][0]
    client, refused_client = sorted(
        (s for s in by_name["bank.v1.ReservationService/Reserve"] if s.kind.name == "CLIENT"),
        key=lambda s: s.start_time,
    )
    server, refused_server = sorted(
        (s for s in by_name["bank.v1.ReservationService/Reserve"] if s.kind.name == "SERVER"),
        key=lambda s: s.start_time,
    )
    trace_id = transfer.context.trace_id
    assert {s.context.trace_id for s in (client, server, refused_client, refused_server)} == {
        trace_id
    }
    assert client.parent.span_id == transfer.context.span_id
    assert server.parent.span_id == client.context.span_id
    assert server.attributes[tracing.TRANSFER_ID] == TID
    assert server.attributes[tracing.ACCOUNT_ID] == opened.account_id
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert (
        refused_server.attributes["rpc.grpc.status_code"]
        == (grpc.StatusCode.FAILED_PRECONDITION.value[0])
    )
    assert refused_server.status.status_code.name == "UNSET"  # a refusal is no server fault
    assert refused_client.status.status_code.name == "ERROR"
    # Calls without a caller's context start traces of their own.
    opened_span = by_name["bank.v1.AccountService/OpenAccount"][0]
    assert opened_span.parent is None
    assert opened_span.context.trace_id != trace_id


# --- off means off -----------------------------------------------------------------------


def test_nothing_is_installed_when_off():
    assert metrics.configured() is None
    assert not tracing.enabled()
    assert observability_interceptors() == []


def test_opentelemetry_is_not_even_imported_when_off():
    script = (
        "import sys\n"
        "from grpc_common import settings\n"
        "import account_service.__main__, transfer_service.__main__\n"
        "parser = settings.common_parser('x', 'x', '127.0.0.1:1', 'sqlite:///x.db')\n"
        "settings.add_observability_flags(parser)\n"
        "settings.configure_observability(parser, parser.parse_args([]), 'x')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env_free = {"BANK_METRICS_PORT": "", "BANK_OTEL_EXPORTER": "none"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env_free},
    )
    assert out.stdout.strip() == "[]"


class _Port:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def run(self, steps, reference: str, epoch: int, currency: str = "") -> list:
        self.calls.append(reference)
        return [Applied("EUR")]


@pytest.mark.parametrize(("sampler", "unary_calls"), [("always_on", 1), ("always_off", 0)])
async def test_steps_of_sampled_transfers_leave_the_stream(monkeypatch, sampler, unary_calls):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    tracing.install(SimpleSpanProcessor(InMemorySpanExporter()), "test", set_global=False)
    try:
        unary, stream = _Port(), _Port()
        steps = _SampledSteps(unary, stream)  # type: ignore[arg-type]
        with tracing.span("transfer", {tracing.TRANSFER_ID: TID}):
            assert await steps.run([AccountStep(Action.RESERVE, SRC, 1)], TID, 1) == [
                Applied("EUR")
            ]
    finally:
        tracing.shutdown()
    assert (len(unary.calls), len(stream.calls)) == (unary_calls, 1 - unary_calls)


async def test_a_trace_not_sampled_makes_no_span_on_either_side(monkeypatch):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter), "test", set_global=False)
    try:
        async for channel, address in _account_server([tracing.ServerTracing()]):
            accounts = account_pb2_grpc.AccountServiceStub(channel)
            opened = await accounts.OpenAccount(pb.OpenAccountRequest(owner="A", currency="EUR"))
            await accounts.Deposit(
                pb.DepositRequest(account_id=opened.account_id, amount=100, request_id="d")
            )
            traced = tracing.TracedChannel(grpc.aio.insecure_channel(address))
            with tracing.span("transfer", {tracing.TRANSFER_ID: TID}) as transfer:
                assert not transfer.is_recording()
                assert not tracing.sampled()
                with tracing.span("inner") as inner:
                    assert inner is None  # under a dropped trace: not even made
                steps = UnaryAccounts({address: traced}, lambda _, a=address: a, deadline=5)
                reserve = [AccountStep(Action.RESERVE, opened.account_id, 30)]
                assert await steps.run(reserve, TID, 1) == [Applied("EUR")]
            await traced.close()
    finally:
        tracing.shutdown()
    assert exporter.get_finished_spans() == ()
