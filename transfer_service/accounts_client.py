"""The account service's ReservationService as the transfer process sees it (AccountsPort).

A chain of steps goes to the account service in one ``ExecuteSteps`` message, each step
to run only once the one before took effect. With several account-service replicas, each
account's steps go to one of them (rendezvous hashing of the account id over the replicas
that answer), so a busy account is decided in one place; a chain over accounts of two
replicas goes as consecutive pieces, one per replica.

Every step carries a deadline. A refusal the account service decided (its ErrorInfo
reason) is ``Refused``; ``EPOCH_FENCED`` is ``Fenced``; anything that leaves the outcome
open — the peer down, a deadline, an overloaded or misconfigured peer — is ``Undecided``,
and the process sends the chain again.

The channel is plaintext unless the process is configured with ``ChannelSecurity`` (TLS,
mutual TLS, a bearer token sent as metadata on every call, the ExecuteSteps stream included).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from bank.v1 import account_pb2 as pb
from bank.v1 import account_pb2_grpc
from grpc_common import tls
from grpc_common.errors import error_info
from grpc_common.server import CLIENT_KEEPALIVE_MS
from grpc_common.step_order import STEP_ORDER_METADATA
from transfer_service.domain import AccountStep, Action, Answer, Applied, Fenced, Refused, Undecided

log = logging.getLogger(__name__)

# A chain as ``run_many`` takes it: its steps, reference, epoch and currency; and the
# answers it yields: chains (by index) and their answers.
Chain = tuple[Sequence[AccountStep], str, int, str]
Wave = list[tuple[int, list[Answer]]]


def _ready(ready: list[int], wake: asyncio.Event, n: int, _: object) -> None:
    ready.append(n)
    wake.set()


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
    ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
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


# --- steps as messages, outcomes as answers --------------------------------------------------

_FIELDS = {
    Action.RESERVE: "reserve",
    Action.CREDIT: "credit",
    Action.HOLD_CREDIT: "hold_credit",
    Action.CONFIRM_CREDIT: "confirm_credit",
    Action.CANCEL_CREDIT: "cancel_credit",
    Action.CAPTURE: "capture",
    Action.RELEASE: "release",
}
_WITH_CURRENCY = frozenset({Action.RESERVE, Action.CREDIT, Action.HOLD_CREDIT})
_WITH_AMOUNT = frozenset({Action.RESERVE, Action.CREDIT, Action.HOLD_CREDIT, Action.CAPTURE})


def step_message(step: AccountStep, reference: str, epoch: int, currency: str) -> pb.Step:
    """``step`` as an ExecuteSteps step (no step ids yet)."""
    message = pb.Step()
    # Filled in place: a sub-message given to a constructor is copied.
    request = getattr(message, _FIELDS[step.action])
    request.account_id = step.account_id
    request.reference = reference
    request.epoch = epoch
    if step.amount and step.action in _WITH_AMOUNT:
        request.amount = step.amount
    if currency and step.action in _WITH_CURRENCY:
        request.currency = currency
    if step.owner and step.action is Action.RESERVE:
        request.owner = step.owner
    if step.expires_at:
        request.expires_at.FromMicroseconds(step.expires_at)
    return message


def _owner_refused(reason: str, metadata) -> bool:
    """The account is not the owner's the transfer's caller is bound to: a final refusal,
    unlike a PERMISSION_DENIED for this service's own credentials (retried)."""
    return reason == "PERMISSION_DENIED" and metadata.get("check") == "owner"


def answer(outcome: pb.Account | pb.StepError) -> Answer:
    if isinstance(outcome, pb.Account):
        return Applied(outcome.currency)
    code = _CODES.get(outcome.code, grpc.StatusCode.UNKNOWN)
    if outcome.reason == "EPOCH_FENCED":
        return Fenced(outcome.message)
    if _owner_refused(outcome.reason, outcome.metadata):
        return Refused(outcome.reason, outcome.message, dict(outcome.metadata))
    if code in _UNDECIDED:
        return Undecided(f"{code.name}: {outcome.message}")
    return Refused(outcome.reason or code.name, outcome.message, dict(outcome.metadata))


