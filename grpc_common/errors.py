"""Turning domain refusals into gRPC statuses with a ``google.rpc.ErrorInfo`` detail.

Each service declares one ``ErrorTable`` (exception type -> code and reason) and decorates its
servicers with ``table.guard``; servicers never build statuses by hand. Anything the table
does not know is a bug: it is logged with its traceback and answered ``INTERNAL``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from shared_kernel.errors import DomainError

DOMAIN = "bank.v1"
log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A code and an ErrorInfo reason. ``reason=None``: the exception's own ``reason``."""

    code: grpc.StatusCode
    reason: str | None


class Described(NamedTuple):
    code: grpc.StatusCode
    reason: str
    message: str
    metadata: Mapping[str, str]


def status_message(
    code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str] | None = None
) -> status_pb2.Status:
    """A ``google.rpc.Status`` whose details carry ``ErrorInfo{domain: bank.v1, reason,
    metadata}``."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def rich_status(
    code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str] | None = None
) -> grpc.Status:
    """``status_message`` as the status a call ends with."""
    return rpc_status.to_status(status_message(code, reason, message, metadata))


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ``ErrorInfo`` detail of a failed call, if it carries one."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    return None


class ErrorTable:
    """Maps exception types to (code, reason); looked up along the exception's MRO."""

    def __init__(
        self,
        entries: Mapping[type[BaseException], Refusal],
        codes_by_reason: Mapping[str, grpc.StatusCode] | None = None,
    ) -> None:
        self._entries = dict(entries)
        # For refusals relayed from another service: their reason decides the code.
        self._codes_by_reason = dict(codes_by_reason or {})

    def refusal_for(self, exc: BaseException) -> Refusal | None:
        for cls in type(exc).__mro__:
            refusal = self._entries.get(cls)
            if refusal is not None:
                return refusal
        return None

    def describe(self, exc: BaseException) -> Described | None:
        """Code, reason, message and metadata for ``exc``; None if the table does not know it."""
        refusal = self.refusal_for(exc)
        if refusal is None:
            return None
        metadata = exc.metadata if isinstance(exc, DomainError) else {}
        code, reason = refusal.code, refusal.reason
        if reason is None:
            reason = str(getattr(exc, "reason", "")) or code.name
            code = self._codes_by_reason.get(reason, code)
        return Described(code, reason, str(exc) or reason, metadata)

    def status_message_for(self, exc: BaseException) -> status_pb2.Status:
        """``exc`` as a ``google.rpc.Status`` (an unknown one as ``INTERNAL``, logged)."""
        described = self.describe(exc)
        if described is None:
            log.exception("unhandled error in %s", type(exc).__name__, exc_info=exc)
            return status_message(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")
        return status_message(*described)

    def status_for(self, exc: BaseException) -> grpc.Status | None:
        described = self.describe(exc)
        if described is None:
            return None
        return rich_status(*described)

    async def _abort(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        status = self.status_for(exc)
        if status is None:
            log.exception("unhandled error in %s", type(exc).__name__, exc_info=exc)
            status = rich_status(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")
        await context.abort(status.code, status.details, status.trailing_metadata)

    def guard(self, servicer_class: type[T]) -> type[T]:
        """Class decorator: every RPC method (CamelCase) answers refusals through this table."""
        for name, method in list(vars(servicer_class).items()):
            if not name[:1].isupper() or not callable(method):
                continue
            if inspect.isasyncgenfunction(method):
                setattr(servicer_class, name, self._guard_stream(method))
            elif inspect.iscoroutinefunction(method):
                setattr(servicer_class, name, self._guard_unary(method))
        return servicer_class

    def _guard_unary(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def unary(servicer: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await method(servicer, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, exc)

        return unary

    def _guard_stream(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def stream(servicer: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(servicer, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, exc)

        return stream
