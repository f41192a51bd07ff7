"""OpenTelemetry tracing through gRPC interceptors: one trace per transfer, across both services.

Off unless ``--otel-exporter console|otlp`` is given. When off, OpenTelemetry is not even
imported and no interceptor is installed. When on:

- ``ServerTracing`` (both services) opens a SERVER span for every unary ``/bank.`` call,
  continuing the trace named by the W3C ``traceparent`` metadata when the caller sends one.
  Streaming calls, health and reflection are not traced.
- The transfer service drives each transfer inside a ``transfer`` span and calls the
  account service through ``TracedChannel``, which opens a CLIENT span per step and sends
  its context as ``traceparent``. A transfer's trace is therefore: ``CreateTransfer``
  (server) → ``transfer`` → ``Reserve``/``Credit``/``Capture`` or ``Release`` (client) →
  the same (server, in the account service). A transfer resumed after a restart starts a
  trace of its own at ``transfer``.
- Every span about one transfer carries ``bank.transfer_id``; spans about one account
  carry ``bank.account_id``. Retries are events (``retry``) on the ``transfer`` span.

The ``ExecuteSteps`` stream carries many transfers' steps in one message, and its metadata
is sent once per stream, so it cannot carry a context per step: with tracing on, the steps
of a transfer whose trace is sampled go as unary calls (which carry it), and the others
keep to the stream (``transfer_service.server``). Under a trace that is not sampled no
span is made at all, and the decision travels with the calls, so sampling is what keeps
tracing cheap.

Exporters: ``console`` writes one JSON object per finished span to stdout; ``otlp`` sends
them over OTLP/gRPC (install the ``tracing`` extra), configured by the standard
``OTEL_EXPORTER_OTLP_…`` variables. ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and
``OTEL_TRACES_SAMPLER`` apply as usual.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)

EXPORTERS = ("none", "console", "otlp")
BANK_METHODS = "/bank."
RESERVATION_METHODS = "/bank.v1.ReservationService/"
TRANSFER_ID = "bank.transfer_id"
ACCOUNT_ID = "bank.account_id"

# Server spans whose status is an error (OpenTelemetry's gRPC conventions); on the client
# every code but OK is.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class TracingConfigError(ValueError):
    """The exporter asked for cannot be set up."""


class _State:
    tracer: Any = None
    provider: Any = None
    # OpenTelemetry's functions, bound once tracing is on (so that it is imported only then).
    current_span: Callable[..., Any] = staticmethod(lambda context=None: None)
    in_context: Callable[..., Any] = staticmethod(lambda span, context=None: None)
    attach: Callable[[Any], Any] = staticmethod(lambda context: None)
    detach: Callable[[Any], None] = staticmethod(lambda token: None)


_state = _State()


def configure(exporter: str, service_name: str) -> bool:
    """Turn tracing on for this process with ``exporter``; whether it is on.

    ``service_name`` is the resource's ``service.name`` unless the environment names one.
    Raises ``TracingConfigError`` for an unknown exporter or a missing package.
    """
    if exporter not in EXPORTERS:
        raise TracingConfigError(f"--otel-exporter {exporter!r}: expected one of {EXPORTERS}")
    if exporter == "none":
        return False
    try:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise TracingConfigError(
            f"--otel-exporter {exporter}: OpenTelemetry is not installed ({exc.name})"
        ) from None
    if exporter == "console":
        span_exporter: Any = ConsoleSpanExporter(formatter=_one_line)
    else:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingConfigError(
                "--otel-exporter otlp needs opentelemetry-exporter-otlp-proto-grpc:"
                " pip install 'reservebank[tracing]'"
            ) from None
        span_exporter = OTLPSpanExporter()
    install(BatchSpanProcessor(span_exporter), service_name)
    log.info("tracing: spans to %s", exporter)
    return True


def install(processor: Any, service_name: str, *, set_global: bool = True) -> None:
    """Turn tracing on with a span processor of the SDK's (``configure`` chooses one).

    ``set_global``: also make it OpenTelemetry's global tracer provider, which can be set
    once per process (tests install theirs without it).
    """
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    if set_global:
        trace.set_tracer_provider(provider)
    _state.provider = provider
    _state.tracer = provider.get_tracer("reservebank")
    _state.current_span = trace.get_current_span
    _state.in_context = trace.set_span_in_context
    _state.attach = otel_context.attach
    _state.detach = otel_context.detach


def _one_line(span: Any) -> str:
    return span.to_json(indent=None) + os.linesep


def enabled() -> bool:
    return _state.tracer is not None


def shutdown() -> None:
    """Export the spans still queued; tracing is off afterwards."""
    provider, _state.provider, _state.tracer = _state.provider, None, None
    if provider is not None:
        provider.shutdown()


def sampled() -> bool:
    """Whether the span current here is sampled (its trace is kept and exported)."""
    if _state.tracer is None:
        return False
    return _state.current_span().get_span_context().trace_flags.sampled


def _dropped(parent: Any = None) -> bool:
    """Whether the context (default: the current one) continues a trace not sampled.

    Every standard sampler decides a child as its parent was decided (``parentbased_…``)
    or by the trace id (``traceidratio``), so a span under such a parent would only be
    dropped: it is not made at all, which is most of the cost of sampling.
    """
    context = _state.current_span(parent).get_span_context()
    return context.is_valid and not context.trace_flags.sampled


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the span current here, for log lines; None if none."""
    if _state.tracer is None:
        return None
    context = _state.current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


