"""The account service's ReservationService as the transfer process sees it (AccountsPort).

Every call carries a deadline. A refusal the account service decided (its ErrorInfo reason)
becomes ``StepRefused``; anything that leaves the outcome open — the peer down, a deadline,
an overloaded or misconfigured peer — becomes ``StepUnavailable`` and the step is retried.

The channel is plaintext unless the process is configured with ``ChannelSecurity`` (TLS,
mutual TLS, a bearer token sent as metadata on every call, the ExecuteSteps stream included).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from bank.v1 import account_pb2 as pb
from bank.v1 import account_pb2_grpc
from grpc_common import tls
from grpc_common.errors import error_info
from grpc_common.step_order import STEP_ORDER_METADATA
from transfer_service.process import Decided, StepRefused, StepUnavailable, one_by_one

Response = TypeVar("Response")
log = logging.getLogger(__name__)

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
    # With several account-service addresses (ipv4:HOST:PORT,HOST:PORT or a DNS name with
    # several records), unary calls and new streams spread over all of them.
    ("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}'),
]


# Codes that say our credentials are not accepted: logged, since retrying will not help.
_REFUSED_CREDENTIALS = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
)
_CREDENTIALS_WARNING_INTERVAL = 30.0
_last_credentials_warning = -_CREDENTIALS_WARNING_INTERVAL


def _warn_credentials(code: grpc.StatusCode, details: str | None) -> None:
    global _last_credentials_warning
    now = time.monotonic()
    if now - _last_credentials_warning >= _CREDENTIALS_WARNING_INTERVAL:
        _last_credentials_warning = now
        log.warning("the account service refuses our credentials: %s: %s", code.name, details)


class _AddMetadata:
    """Adds fixed metadata (the bearer token) to every call of a channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return details._replace(metadata=metadata)


