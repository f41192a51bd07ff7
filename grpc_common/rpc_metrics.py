"""``ServerMetrics``: the interceptor that counts and times every RPC a server handles.

Installed by ``grpc_common.server.serve`` as the outermost interceptor when metrics are on
(see ``grpc_common.metrics``, which owns the families it fills): calls by method and status
code, messages of streaming calls, and the reservation protocol's steps, whether they come
as unary calls or inside an ``ExecuteSteps`` stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from grpc_common.metrics import Metrics

EXECUTE_STEPS = "/bank.v1.ReservationService/ExecuteSteps"
# The unary ReservationService methods, by the step each one is.
UNARY_STEPS = {f"/bank.v1.ReservationService/{name}": name.lower() for name in (
    "Reserve", "Credit", "Capture", "Release",
)}  # fmt: skip

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


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