class _Current:
    """A span started, and current, for the duration of a ``with`` block.

    What ``Tracer.start_as_current_span`` does, without its two generator-based context
    managers: this runs for every call, sampled or not. Exceptions are not recorded.
    """

    __slots__ = ("_base", "_token", "span")

    def __init__(
        self, name: str, kind: Any = None, attributes: Any = None, parent: Any = None
    ) -> None:
        tracer = _state.tracer
        if kind is None:
            self.span = tracer.start_span(name, context=parent, attributes=attributes)
        else:
            self.span = tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        self._base = parent
        self._token: Any = None

    def __enter__(self) -> Any:
        self._token = _state.attach(_state.in_context(self.span, self._base))
        return self.span

    def __exit__(self, *exc_info: object) -> None:
        _state.detach(self._token)
        self.span.end()


class _NoSpan:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def span(name: str, attributes: dict[str, Any] | None = None) -> _Current | _NoSpan:
    """An INTERNAL span, current inside the ``with`` block; the block gets None (and no span
    is made) when tracing is off or the current trace is not sampled."""
    if _state.tracer is None or _dropped():
        return _NO_SPAN
    return _Current(name, attributes=attributes)


def note_retry(transfer_id: str, step: str, exc: Exception) -> None:
    """``TransferProcess``'s ``on_retry`` hook: a ``retry`` event on the current span."""
    if _state.tracer is None:
        return
    _state.current_span().add_event(
        "retry",
        {
            TRANSFER_ID: transfer_id,
            "bank.step": step,
            "exception.type": type(exc).__name__,
            "exception.message": str(exc),
        },
    )


def _ids(method: str, message: Any) -> dict[str, str]:
    """``bank.transfer_id`` and ``bank.account_id`` of a request or response, when it names them.

    On the ReservationService the ``reference`` is the transfer id (the transfer service
    uses it as the idempotency key of every step).
    """
    found: dict[str, str] = {}
    transfer_id = getattr(message, "transfer_id", "")
    if not transfer_id and method.startswith(RESERVATION_METHODS):
        transfer_id = getattr(message, "reference", "")
    if transfer_id and isinstance(transfer_id, str):
        found[TRANSFER_ID] = transfer_id
    account_id = getattr(message, "account_id", "")
    if account_id and isinstance(account_id, str):
        found[ACCOUNT_ID] = account_id
    return found


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.strip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


