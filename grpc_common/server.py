"""The composition of a gRPC server: servicers, health, reflection, signals, graceful stop.

Health answers NOT_SERVING until the service's probe (its database) answers, SERVING after,
and NOT_SERVING again while the probe fails or once SIGTERM starts the drain.

``run_service`` serves a service on the store its composition root opened: the store is
probed for health and closed after the stop, nothing more is asked of it here.

Security (``grpc_common.tls.ServerSecurity``) is optional: with none, the server listens in
plaintext and installs no interceptor beyond the decode guard. So are metrics and tracing
(``grpc_common.metrics``, ``grpc_common.tracing``): their interceptors are installed, and
the ``/metrics`` endpoint started, only when the process configured them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from grpc_common import limits, metrics, tls, tracing
from grpc_common.auth import BearerAuth
from grpc_common.interceptors import DecodeGuard
from grpc_common.rpc_metrics import ServerMetrics
from grpc_common.token_reload import TokenReloader
from shared_kernel import page_tokens

log = logging.getLogger(__name__)

MAX_SEND_BYTES = 4 * 1024 * 1024
# How often the transfer service pings its long-lived step streams, to notice a peer that
# went silent (a frozen process, a dropped link) rather than wait on it.
CLIENT_KEEPALIVE_MS = 20_000
SERVER_OPTIONS = [
    # The largest any method takes; each method's own limit is checked before decoding.
    ("grpc.max_receive_message_length", limits.LARGEST),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.so_reuseport", 0),
    # Those pings, on a stream idle for a while: the default (one per 5 min) answers them
    # with GOAWAY "too_many_pings" after a couple of idle minutes, breaking the stream.
    ("grpc.http2.min_ping_interval_without_data_ms", CLIENT_KEEPALIVE_MS // 2),
]
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


@dataclass
class Service:
    """One servicer to add: its generated ``add_…_to_server`` function and full name."""

    name: str
    servicer: object
    add_to_server: Callable[[object, grpc.aio.Server], None]


@dataclass
class ServerConfig:
    listen: str
    services: Sequence[Service]
    probe: Callable[[], Awaitable[None]]
    grace: float = 10.0
    probe_interval: float = 2.0
    on_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run when the drain starts: ends long-lived streams so they do not hold the grace period.
    on_drain: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # None: the process's configured security (grpc_common.tls.configured), else plaintext.
    security: tls.ServerSecurity | None = None
    # Also answer grpc.health.v1 alone, in plaintext, on this address (HOST:PORT): for
    # probes that cannot speak (mutual) TLS, such as Kubernetes' gRPC probes.
    health_listen: str = ""


def _reflection_v1_file() -> None:
    """Registers ``grpc.reflection.v1`` in the descriptor pool.

    The Python package ships only v1alpha; v1 is the same protocol under another package
    name, so its descriptor is v1alpha's renamed and its handler is v1alpha's servicer.
    """
    pool = descriptor_pool.Default()
    with contextlib.suppress(KeyError):
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for fld in message.field:
            if fld.type_name.startswith(".grpc.reflection.v1alpha."):
                fld.type_name = fld.type_name.replace(".v1alpha.", ".v1.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    proto.options.Clear()
    pool.Add(proto)


def _add_reflection(server: grpc.aio.Server, names: Sequence[str]) -> None:
    _reflection_v1_file()
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    servicer = ReflectionServicer([*names, reflection.SERVICE_NAME, REFLECTION_V1, health_name])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1_handler,))


class _Health:
    """Keeps the health status in step with the probe until the drain starts."""

    def __init__(self, servicer: HealthServicer, names: Sequence[str]) -> None:
        self.servicer = servicer
        self.names = ["", *names]
        self.serving: bool | None = None
        self.draining = False

    async def set(self, serving: bool) -> None:
        if self.draining or serving == self.serving:
            return
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self.names:
            await self.servicer.set(name, status)
        log.info("health: %s", "SERVING" if serving else "NOT_SERVING")

    async def watch(self, probe: Callable[[], Awaitable[None]], interval: float) -> None:
        while True:
            try:
                await probe()
            except Exception as exc:
                if self.serving is not False:
                    log.warning("database not answering: %s", exc)
                await self.set(False)
                await asyncio.sleep(min(interval, 0.5) if self.serving is None else interval)
                continue
            await self.set(True)
            await asyncio.sleep(interval)

    async def drain(self) -> None:
        self.draining = True
        await self.servicer.enter_graceful_shutdown()


def _bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """The port bound; ``RuntimeError`` when the address cannot be bound."""
    if credentials is None:
        return server.add_insecure_port(listen)
    return server.add_secure_port(listen, credentials)


def _health_server(listen: str, servicer: HealthServicer) -> grpc.aio.Server | None:
    """A plaintext server of the health service alone on ``listen`` (none if empty): the
    status it tells is the main server's; it serves nothing else, so it needs no credentials."""
    if not listen:
        return None
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1024)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    try:
        server.add_insecure_port(listen)
    except RuntimeError:
        log.critical("cannot listen for health checks on %s: the address is in use", listen)
        raise SystemExit(2) from None
    log.info("health checks (only) in plaintext on %s", listen)
    return server


