"""Prometheus metrics: RPCs, protocol steps, transfers, open reservations, the event store.

Off unless ``--metrics-port`` is given. When off, nothing here runs: no interceptor is
installed, the event store is not wrapped and no hook is passed, so a service without
metrics pays nothing. When on, ``serve`` installs ``ServerMetrics`` as the outermost
interceptor (so refusals by the decode guard and by authentication are counted too) and
starts an HTTP server answering ``GET /metrics`` in a thread of its own.

Everything is named ``bank_…``; the process and Python collectors of ``prometheus_client``
(``process_…``, ``python_…``) come along. Label values are bounded: method names of the
registered services, status code names, step names and the error table's reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Seconds: from well under a millisecond (a cached read) to a peer that is down.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TRANSFER_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
AGE_BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 3600.0)

EXECUTE_STEPS = "/bank.v1.ReservationService/ExecuteSteps"
# The unary ReservationService methods, by the step each one is.
UNARY_STEPS = {f"/bank.v1.ReservationService/{name}": name.lower() for name in (
    "Reserve", "Credit", "Capture", "Release",
)}  # fmt: skip

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class MetricsConfigError(ValueError):
    """``--metrics-port`` names no usable address."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: str, listen: str) -> Address | None:
    """``PORT`` or ``HOST:PORT`` (``[V6]:PORT``); None for ``""`` (metrics off).

    A bare port binds the host the gRPC server listens on (``--listen``), so a service on
    loopback keeps its metrics on loopback, and one on ``0.0.0.0`` exposes both.
    """
    value = value.strip()
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host = listen.rpartition(":")[0] if ":" in listen else ""
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise MetricsConfigError(f"--metrics-port {value!r}: expected PORT or HOST:PORT")
    return Address(host, port)


class Metrics:
    """Every metric of a service, on one registry (the process's default one unless given).

    The RPC and event-store families exist in both services; ``transfers()`` and
    ``watch_reservations()`` add the families of one service when its composition root
    asks for them.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        r = self.registry
        self.rpc_handled = Counter(
            "bank_grpc_server_handled_total",
            "RPCs completed on the server, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "bank_grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, on the server.",
            ["grpc_service", "grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.msg_received = Counter(
            "bank_grpc_server_msg_received_total",
            "Messages received on client-streaming RPCs.",
            ["grpc_service", "grpc_method"],
            registry=r,
        )
        self.msg_sent = Counter(
            "bank_grpc_server_msg_sent_total",
            "Messages sent on server-streaming RPCs.",
            ["grpc_service", "grpc_method"],
            registry=r,
        )
        self.steps = Counter(
            "bank_reservation_steps_total",
            "Reservation protocol steps answered (unary calls and ExecuteSteps alike),"
            " by step and status code.",
            ["step", "code"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "bank_reservation_step_seconds",
            "Time from a step's arrival to its outcome.",
            ["step"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.append_seconds = Histogram(
            "bank_event_store_append_seconds",
            "Time an append takes as its caller sees it: waiting for a group commit, and it.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.append_events = Histogram(
            "bank_event_store_append_events",
            "Events per stored append.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.append_failures = Counter(
            "bank_event_store_append_failures_total",
            "Appends that stored nothing, by error (ConcurrencyConflict, StoreUnavailable, ...).",
            ["error"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "bank_event_store_commit_seconds",
            "Time one group commit (one transaction of many appends) takes.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_appends = Histogram(
            "bank_event_store_commit_appends",
            "Appends per group commit: how well commits are shared.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self._transfers: TransferMetrics | None = None
        self._reservations: _Reservations | None = None

    def transfers(self) -> TransferMetrics:
        """The transfer service's families, registered on first use."""
        if self._transfers is None:
            self._transfers = TransferMetrics(self.registry)
        return self._transfers

    def watch_reservations(self, hold_times: Callable[[], Iterable[datetime | None]]) -> None:
        """Report open reservations at every scrape, from ``hold_times``.

        ``hold_times`` returns when each open reservation was made (None: being stored
        right now). It is called from the HTTP server's thread, so it must only read.
        """
        if self._reservations is None:
            self._reservations = _Reservations()
            self.registry.register(self._reservations)
        self._reservations.source = hold_times

    def instrument_store(self, store: Any) -> None:
        """Time the appends of an ``AsyncEventStore`` and the group commits under it.

        The store is wrapped from outside, as instance attributes that shadow its methods,
        so it stays the same object (and type) for everything built on it.
        """
        store.append = _timed_append(store.append, self)
        if hasattr(store, "append_batch"):
            store.append_batch = _timed_append_batch(store.append_batch, self)
        sync = getattr(store, "store", None)
        batch = getattr(sync, "append_batch", None)
        if batch is None:
            return
        try:
            sync.append_batch = _timed_commit(batch, self)
        except AttributeError:  # a store with slots cannot be wrapped this way
            log.debug("group commits of %s not measured", type(sync).__name__)


