"""Prometheus metrics: RPCs, protocol steps, transfers, open reservations, the event store.

Off unless ``--metrics-port`` is given. When off, nothing here runs: no interceptor is
installed and no hook is passed (the event store gets no observer), so a service without
metrics pays nothing. When on, ``serve`` installs ``ServerMetrics``
(``grpc_common.rpc_metrics``) as the outermost interceptor (so refusals by the decode
guard and by authentication are counted too) and starts an HTTP server answering
``GET /metrics`` in a thread of its own. The event store reports its appends to
``EventStoreMetrics``, the observer the composition roots give it (``store_observer``).

Everything is named ``bank_…``; the process and Python collectors of ``prometheus_client``
(``process_…``, ``python_…``) come along. Label values are bounded: method names of the
registered services, status code names, step names and the error table's reasons.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
# Seconds a scrape waits for the event loop to list the open reservations.
HOLD_TIMES_TIMEOUT = 2.0


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

    The RPC and event-store families exist in both services (the RPC ones are filled by
    ``grpc_common.rpc_metrics.ServerMetrics``); ``transfers()`` and ``watch_reservations()``
    add the families of one service when its composition root asks for them.
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
        self.event_store = EventStoreMetrics(r)
        self._transfers: TransferMetrics | None = None
        self._reservations: _Reservations | None = None

    def transfers(self) -> TransferMetrics:
        """The transfer service's families, registered on first use."""
        if self._transfers is None:
            self._transfers = TransferMetrics(self.registry)
        return self._transfers

    def watch_reservations(
        self,
        hold_times: Callable[[], Iterable[datetime | None]],
        loop: asyncio.AbstractEventLoop | None = None,
        pending_hold_times: Callable[[], Iterable[datetime | None]] = lambda: (),
    ) -> None:
        """Report open reservations at every scrape, from ``hold_times``.

        ``hold_times`` returns when each open reservation was made (None: being stored
        right now); ``pending_hold_times`` the same for the holds of pending transfers
        (those with an expiry). With ``loop`` they are called on that event loop, so they may
        read what the loop's tasks change: the scrape, in the HTTP server's thread, waits for
        them at most ``HOLD_TIMES_TIMEOUT`` seconds. Without, they are called in the scraping
        thread.
        """
        if self._reservations is None:
            self._reservations = _Reservations()
            self.registry.register(self._reservations)
        self._reservations.source = lambda: (list(hold_times()), list(pending_hold_times()))
        self._reservations.loop = loop


class EventStoreMetrics:
    """The event store's families; the ``AppendObserver`` of ``event_store.AsyncEventStore``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._append_seconds = Histogram(
            "bank_event_store_append_seconds",
            "Time an append takes as its caller sees it: waiting for a group commit, and it.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._append_events = Histogram(
            "bank_event_store_append_events",
            "Events per stored append.",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self._append_failures = Counter(
            "bank_event_store_append_failures_total",
            "Appends that stored nothing, by error (ConcurrencyConflict, StoreUnavailable, ...).",
            ["error"],
            registry=registry,
        )
        self._commit_seconds = Histogram(
            "bank_event_store_commit_seconds",
            "Time one group commit (one transaction of many appends) takes.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._commit_appends = Histogram(
            "bank_event_store_commit_appends",
            "Appends per group commit: how well commits are shared.",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )

    def appended(
        self, requests: Sequence[Any], seconds: float, error: BaseException | None
    ) -> None:
        """An append or an append to several streams, each stream's part counting as one."""
        for _ in requests:
            self._append_seconds.observe(seconds)
        if error is not None:
            self._append_failures.labels(type(error).__name__).inc(len(requests))
            return
        for request in requests:
            self._append_events.observe(len(request.events))

    def committed(self, appends: int, seconds: float) -> None:
        """One transaction of the store's writer (called in the writer's thread)."""
        self._commit_seconds.observe(seconds)
        self._commit_appends.observe(appends)


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
            "Protocol steps retried, by step and what went wrong (StepUnanswered: no answer;"
            " SettlementRefused: settling a hold refused, which the protocol rules out).",
            ["step", "error"],
            registry=registry,
        )
        self._holds = Counter(
            "bank_holds_total",
            "Holds of pending transfers, by what happened: placed, posted, voided, expired.",
            ["outcome"],
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

    def hold(self, outcome: str) -> None:
        self._holds.labels(outcome).inc()

    def retried(self, transfer_id: str, step: str, exc: Exception) -> None:
        """``TransferProcess``'s ``on_retry`` hook."""
        self._retries.labels(step, type(exc).__name__).inc()


class _Reservations(Collector):
    """Open reservations and their age, computed when scraped."""

    def __init__(self) -> None:
        self.source: Callable[[], _Times] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> list[Any]:
        return list(self._families([], []))

    def collect(self) -> Iterable[Any]:
        if self.source is None:
            return []
        now = datetime.now(UTC)
        try:
            times, pending = self._read(self.source, self.loop)
        except TimeoutError:
            log.warning(
                "open reservations not read: the event loop did not answer within %gs",
                HOLD_TIMES_TIMEOUT,
            )
            return []
        except Exception:
            log.exception("open reservations could not be read")
            return []

        def ages(of: list[datetime | None]) -> list[float]:
            return [0.0 if at is None else max((now - at).total_seconds(), 0.0) for at in of]

        return self._families(ages(times), ages(pending))

    @staticmethod
    def _read(source: Callable[[], _Times], loop: asyncio.AbstractEventLoop | None) -> _Times:
        if loop is None or _running_on(loop):
            return source()
        answer: Future[_Times] = Future()

        def read() -> None:
            if not answer.set_running_or_notify_cancel():
                return  # the scrape gave up waiting
            try:
                answer.set_result(source())
            except BaseException as exc:
                answer.set_exception(exc)

        loop.call_soon_threadsafe(read)
        try:
            return answer.result(timeout=HOLD_TIMES_TIMEOUT)
        except TimeoutError:
            answer.cancel()
            raise

    @staticmethod
    def _families(ages: Sequence[float], pending: Sequence[float]) -> Iterable[Any]:
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
            gsum_value=sum(ages),
        )
        yield GaugeMetricFamily(
            "bank_pending_holds_open",
            "Open holds of pending transfers (reservations with an expiry), of the accounts"
            " this process holds in memory.",
            value=len(pending),
        )
        yield GaugeMetricFamily(
            "bank_pending_hold_oldest_age_seconds",
            "Age of the oldest open hold of a pending transfer (0 when there is none).",
            value=max(pending, default=0.0),
        )


# What a scrape reads: when each open reservation was made, and each pending transfer's hold.
_Times = tuple[list[datetime | None], list[datetime | None]]


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is running ``loop`` (a scrape from the loop's own thread)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


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


def store_observer() -> EventStoreMetrics | None:
    """What the event store reports its appends to; None when metrics are off."""
    return None if _configured is None else _configured.event_store


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