def observability_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The metrics and tracing interceptors the process configured; none when both are off."""
    found: list[grpc.aio.ServerInterceptor] = []
    measured = metrics.configured()
    if measured is not None:
        found.append(ServerMetrics(measured))
    if tracing.enabled():
        found.append(tracing.ServerTracing())
    return found


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set), then drain within the grace period."""
    security = config.security or tls.configured().server or tls.ServerSecurity()
    # Outermost first: metrics see every call, refusals by the guard and by auth included.
    interceptors = [*observability_interceptors(), DecodeGuard(), *security.interceptors]
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    names = [service.name for service in config.services]
    for service in config.services:
        service.add_to_server(service.servicer, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _add_reflection(server, names)
    health = _Health(health_servicer, names)
    await health.set(False)

    try:
        port = _bind(server, config.listen, security.credentials)
    except RuntimeError:
        log.critical(
            "cannot listen on %s: the address is in use (another process serving on it?)"
            " or not this machine's",
            config.listen,
        )
        raise SystemExit(2) from None
    if security.credentials is None:
        if not tls.is_loopback(config.listen):
            log.warning(
                "serving plaintext on %s, reachable from other machines: anyone on the"
                " network can read and alter the calls; use --tls-cert and --tls-key",
                config.listen,
            )
    if page_tokens.uses_builtin_key() and not tls.is_loopback(config.listen):
        log.warning(
            "page tokens are signed with the built-in key on %s: anyone can make one;"
            " give every replica the same secret with --page-token-key-file",
            config.listen,
        )
    host = config.listen.rsplit(":", 1)[0]
    try:
        metrics_http = metrics.start_http_server()
    except metrics.MetricsConfigError as exc:
        log.critical("%s", exc)
        raise SystemExit(2) from None
    health_only = _health_server(config.health_listen, health_servicer)
    await server.start()
    if health_only is not None:
        await health_only.start()
    log.info("listening on %s:%d (%s)", host, port, ", ".join(names))
    log.info("security: %s", security.description)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(health.watch(config.probe, config.probe_interval))
    reloaders = [
        TokenReloader(interceptor)
        for interceptor in security.interceptors
        if isinstance(interceptor, BearerAuth) and interceptor.path
    ]
    for reloader in reloaders:
        reloader.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping: draining calls for up to %.1f s", config.grace)
        watcher.cancel()
        for reloader in reloaders:
            reloader.stop()
        await health.drain()
        for hook in config.on_drain:
            await hook()
        await server.stop(config.grace)
        if health_only is not None:
            await health_only.stop(0)
        for hook in config.on_stop:
            await hook()
        if metrics_http is not None:
            metrics_http.close()
        tracing.shutdown()
        log.info("stopped")


@dataclass
class Assembly:
    """What a service's composition root builds on top of its store."""

    services: Sequence[Service]
    on_start: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run when the drain starts: ends long-lived streams so they do not hold the grace period.
    on_drain: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)


class Store(Protocol):
    """What serving asks of a service's store: a probe of its database, and a close."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=Store)


async def run_service(
    *,
    listen: str,
    store: S,
    grace: float,
    build: Callable[[S], Assembly],
    stop: asyncio.Event | None = None,
    security: tls.ServerSecurity | None = None,
) -> None:
    """Build the service on ``store`` (opened, ready to use) and serve until stopped.

    Health follows ``store.ping``; the store is closed after the service's own stop hooks.
    ``security``: None means the process's configured security (plaintext if none).
    """
    assembly = build(store)
    for hook in assembly.on_start:
        await hook()
    config = ServerConfig(
        listen=listen,
        services=assembly.services,
        probe=store.ping,
        grace=grace,
        on_stop=[*assembly.on_stop, store.close],
        on_drain=assembly.on_drain,
        security=security,
        health_listen=tls.configured().health_listen,
    )
    await serve(config, stop)