class TransferMetrics:
    """The transfer service's families; its methods are the hooks the composition root passes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requested = Counter(
            "bank_transfers_requested_total",
            "Transfers recorded as REQUESTED.",
            registry=registry,
        )
        self._ended = Counter(
            "bank_transfers_total",
            "Transfers that reached a terminal state, by state and failure reason.",
            ["state", "reason"],
            registry=registry,
        )
        self._duration = Histogram(
            "bank_transfer_duration_seconds",
            "Time from a transfer's REQUESTED record to its terminal record.",
            ["state"],
            buckets=TRANSFER_BUCKETS,
            registry=registry,
        )
        self._retries = Counter(
            "bank_transfer_step_retries_total",
            "Protocol steps retried, by step and what went wrong (StepUnavailable: no answer;"
            " StepRefused: a capture or release refused, which the protocol rules out).",
            ["step", "error"],
            registry=registry,
        )
        # (state, reason) -> its label children, resolved once.
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def requested(self) -> None:
        self._requested.inc()

    def ended(self, state: str, reason: str, seconds: float | None) -> None:
        key = (state, reason)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._ended.labels(state, reason),
                self._duration.labels(state),
            )
        children[0].inc()
        if seconds is not None:
            children[1].observe(max(seconds, 0.0))

    def retried(self, transfer_id: str, step: str, exc: Exception) -> None:
        """``TransferProcess``'s ``on_retry`` hook."""
        self._retries.labels(step, type(exc).__name__).inc()


class _Reservations(Collector):
    """Open reservations and their age, computed when scraped."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[datetime | None]] | None = None

    def describe(self) -> list[Any]:
        return list(self._families([], 0.0))

    def collect(self) -> Iterable[Any]:
        if self.source is None:
            return []
        now = datetime.now(UTC)
        try:
            times = list(self.source())
        except Exception:
            log.exception("open reservations could not be read")
            return []
        ages = [0.0 if at is None else max((now - at).total_seconds(), 0.0) for at in times]
        return self._families(ages, sum(ages))

    @staticmethod
    def _families(ages: Sequence[float], total: float) -> Iterable[Any]:
        yield GaugeMetricFamily(
            "bank_reservations_open",
            "Open reservations (holds) of the accounts this process holds in memory.",
            value=len(ages),
        )
        yield GaugeMetricFamily(
            "bank_reservation_oldest_age_seconds",
            "Age of the oldest open reservation (0 when there is none).",
            value=max(ages, default=0.0),
        )
        buckets = [(str(bound), float(sum(1 for a in ages if a <= bound))) for bound in AGE_BUCKETS]
        buckets.append(("+Inf", float(len(ages))))
        yield GaugeHistogramMetricFamily(
            "bank_reservation_age_seconds",
            "Open reservations by age.",
            buckets=buckets,
            gsum_value=total,
        )


def _timed_append(append: Callable[..., Any], metrics: Metrics) -> Callable[..., Any]:
    seconds = metrics.append_seconds
    sizes = metrics.append_events
    failures = metrics.append_failures

    @functools.wraps(append)
    async def timed(stream_id: str, expected_version: int, events: Sequence[Any]) -> Any:
        start = time.perf_counter()
        try:
            recorded = await append(stream_id, expected_version, events)
        except BaseException as exc:
            failures.labels(type(exc).__name__).inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)
        sizes.observe(len(events))
        return recorded

    return timed


def _timed_append_batch(append_batch: Callable[..., Any], metrics: Metrics) -> Callable[..., Any]:
    """Appends to several streams at once: each stream's part counts as one append."""
    seconds = metrics.append_seconds
    sizes = metrics.append_events
    failures = metrics.append_failures

    @functools.wraps(append_batch)
    async def timed(requests: Sequence[Any]) -> Any:
        start = time.perf_counter()
        try:
            recorded = await append_batch(requests)
        except BaseException as exc:
            failures.labels(type(exc).__name__).inc(len(requests))
            raise
        finally:
            elapsed = time.perf_counter() - start
            for _ in requests:
                seconds.observe(elapsed)
        for request in requests:
            sizes.observe(len(request.events))
        return recorded

    return timed


