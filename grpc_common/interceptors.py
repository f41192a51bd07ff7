"""Request bodies that do not decode are refused as ``INVALID_ARGUMENT``; bodies above
their method's size limit (``grpc_common.limits``) as ``RESOURCE_EXHAUSTED``, undecoded.

grpc decodes a request before any servicer code runs and answers ``UNKNOWN`` (``INTERNAL``
in some versions) when that fails; a message that fails mid-stream ends the servicer's
reading with an exception it never expected. A body that is not the method's message
(random bytes, a string field holding invalid UTF-8, which proto3 refuses at parse time)
is the caller's error, so ``DecodeGuard`` answers it like any other malformed argument:
``INVALID_ARGUMENT`` with an ``ErrorInfo`` whose ``metadata["field"]`` is ``request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from grpc_common import limits
from grpc_common.errors import rich_status

log = logging.getLogger(__name__)

BANK_METHODS = "/bank."


class Undecodable:
    """Stands in for a request that did not decode, so the behaviour can refuse it."""

    __slots__ = ("limit", "reason", "size")

    def __init__(self, reason: str, size: int = 0, limit: int = 0) -> None:
        self.reason = reason
        # Set when the message was too large to decode: its size and the method's limit.
        self.size = size
        self.limit = limit


def _tolerant(deserializer: Callable[[bytes], Any], limit: int) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        if len(raw) > limit:
            return Undecodable("too large", len(raw), limit)
        try:
            return deserializer(raw)
        except Exception as exc:
            return Undecodable(str(exc) or type(exc).__name__)

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext, request: Undecodable) -> None:
    if request.limit:
        status = rich_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "MESSAGE_TOO_LARGE",
            f"request: {request.size} bytes, above this method's {request.limit}",
            {"limit": str(request.limit), "size": str(request.size)},
        )
    else:
        log.debug("undecodable request: %s", request.reason)
        status = rich_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            f"request: {request.reason}",
            {"field": "request"},
        )
    await context.abort(status.code, status.details, status.trailing_metadata)


def _guard_unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        return await behaviour(request, context)

    return guarded


def _guard_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        # aclosing: a cancelled call closes the servicer's generator at once, not at GC.
        async with contextlib.aclosing(behaviour(request, context)) as responses:
            async for response in responses:
                yield response

    return guarded


class _Requests:
    """A client's request stream, ended at the first message that does not decode.

    The refusal is sent from the call's own task: read there, it is sent at once; read
    by another task of the servicer, the stream just ends for it and the call is refused
    once the servicer is done, because a status sent from another task races the call's
    own sends (seen as a call that never ends).
    """

    def __init__(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        self._requests = aiter(requests)
        self._context = context
        self._task = asyncio.current_task()
        self.refusal: Undecodable | None = None

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        if self.refusal is not None:
            raise StopAsyncIteration
        request = await anext(self._requests)
        if not isinstance(request, Undecodable):
            return request
        if asyncio.current_task() is self._task:
            await _refuse(self._context, request)
        self.refusal = request
        raise StopAsyncIteration


def _guard_requests(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """For client-streaming methods: a message that does not decode refuses the call."""
    if inspect.isasyncgenfunction(behaviour):

        async def streamed(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            checked = _Requests(requests, context)
            async with contextlib.aclosing(behaviour(checked, context)) as responses:
                async for response in responses:
                    yield response
            if checked.refusal is not None:
                await _refuse(context, checked.refusal)

        return streamed

    async def unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        checked = _Requests(requests, context)
        response = await behaviour(checked, context)
        if checked.refusal is not None:
            await _refuse(context, checked.refusal)
        return response

    return unary


# The field of an RpcMethodHandler holding the behaviour, by (request, response) streaming.
_BEHAVIOURS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def guard_handler(
    handler: grpc.RpcMethodHandler, limit: int = limits.LARGEST
) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that cannot raise and a behaviour that refuses.

    Synchronous behaviours are left as they are (the bank has none): grpc runs them on
    threads, where an awaited refusal does not fit. A client-streaming servicer must read
    its requests through the iterator it is given; ``context.read()`` is not guarded.
    """
    if handler.request_deserializer is None:
        return handler
    kind = _BEHAVIOURS[handler.request_streaming, handler.response_streaming]
    behaviour = getattr(handler, kind)
    if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
        return handler
    if handler.request_streaming:
        guarded = _guard_requests(behaviour)
    elif inspect.isasyncgenfunction(behaviour):
        guarded = _guard_stream(behaviour)
    else:
        # A unary answer, or a coroutine streaming through context.write: grpc tells a
        # coroutine from an async generator, so the guard keeps the kind it wraps.
        guarded = _guard_unary(behaviour)
    return handler._replace(
        request_deserializer=_tolerant(handler.request_deserializer, limit), **{kind: guarded}
    )


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Guards the handlers of the services under ``prefix``; health and reflection keep theirs."""

    def __init__(self, prefix: str = BANK_METHODS) -> None:
        self._prefix = prefix
        # Method name -> (handler as found, guarded handler): guarded once, not per call.
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = guard_handler(handler, limits.limit_of(method))
        self._guarded[method] = (handler, guarded)
        return guarded