def _pieces(steps: Sequence[AccountStep], route) -> list[list[AccountStep]]:
    """``steps`` cut where the replica changes, in order."""
    pieces: list[list[AccountStep]] = []
    last = None
    for step in steps:
        replica = route(step.account_id)
        if pieces and replica is last:
            pieces[-1].append(step)
        else:
            pieces.append([step])
        last = replica
    return pieces


# --- one stream to one replica -------------------------------------------------------------


class StepStream:
    """One long-lived ``ReservationService.ExecuteSteps`` stream to one replica.

    Chains from every transfer in flight share the stream: whatever is waiting when the
    previous message has gone out travels as the next message, so under load one message
    carries many steps and gRPC's per-call cost is paid once per batch. Outcomes are
    matched to steps by id. A step with no outcome within the deadline, or whose stream
    breaks, is ``Undecided``; the process sends its chain again, which is safe because
    every step is answered finally by its reference.
    """

    def __init__(self, channel: grpc.aio.Channel, deadline: float = 5.0) -> None:
        self._stub = account_pb2_grpc.ReservationServiceStub(channel)
        self._deadline = deadline
        self._ids = itertools.count(1)
        # Each step sent and not answered yet, by id: the chain it belongs to.
        self._waiting: dict[int, _Chain] = {}
        self._outbox: list[pb.Step] = []
        self._wakeup = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._generation = 0
        # Whether the open stream's server runs a step after another (Step.after_step_id).
        self._ordered = False
        # False while the stream is broken and not open again: the replica may be down.
        self.healthy = True

    async def run(self, steps: Sequence[pb.Step]) -> list[Answer]:
        """Runs the chain; the answers up to and including the first not ``Applied``.
        A server that has not said it runs steps in order gets them one at a time."""
        if self._ordered:
            return await self._chain(steps)
        answers: list[Answer] = []
        for step in steps:
            (result,) = await self._chain([step])
            answers.append(result)
            if not isinstance(result, Applied):
                break
            # What the server would have filled in: the currency the step before answered.
            _fill_currency(steps, len(answers), result.currency)
        return answers

    async def _chain(self, steps: Sequence[pb.Step]) -> list[Answer]:
        chain = self._send(steps)
        # One deadline and one wake-up for the whole chain: its outcomes come back together.
        timer = asyncio.get_running_loop().call_later(
            self._deadline, self._end, chain, f"no outcome within {self._deadline:g}s"
        )
        try:
            await chain.ended
        finally:
            timer.cancel()
            self._forget(chain)
        return _answers(chain)

    def _forget(self, chain: _Chain) -> None:
        for step_id in chain.ids:
            self._waiting.pop(step_id, None)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    @property
    def ordered(self) -> bool:
        """The open stream's server runs a step after another (chains go as one)."""
        return self._ordered

    @property
    def deadline(self) -> float:
        return self._deadline

    def _send(self, steps: Sequence[pb.Step]) -> _Chain:
        """Queues the steps for the next message, together, each after the one before."""
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run())
        chain = _Chain(asyncio.get_running_loop().create_future(), len(steps))
        previous = 0
        for step in steps:
            step.step_id = step_id = next(self._ids)
            step.after_step_id = previous
            previous = step_id
            chain.ids.append(step_id)
            self._waiting[step_id] = chain
        self._outbox.extend(steps)
        self._wakeup.set()
        return chain

    @classmethod
    def _end_all(cls, chains: Sequence[_Chain], why: str) -> None:
        for chain in chains:
            cls._end(chain, why)

    @staticmethod
    def _end(chain: _Chain, why: str) -> None:
        """Ends the wait for a chain; the steps without an outcome are ``Undecided``."""
        if not chain.ended.done():
            chain.why = why
            chain.ended.set_result(None)

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
                self.healthy = True
                async for response in call:
                    failures = 0
                    for outcome in response.outcomes:
                        chain = self._waiting.pop(outcome.step_id, None)
                        if chain is not None and not chain.ended.done():
                            result = getattr(outcome, outcome.WhichOneof("result"))
                            chain.answered(outcome.step_id, result)
            except grpc.aio.AioRpcError as error:
                if error.code() in _REFUSED_CREDENTIALS:
                    _warn_credentials(error.code(), error.details())
                self.healthy = False
                self._fail_all(f"stream broke: {error.code().name}")
            except asyncio.CancelledError:
                call.cancel()
                self._fail_all("stream closed")
                raise
            else:
                self._fail_all("stream ended")
            failures += 1
            await asyncio.sleep(min(0.05 * 2**failures, 1.0) * random.random())
            if not self._waiting:
                # Nothing to carry: let the next step open a fresh stream.
                self._pump = None
                return

    def _fail_all(self, why: str) -> None:
        # Steps still in the outbox were never sent; they ride on the next stream.
        unsent = {step.step_id for step in self._outbox}
        for step_id in [i for i in self._waiting if i not in unsent]:
            self._end(self._waiting.pop(step_id), why)