class _UnaryUnaryMetadata(_AddMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _UnaryStreamMetadata(_AddMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _StreamUnaryMetadata(_AddMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStreamMetadata(_AddMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def open_channel(target: str, security: tls.ChannelSecurity | None = None) -> grpc.aio.Channel:
    """A channel to the account service. ``security`` None: the process's configured
    security (``grpc_common.tls.configured``), else plaintext with no credentials."""
    security = security or tls.configured().accounts
    if security is None:
        if not tls.is_loopback(target):
            log.warning("calling the account service at %s in plaintext", target)
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    options = [*CHANNEL_OPTIONS, *security.options]
    interceptors = None
    if security.metadata:
        metadata = tuple(security.metadata)
        interceptors = [
            kind(metadata)
            for kind in (
                _UnaryUnaryMetadata,
                _UnaryStreamMetadata,
                _StreamUnaryMetadata,
                _StreamStreamMetadata,
            )
        ]
    log.info("account service %s: %s", target, security.description)
    if security.credentials is None:
        if not tls.is_loopback(target):
            log.warning(
                "calling the account service at %s in plaintext%s: use --accounts-ca",
                target,
                ", bearer token included," if security.metadata else "",
            )
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, security.credentials, options=options, interceptors=interceptors
    )


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
            if code in _REFUSED_CREDENTIALS:
                _warn_credentials(code, error.details())
            if code in _UNDECIDED:
                raise StepUnavailable(f"{code.name}: {error.details()}") from error
            info = error_info(error)
            reason = info.reason if info is not None else code.name
            raise StepRefused(reason, error.details() or reason) from error


class StreamingAccounts:
    """AccountsPort over one long-lived ``ReservationService.ExecuteSteps`` stream.

    Steps from every transfer in flight share the stream: whatever is waiting when the
    previous message has gone out travels as the next message, so under load one message
    carries many steps and the per-call cost of gRPC is paid once per batch, not per step.
    Outcomes are matched to steps by id. A step that gets no outcome within the deadline,
    or whose stream breaks, is ``StepUnavailable``: the process retries it, which is safe
    because every step is idempotent by its reference.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float = 5.0) -> None:
        self._stub = account_pb2_grpc.ReservationServiceStub(channel)
        self._deadline = deadline
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[pb.Account | pb.StepError]] = {}
        self._outbox: list[pb.Step] = []
        self._wakeup = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._generation = 0
        # Whether the open stream's server runs a step after another (Step.after_step_id).
        self._ordered = False

    async def reserve(self, account_id: str, reference: str, amount: int) -> str:
        request = pb.ReserveRequest(account_id=account_id, reference=reference, amount=amount)
        account = await self._step(pb.Step(reserve=request))
        return account.currency

    async def credit(self, account_id: str, reference: str, amount: int, currency: str) -> None:
        request = pb.CreditRequest(
            account_id=account_id, reference=reference, amount=amount, currency=currency
        )
        await self._step(pb.Step(credit=request))

    async def capture(self, account_id: str, reference: str) -> None:
        request = pb.CaptureRequest(account_id=account_id, reference=reference)
        await self._step(pb.Step(capture=request))

    async def release(self, account_id: str, reference: str) -> None:
        request = pb.ReleaseRequest(account_id=account_id, reference=reference)
        await self._step(pb.Step(release=request))

    async def forward(
        self, from_account_id: str, to_account_id: str, reference: str, amount: int
    ) -> list[Decided]:
        """Reserve, credit and capture in one message, each to run once the one before
        succeeded; one at a time (``one_by_one``) until the server has said it can."""
        if not self._ordered:
            return await one_by_one(self, from_account_id, to_account_id, reference, amount)
        steps = (
            pb.Step(
                reserve=pb.ReserveRequest(
                    account_id=from_account_id, reference=reference, amount=amount
                )
            ),
            # No currency: it is the one the reserve answers with.
            pb.Step(
                credit=pb.CreditRequest(
                    account_id=to_account_id, reference=reference, amount=amount
                )
            ),
            pb.Step(capture=pb.CaptureRequest(account_id=from_account_id, reference=reference)),
        )
        sent = self._send(steps, ordered=True)
        results: list[Decided] = []
        try:
            for n, (step_id, future, timer) in enumerate(sent):
                try:
                    account = await self._outcome(step_id, future, timer)
                except (StepRefused, StepUnavailable) as exc:
                    results.append(exc)
                    break
                results.append(account.currency if n == 0 else None)
        finally:
            for step_id, _, timer in sent[len(results) :]:
                timer.cancel()
                self._waiting.pop(step_id, None)
        return results

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    async def _step(self, step: pb.Step) -> pb.Account:
        ((step_id, future, timer),) = self._send((step,))
        return await self._outcome(step_id, future, timer)

    def _send(
        self, steps: tuple[pb.Step, ...], ordered: bool = False
    ) -> list[tuple[int, asyncio.Future[pb.Account | pb.StepError], asyncio.TimerHandle]]:
        """Queues the steps for the next message (together); ``ordered``: each one runs
        only once the one before it succeeded."""
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run())
        loop = asyncio.get_running_loop()
        sent = []
        previous = 0
        for step in steps:
            step.step_id = step_id = next(self._ids)
            if ordered:
                step.after_step_id = previous
                previous = step_id
            future: asyncio.Future[pb.Account | pb.StepError] = loop.create_future()
            self._waiting[step_id] = future
            self._outbox.append(step)
            sent.append((step_id, future, loop.call_later(self._deadline, self._expire, step_id)))
        self._wakeup.set()
        return sent

    async def _outcome(
        self,
        step_id: int,
        future: asyncio.Future[pb.Account | pb.StepError],
        timer: asyncio.TimerHandle,
    ) -> pb.Account:
        try:
            outcome = await future
        finally:
            timer.cancel()
            self._waiting.pop(step_id, None)
        if isinstance(outcome, pb.Account):
            return outcome
        code = _CODES.get(outcome.code, grpc.StatusCode.UNKNOWN)
        if code in _UNDECIDED:
            raise StepUnavailable(f"{code.name}: {outcome.message}")
        raise StepRefused(outcome.reason or code.name, outcome.message or outcome.reason)

    def _expire(self, step_id: int) -> None:
        future = self._waiting.pop(step_id, None)
        if future is not None and not future.done():
            future.set_exception(StepUnavailable(f"no outcome within {self._deadline:g}s"))

    async def _requests(self, generation: int) -> AsyncIterator[pb.ExecuteStepsRequest]:
        # grpc does not stop reading this generator when its call fails, so a generator
        # of a broken stream must notice and leave the outbox to its successor.
        while generation == self._generation:
            if not self._outbox:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            steps, self._outbox = self._outbox, []
            yield pb.ExecuteStepsRequest(steps=steps)

    async def _run(self) -> None:
        """Keeps a stream open; fails the steps in flight whenever it breaks."""
        failures = 0
        while True:
            self._generation += 1
            self._wakeup.set()  # lets the previous stream's generator see it is over
            call = self._stub.ExecuteSteps(self._requests(self._generation))
            self._ordered = False
            try:
                metadata = await call.initial_metadata()
                self._ordered = STEP_ORDER_METADATA in tuple(metadata or ())
                async for response in call:
                    failures = 0
                    for outcome in response.outcomes:
                        future = self._waiting.get(outcome.step_id)
                        if future is not None and not future.done():
                            result = outcome.WhichOneof("result")
                            future.set_result(getattr(outcome, result))
            except grpc.aio.AioRpcError as error:
                if error.code() in _REFUSED_CREDENTIALS:
                    _warn_credentials(error.code(), error.details())
                self._fail_all(StepUnavailable(f"stream broke: {error.code().name}"))
            except asyncio.CancelledError:
                call.cancel()
                self._fail_all(StepUnavailable("stream closed"))
                raise
            else:
                self._fail_all(StepUnavailable("stream ended"))
            failures += 1
            await asyncio.sleep(min(0.05 * 2**failures, 1.0) * random.random())
            if not self._waiting:
                # Nothing to carry: let the next step open a fresh stream.
                self._pump = None
                return

    def _fail_all(self, error: StepUnavailable) -> None:
        # Steps still in the outbox were never sent; they ride on the next stream.
        sent = set(self._waiting) - {step.step_id for step in self._outbox}
        for step_id in sent:
            future = self._waiting.pop(step_id)
            if not future.done():
                future.set_exception(error)


_CODES = {code.value[0]: code for code in grpc.StatusCode}