def _timed_commit(append_batch: Callable[..., Any], metrics: Metrics) -> Callable[..., Any]:
    seconds = metrics.commit_seconds
    sizes = metrics.commit_appends

    @functools.wraps(append_batch)
    def timed(requests: Sequence[Any]) -> Any:
        start = time.perf_counter()
        try:
            return append_batch(requests)
        finally:
            seconds.observe(time.perf_counter() - start)
            sizes.observe(len(requests))

    return timed


# --- the server interceptor --------------------------------------------------------------


def _status(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    """The name of the status code the call ends with."""
    code = context.code()
    if code is not None:
        return code.name if isinstance(code, grpc.StatusCode) else _CODE_NAMES.get(code, "UNKNOWN")
    if exc is None:
        return "OK"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"


class _Method:
    """One method's label children, resolved once rather than per call."""

    __slots__ = ("_codes", "_handled", "_steps", "labels", "received", "seconds", "sent", "step")

    def __init__(self, metrics: Metrics, method: str, handler: grpc.RpcMethodHandler) -> None:
        service, _, name = method.strip("/").rpartition("/")
        self.labels = (service, name)
        self._handled = metrics.rpc_handled
        self._codes: dict[str, Any] = {}
        self.seconds = metrics.rpc_seconds.labels(service, name)
        # Message counts only for the streaming side(s): a unary side is always one.
        streams = handler.request_streaming, handler.response_streaming
        self.received = metrics.msg_received.labels(service, name) if streams[0] else None
        self.sent = metrics.msg_sent.labels(service, name) if streams[1] else None
        self.step = UNARY_STEPS.get(method)
        self._steps = _Steps(metrics) if self.step is not None else None

    def done(self, code: str, seconds: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._handled.labels(*self.labels, code)
        child.inc()
        self.seconds.observe(seconds)
        if self._steps is not None:
            self._steps.done(self.step, code, seconds)


class _Steps:
    """Label children of the step families."""

    __slots__ = ("_counts", "_seconds", "_step_seconds", "_steps")

    def __init__(self, metrics: Metrics) -> None:
        self._steps = metrics.steps
        self._step_seconds = metrics.step_seconds
        self._counts: dict[tuple[str, str], Any] = {}
        self._seconds: dict[str, Any] = {}

    def done(self, step: str, code: str, seconds: float) -> None:
        key = (step, code)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = self._steps.labels(step, code)
        counter.inc()
        histogram = self._seconds.get(step)
        if histogram is None:
            histogram = self._seconds[step] = self._step_seconds.labels(step)
        histogram.observe(seconds)


class _StepClock:
    """Matches the outcomes of one ExecuteSteps stream to its steps, by step id."""

    __slots__ = ("_pending", "_steps")

    def __init__(self, steps: _Steps) -> None:
        self._steps = steps
        self._pending: dict[int, tuple[str, float]] = {}

    def arrived(self, message: Any) -> None:
        now = time.perf_counter()
        pending = self._pending
        for step in getattr(message, "steps", ()):
            pending[step.step_id] = (step.WhichOneof("action") or "unknown", now)

    def answered(self, message: Any) -> None:
        now = time.perf_counter()
        pending = self._pending
        for outcome in getattr(message, "outcomes", ()):
            started = pending.pop(outcome.step_id, None)
            if started is None:
                continue
            if outcome.WhichOneof("result") == "error":
                code = _CODE_NAMES.get(outcome.error.code, "UNKNOWN")
            else:
                code = "OK"
            self._steps.done(started[0], code, now - started[1])


class ServerMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every RPC the server handles, by method and status code.

    Streaming RPCs also count their messages; on ``ExecuteSteps`` every step is counted
    and timed like a unary step call (``bank_reservation_steps_total``).
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._steps = _Steps(metrics)
        # Method name -> (handler as found, the same measured): wrapped once, not per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._methods: dict[str, _Method] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        measured = self._measure(handler, method)
        self._wrapped[method] = (handler, measured)
        return measured

    def _measure(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        stats = self._methods.get(method)
        if stats is None:
            stats = self._methods[method] = _Method(self._metrics, method, handler)
        streaming = handler.request_streaming, handler.response_streaming
        kind = _KINDS[streaming]
        behaviour = getattr(handler, kind)
        steps = self._steps if method == EXECUTE_STEPS else None
        if inspect.isasyncgenfunction(behaviour):
            wrapped = _measured_stream(behaviour, stats, handler.request_streaming, steps)
        elif inspect.iscoroutinefunction(behaviour):
            wrapped = _measured_unary(behaviour, stats, handler.request_streaming, steps)
        else:
            return handler  # synchronous behaviours run on threads; the bank has none
        return handler._replace(**{kind: wrapped})


_KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


async def _counted(
    requests: AsyncIterator[Any], stats: _Method, clock: _StepClock | None
) -> AsyncIterator[Any]:
    received = stats.received
    assert received is not None
    async for request in requests:
        received.inc()
        if clock is not None:
            clock.arrived(request)
        yield request


def _measured_unary(
    behaviour: Callable[..., Any], stats: _Method, streaming: bool, steps: _Steps | None
) -> Callable[..., Any]:
    async def measured(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        failure: BaseException | None = None
        if streaming:
            clock = _StepClock(steps) if steps is not None else None
            request = _counted(request, stats, clock)
        try:
            return await behaviour(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            stats.done(_status(context, failure), time.perf_counter() - start)

    return measured


def _measured_stream(
    behaviour: Callable[..., Any], stats: _Method, streaming: bool, steps: _Steps | None
) -> Callable[..., Any]:
    async def measured(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        failure: BaseException | None = None
        clock = _StepClock(steps) if steps is not None else None
        if streaming:
            request = _counted(request, stats, clock)
        sent = stats.sent
        assert sent is not None
        try:
            async with contextlib.aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    sent.inc()
                    if clock is not None:
                        clock.answered(response)
                    yield response
        except BaseException as exc:
            failure = exc
            raise
        finally:
            stats.done(_status(context, failure), time.perf_counter() - start)

    return measured


# --- process-wide configuration ----------------------------------------------------------

_configured: Metrics | None = None
_address: Address | None = None


def configure(metrics_port: str, listen: str) -> Metrics | None:
    """Turn metrics on for this process (``--metrics-port``); None leaves them off.

    Raises ``MetricsConfigError`` for an address that cannot be used.
    """
    global _configured, _address
    address = parse_address(metrics_port, listen)
    if address is None:
        _configured = _address = None
        return None
    if _configured is None:
        prometheus_client.disable_created_metrics()
        _configured = Metrics()
    _address = address
    return _configured


def configured() -> Metrics | None:
    """The process's metrics, or None when they are off."""
    return _configured


class HttpServer:
    """The running ``/metrics`` endpoint."""

    def __init__(self, address: Address, registry: CollectorRegistry) -> None:
        try:
            self._server, self._thread = prometheus_client.start_http_server(
                address.port, address.host, registry=registry
            )
        except OSError as exc:
            raise MetricsConfigError(
                f"--metrics-port {address}: cannot listen ({exc.strerror or exc})"
            ) from None
        self.address = address

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_http_server() -> HttpServer | None:
    """Serve ``/metrics`` on the configured address; None when metrics are off."""
    if _configured is None or _address is None:
        return None
    server = HttpServer(_address, _configured.registry)
    log.info("metrics on http://%s/metrics", _address)
    return server