def _answers(chain: _Chain) -> list[Answer]:
    """A chain's answers: up to and including the first not ``Applied``."""
    answers: list[Answer] = []
    for outcome in chain.outcomes:
        if outcome is None:
            answers.append(Undecided(chain.why))
            break
        answers.append(answer(outcome))
        if not isinstance(answers[-1], Applied):
            break
    return answers


class _Chain:
    """The steps of one chain in flight and their outcomes, in order; ``ended`` is set
    once the answers are known (every outcome, or up to the first that is not an account)
    or no more will be waited for."""

    __slots__ = ("ended", "ids", "outcomes", "why")

    def __init__(self, ended: asyncio.Future[None], size: int) -> None:
        self.ended = ended
        self.ids: list[int] = []
        self.outcomes: list[pb.Account | pb.StepError | None] = [None] * size
        self.why = ""

    def answered(self, step_id: int, outcome: pb.Account | pb.StepError) -> None:
        self.outcomes[self.ids.index(step_id)] = outcome
        for known in self.outcomes:
            if known is None:
                return  # an earlier step's outcome is still on its way
            if not isinstance(known, pb.Account):
                break
        self.ended.set_result(None)


def _fill_currency(steps: Sequence[pb.Step], index: int, currency: str) -> None:
    if index < len(steps):
        step = steps[index]
        field = step.WhichOneof("action")
        request = getattr(step, field)
        if field in ("reserve", "credit", "hold_credit") and not request.currency:
            request.currency = currency


# --- every replica --------------------------------------------------------------------------


def parse_targets(target: str) -> list[str]:
    """``HOST:PORT[,HOST:PORT...]`` (optionally prefixed ``ipv4:``/``ipv6:``) as addresses."""
    for prefix in ("ipv4:", "ipv6:"):
        target = target.removeprefix(prefix)
    return [address.strip() for address in target.split(",") if address.strip()]


def _rank(account_id: str, address: str) -> bytes:
    return hashlib.blake2b(f"{address}|{account_id}".encode(), digest_size=8).digest()