class _MetadataGetter:
    """Reads a propagator's keys from gRPC metadata (pairs)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        values = [v for k, v in carrier or () if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        return [k for k, _ in carrier or ()]


_GETTER = _MetadataGetter()


class ServerTracing(grpc.aio.ServerInterceptor):
    """A SERVER span around every unary call under ``prefix``, child of the caller's context."""

    def __init__(self, prefix: str = BANK_METHODS) -> None:
        if _state.tracer is None:
            raise RuntimeError("tracing is not configured")
        self._prefix = prefix
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            handler is None
            or not method.startswith(self._prefix)
            or handler.request_streaming
            or handler.response_streaming
            or not inspect.iscoroutinefunction(handler.unary_unary)
        ):
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        traced = handler._replace(unary_unary=_traced_unary(handler.unary_unary, method))
        self._wrapped[method] = (handler, traced)
        return traced


def _traced_unary(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, Status, StatusCode

    name = method.strip("/")
    attributes = _rpc_attributes(method)
    fields = frozenset(propagate.get_global_textmap().fields)
    no_parent = Context()

    async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = context.invocation_metadata() or ()
        # Most callers send no trace context: skip the propagator's parsing for them.
        if any(key in fields for key, _ in metadata):
            parent = propagate.extract(metadata, getter=_GETTER)
            if _dropped(parent):
                # Keep the caller's decision for whatever this call makes, but no span.
                token = otel_context.attach(parent)
                try:
                    return await behaviour(request, context)
                finally:
                    otel_context.detach(token)
        else:
            parent = no_parent
        with _Current(name, SpanKind.SERVER, attributes, parent) as current:
            if not current.is_recording():
                return await behaviour(request, context)
            ids = _ids(method, request)
            if ids:
                current.set_attributes(ids)
            response = failure = None
            try:
                response = await behaviour(request, context)
                return response
            except BaseException as exc:
                failure = exc
                raise
            finally:
                code = _final_code(context, failure)
                current.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in _SERVER_ERRORS:
                    current.set_status(Status(StatusCode.ERROR, code.name))
                if TRANSFER_ID not in ids and response is not None:
                    late = _ids(method, response).get(TRANSFER_ID)
                    if late:
                        current.set_attribute(TRANSFER_ID, late)

    return traced


def _final_code(
    context: grpc.aio.ServicerContext, failure: BaseException | None
) -> grpc.StatusCode:
    """The status code a call ends with: the one set on it, else what its end implies."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if failure is None:
        return grpc.StatusCode.OK
    if isinstance(failure, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class TracedChannel:
    """A channel whose unary calls open CLIENT spans and carry their context as metadata.

    Stands in for the ``grpc.aio.Channel`` it wraps (stubs take it as they are); every
    other kind of call goes through unchanged, untraced.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _TracedUnaryUnary:
        return _TracedUnaryUnary(self._channel.unary_unary(method, *args, **kwargs), method)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


class _TracedUnaryUnary:
    def __init__(self, multicallable: Any, method: str) -> None:
        from opentelemetry import propagate

        self._multicallable = multicallable
        self._method = method
        self._name = method.strip("/")
        self._attributes = _rpc_attributes(method)
        self._inject = propagate.inject

    def __call__(self, request: Any, *, metadata: Any = None, **kwargs: Any) -> Any:
        return self._call(request, metadata, kwargs)

    async def _call(self, request: Any, metadata: Any, kwargs: dict[str, Any]) -> Any:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        if _dropped():
            # Not sampled: no span, but the decision travels, so the server makes none either.
            carrier: dict[str, str] = {}
            self._inject(carrier)
            sent = (*tuple(metadata or ()), *carrier.items())
            return await self._multicallable(request, metadata=sent, **kwargs)
        with _Current(self._name, SpanKind.CLIENT, self._attributes) as current:
            ids = _ids(self._method, request)
            if ids:
                current.set_attributes(ids)
            carrier = {}
            self._inject(carrier)
            sent = (*tuple(metadata or ()), *carrier.items())
            try:
                response = await self._multicallable(request, metadata=sent, **kwargs)
            except grpc.aio.AioRpcError as error:
                current.set_attribute("rpc.grpc.status_code", error.code().value[0])
                current.set_status(Status(StatusCode.ERROR, error.code().name))
                raise
            current.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
            return response
