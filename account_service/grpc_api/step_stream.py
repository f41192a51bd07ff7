"""One ExecuteSteps call: the steps in flight and the outcomes not yet sent.

Steps go to their accounts' mailboxes as they arrive; outcomes go back as they finish,
batched into as few messages as the pace allows. A step with ``after_step_id`` waits,
unparsed, until the step it follows has an outcome: then it starts (a reserve, credit or
credit hold taking that step's currency if it has none of its own), or, if that step did
not succeed, is answered STEP_NOT_RUN with its own followers. An ``after_step_id`` that
names no earlier step of the same request is answered INVALID_ARGUMENT. The outcomes of a
chain of steps (each followed by one other) are sent together when it ends: its caller
waits for the whole of it anyway.
The chains of a message are first offered, together, to ``submit_sequences``, which decides
each whole, on the state the ones before it left, if its accounts are idle, and stores those
it takes in one append; where it declines a chain, or the append fails, the chain runs step
by step. The call ends once the caller is done sending (or reading is stopped) and every
step read has its outcome sent.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from grpc import StatusCode

from account_service.grpc_api import messages
from account_service.grpc_api.errors import ERRORS, StepNotRun
from account_service.grpc_api.steps import STEPS, decision_after, fill_currency
from account_service.mailboxes import Decision
from account_service.sequences import SequenceStep
from account_service.views import AccountView
from bank.v1 import account_pb2 as pb
from shared_kernel.errors import InvalidArgument
from shared_kernel.values import parse_id

log = logging.getLogger(__name__)


class StepTaker(Protocol):
    """What a stream asks of the accounts (``account_service.application.Accounts``)."""

    def submit(self, account_id: str, decision: Decision) -> asyncio.Future[AccountView]: ...

    def submit_sequences(
        self, sequences: Sequence[Sequence[SequenceStep]]
    ) -> list[asyncio.Future[list[AccountView]] | None]: ...


def step_error(exc: BaseException) -> pb.StepError:
    """A step's refusal as its outcome says it, through the service's error table."""
    described = ERRORS.describe(exc)
    if described is None:
        log.error("step failed unexpectedly", exc_info=exc)
        return pb.StepError(code=StatusCode.INTERNAL.value[0], message="internal error")
    code, reason, message, metadata = described
    return pb.StepError(code=code.value[0], message=message, reason=reason, metadata=metadata)


def _sequence_steps(chain: list[pb.Step]) -> list[SequenceStep] | None:
    """The chain as a sequence's steps; None if a step has no action or no valid
    account (step by step answers those)."""
    steps: list[SequenceStep] = []
    for step in chain:
        kind = step.WhichOneof("action")
        if kind is None:
            return None
        try:
            account_id = parse_id(getattr(step, kind).account_id, "account_id")
        except InvalidArgument:
            return None
        steps.append((account_id, functools.partial(decision_after, step, kind)))
    return steps


def _applied(step_id: int, view: AccountView) -> pb.StepOutcome:
    outcome = pb.StepOutcome(step_id=step_id)
    messages.fill_account(outcome.account, view)
    return outcome


class StepStream:
    """The state of one ExecuteSteps call (see the module)."""

    def __init__(self, accounts: StepTaker) -> None:
        self._accounts = accounts
        self._outcomes: list[pb.StepOutcome] = []
        self._ready = asyncio.Event()
        self._in_flight = 0  # started or waiting for the step they follow
        self._followers: dict[int, list[pb.Step]] = {}
        self._held: dict[int, list[pb.StepOutcome]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stopped = False

    async def answer(
        self, requests: AsyncIterator[pb.ExecuteStepsRequest]
    ) -> AsyncIterator[pb.ExecuteStepsResponse]:
        """Reads ``requests`` in a task of its own and yields the outcomes of their steps,
        until reading is over and every step read has been answered."""
        reader = self._reader = asyncio.create_task(self._read(requests))
        # Wakes the loop below however reading ends, even cancelled before it began.
        reader.add_done_callback(lambda _: self._ready.set())
        if self._stopped:
            reader.cancel()
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                if self._outcomes:
                    outcomes, self._outcomes = self._outcomes, []
                    yield pb.ExecuteStepsResponse(outcomes=outcomes)
                if reader.done() and not self._in_flight and not self._outcomes:
                    return
        finally:
            reader.cancel()

    def stop_reading(self) -> None:
        """Takes no more steps; the call ends once the steps read are answered."""
        self._stopped = True
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self, requests: AsyncIterator[pb.ExecuteStepsRequest]) -> None:
        async for request in requests:
            # Followers are placed before any step starts, so that a step refused at once
            # still finds (and answers) the steps that follow it.
            earlier: set[int] = set()
            first: list[pb.Step] = []
            for step in request.steps:
                after = step.after_step_id
                if not after:
                    first.append(step)
                elif after in earlier:
                    self._in_flight += 1
                    self._followers.setdefault(after, []).append(step)
                else:
                    error = InvalidArgument(
                        "after_step_id", "must name an earlier step of the same request"
                    )
                    self._send(pb.StepOutcome(step_id=step.step_id, error=step_error(error)))
                    continue
                earlier.add(step.step_id)
            offered: list[tuple[pb.Step, list[pb.Step], list[SequenceStep]]] = []
            for step in first:
                chain = self._chain(step)
                steps = None if chain is None else _sequence_steps(chain)
                if chain is None or steps is None:
                    self._start(step)
                else:
                    offered.append((step, chain, steps))
            if offered:
                self._offer(offered)

    def _chain(self, step: pb.Step) -> list[pb.Step] | None:
        """``step`` and the steps after it, if each is followed by exactly one other.

        None also where a step id comes back (ids are the client's to choose, and a step
        may name an earlier one with its own id): step by step copes with that."""
        chain = [step]
        seen = {step.step_id}
        while followers := self._followers.get(chain[-1].step_id):
            if len(followers) != 1 or followers[0].step_id in seen:
                return None
            chain.append(followers[0])
            seen.add(followers[0].step_id)
        return chain if len(chain) > 1 else None

    def _offer(self, offered: list[tuple[pb.Step, list[pb.Step], list[SequenceStep]]]) -> None:
        """Offers the chains to ``submit_sequences`` together; those it declines run step
        by step."""
        futures = self._accounts.submit_sequences([steps for _, _, steps in offered])
        for (step, chain, _), future in zip(offered, futures, strict=True):
            if future is None:
                self._start(step)
                continue
            # The chain's followers, counted in flight when read, are now part of it.
            for earlier in chain[:-1]:
                del self._followers[earlier.step_id]
            self._in_flight -= len(chain) - 2
            future.add_done_callback(functools.partial(self._sequence_done, chain))

    def _sequence_done(
        self, chain: list[pb.Step], future: asyncio.Future[list[AccountView]]
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            # Nothing of it is stored: step by step, as if it had never been offered.
            for step, follower in itertools.pairwise(chain):
                self._followers[step.step_id] = [follower]
            self._in_flight += len(chain) - 2
            self._start(chain[0])
            return
        self._in_flight -= 1
        self._send(
            *(
                _applied(step.step_id, view)
                for step, view in zip(chain, future.result(), strict=True)
            )
        )

    def _start(self, step: pb.Step, currency: str = "") -> None:
        kind = step.WhichOneof("action")
        try:
            if kind is None:
                raise InvalidArgument("action", "a step needs one of the protocol's actions")
            fill_currency(step, kind, currency)
            account_id, decision = STEPS[kind](getattr(step, kind))
            future = self._accounts.submit(account_id, decision)
        except Exception as exc:
            self._finish(step.step_id, None, exc)
            return
        self._in_flight += 1
        future.add_done_callback(functools.partial(self._finished, step.step_id))

    def _finished(self, step_id: int, future: asyncio.Future[AccountView]) -> None:
        self._in_flight -= 1
        exc = future.exception()
        self._finish(step_id, None if exc is not None else future.result(), exc)

    def _finish(self, step_id: int, view: AccountView | None, exc: BaseException | None) -> None:
        if exc is None and view is not None:
            outcome = _applied(step_id, view)
        else:
            view = None
            outcome = pb.StepOutcome(step_id=step_id, error=step_error(exc))
        # Outcomes of the steps before this one in its sequence, not sent yet.
        outcomes = [*self._held.pop(step_id, ()), outcome]
        followers = self._followers.pop(step_id, ())
        if view is not None and len(followers) == 1:
            # The sequence goes on: its outcomes travel together once it ends.
            (follower,) = followers
            self._held[follower.step_id] = outcomes
            self._in_flight -= 1
            self._start(follower, view.currency)
            return
        self._send(*outcomes)
        for follower in followers:
            self._in_flight -= 1
            if view is not None:
                self._start(follower, view.currency)
            else:
                self._finish(follower.step_id, None, StepNotRun(step_id))

    def _send(self, *outcomes: pb.StepOutcome) -> None:
        self._outcomes.extend(outcomes)
        self._ready.set()