class StreamingAccounts:
    """AccountsPort over every account-service replica, each account's steps to one."""

    def __init__(self, streams: dict[str, StepStream]) -> None:
        if not streams:
            raise ValueError("no account service to call")
        self._streams = streams
        self._addresses = sorted(streams)

    def address(self, account_id: str) -> str:
        """The replica that decides ``account_id``: the first by rendezvous rank that
        answers (the first of all when none seems to)."""
        if len(self._addresses) == 1:
            return self._addresses[0]
        ranked = sorted(self._addresses, key=lambda a: _rank(account_id, a), reverse=True)
        for address in ranked:
            if self._streams[address].healthy:
                return address
        return ranked[0]

    def replica(self, account_id: str) -> StepStream:
        return self._streams[self.address(account_id)]

    async def run(
        self, steps: Sequence[AccountStep], reference: str, epoch: int, currency: str = ""
    ) -> list[Answer]:
        answers: list[Answer] = []
        for piece in _pieces(steps, self.replica):
            messages = [step_message(piece[0], reference, epoch, currency)]
            # The rest take their currency from the step before them, on the server.
            messages += [step_message(step, reference, epoch, "") for step in piece[1:]]
            got = await self.replica(piece[0].account_id).run(messages)
            answers += got
            if len(got) < len(piece) or not isinstance(got[-1], Applied):
                break
            currency = got[-1].currency
        return answers

    async def run_many(self, chains: Sequence[Chain]) -> AsyncIterator[Wave]:
        """``run`` for many chains at once; yields their answers as they come, those that
        came together in one wave. The chains one replica decides whole go together (one
        message, one deadline, no task per chain); the others one by one."""
        loop = asyncio.get_running_loop()
        # Per chain: its task (run on its own), or its wait and its chain (run together).
        ends: list[asyncio.Future[Any]] = []
        sent: list[_Chain | None] = []
        timers: list[asyncio.TimerHandle] = []
        together: dict[StepStream, list[_Chain]] = {}
        for steps, reference, epoch, currency in chains:
            replicas = {self.address(step.account_id) for step in steps}
            stream = self._streams[replicas.pop()] if len(replicas) == 1 else None
            if stream is None or not stream.ordered:
                ends.append(asyncio.ensure_future(self.run(steps, reference, epoch, currency)))
                sent.append(None)
                continue
            messages = [step_message(steps[0], reference, epoch, currency)]
            messages += [step_message(step, reference, epoch, "") for step in steps[1:]]
            chain = stream._send(messages)
            together.setdefault(stream, []).append(chain)
            sent.append(chain)
            ends.append(chain.ended)
        for stream, group in together.items():
            why = f"no outcome within {stream.deadline:g}s"
            timers.append(loop.call_later(stream.deadline, stream._end_all, group, why))
        ready: list[int] = []
        wake = asyncio.Event()
        for n, end in enumerate(ends):
            end.add_done_callback(functools.partial(_ready, ready, wake, n))
        left = len(ends)
        try:
            while left:
                await wake.wait()
                wake.clear()
                wave, ready[:] = ready[:], []
                left -= len(wave)
                yield [
                    (n, ends[n].result() if (c := sent[n]) is None else _answers(c)) for n in wave
                ]
        finally:
            for timer in timers:
                timer.cancel()
            for end in ends:
                end.cancel()  # a chain run on its own, if this was given up
            for stream, group in together.items():
                for chain in group:
                    stream._forget(chain)

    async def close(self) -> None:
        for stream in self._streams.values():
            await stream.close()


class UnaryAccounts:
    """AccountsPort as one unary call per step: what a traced transfer uses, since a
    stream's metadata (the trace context) is sent once, not per step."""

    def __init__(self, channels: dict[str, grpc.aio.Channel], route, deadline: float = 5.0):
        self._stubs = {a: account_pb2_grpc.ReservationServiceStub(c) for a, c in channels.items()}
        self._route = route
        self._deadline = deadline

    async def run(
        self, steps: Sequence[AccountStep], reference: str, epoch: int, currency: str = ""
    ) -> list[Answer]:
        answers: list[Answer] = []
        for step in steps:
            message = step_message(step, reference, epoch, currency)
            field = message.WhichOneof("action")
            stub = self._stubs[self._route(step.account_id)]
            method = getattr(stub, "".join(part.title() for part in field.split("_")))
            result = await self._call(method, getattr(message, field))
            answers.append(result)
            if not isinstance(result, Applied):
                break
            currency = result.currency
        return answers

    async def run_many(self, chains: Sequence[Chain]) -> AsyncIterator[Wave]:
        yield list(enumerate(await asyncio.gather(*(self.run(*chain) for chain in chains))))

    async def _call(self, method, request) -> Answer:
        try:
            account = await method(request, timeout=self._deadline)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _REFUSED_CREDENTIALS:
                _warn_credentials(code, error.details())
            info = error_info(error)
            reason = info.reason if info is not None else code.name
            if reason == "EPOCH_FENCED":
                return Fenced(error.details() or reason)
            if info is not None and _owner_refused(reason, info.metadata):
                return Refused(reason, error.details() or reason, dict(info.metadata))
            if code in _UNDECIDED:
                return Undecided(f"{code.name}: {error.details()}")
            metadata = dict(info.metadata) if info is not None else {}
            return Refused(reason, error.details() or reason, metadata)
        return Applied(account.currency)


_CODES = {code.value[0]: code for code in grpc.StatusCode}
