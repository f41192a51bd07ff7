"""The account service's ReservationService as the transfer process sees it (AccountsPort).

Every call carries a deadline. A refusal the account service decided (its ErrorInfo reason)
becomes ``StepRefused``; anything that leaves the outcome open — the peer down, a deadline,
an overloaded or misconfigured peer — becomes ``StepUnavailable`` and the step is retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from bank.v1 import account_pb2 as pb
from bank.v1 import account_pb2_grpc
from grpc_common.errors import error_info
from transfer_service.process import StepRefused, StepUnavailable

Response = TypeVar("Response")

# Codes that say nothing about the business outcome: retry, never refuse.
_UNDECIDED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


def open_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


class GrpcAccounts:
    """AccountsPort over bank.v1.ReservationService."""

    def __init__(self, channel: grpc.aio.Channel, deadline: float = 5.0) -> None:
        self._stub = account_pb2_grpc.ReservationServiceStub(channel)
        self._deadline = deadline

    async def reserve(self, account_id: str, reference: str, amount: int) -> str:
        request = pb.ReserveRequest(account_id=account_id, reference=reference, amount=amount)
        account = await self._call(self._stub.Reserve, request)
        return account.currency

    async def credit(self, account_id: str, reference: str, amount: int, currency: str) -> None:
        request = pb.CreditRequest(
            account_id=account_id, reference=reference, amount=amount, currency=currency
        )
        await self._call(self._stub.Credit, request)

    async def capture(self, account_id: str, reference: str) -> None:
        request = pb.CaptureRequest(account_id=account_id, reference=reference)
        await self._call(self._stub.Capture, request)

    async def release(self, account_id: str, reference: str) -> None:
        request = pb.ReleaseRequest(account_id=account_id, reference=reference)
        await self._call(self._stub.Release, request)

    async def _call(self, method: Callable[..., Awaitable[Response]], request: object) -> Response:
        try:
            return await method(request, timeout=self._deadline)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _UNDECIDED:
                raise StepUnavailable(f"{code.name}: {error.details()}") from error
            info = error_info(error)
            reason = info.reason if info is not None else code.name
            raise StepRefused(reason, error.details() or reason) from error
