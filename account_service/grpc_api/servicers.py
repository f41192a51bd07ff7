"""AccountService and ReservationService: parse the request, call the application, answer.

Refusals are raised as domain errors and answered through the one error table.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import AsyncIterator
from operator import methodcaller

import grpc
from grpc import StatusCode

from account_service.application import Accounts
from account_service.grpc_api import messages
from account_service.grpc_api.errors import ERRORS, StepNotRun
from account_service.mailboxes import Decision
from account_service.sequences import SequenceStep
from account_service.views import AccountView
from bank.v1 import account_pb2 as pb
from bank.v1 import account_pb2_grpc
from grpc_common.step_order import STEP_ORDER_METADATA
from shared_kernel import page_tokens
from shared_kernel.errors import InvalidArgument
from shared_kernel.values import (
    parse_amount,
    parse_currency,
    parse_id,
    parse_key,
    parse_optional_id,
    parse_owner,
    parse_page_size,
    parse_version,
)

Context = grpc.aio.ServicerContext
log = logging.getLogger(__name__)


@ERRORS.guard
class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def OpenAccount(self, request: pb.OpenAccountRequest, context: Context) -> pb.Account:
        account_id = parse_optional_id(request.account_id, "account_id")
        owner = parse_owner(request.owner)
        currency = parse_currency(request.currency)
        view = await self._accounts.execute(account_id, methodcaller("open", owner, currency))
        return messages.account(view)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.Account:
        view = await self._accounts.get(parse_id(request.account_id, "account_id"))
        return messages.account(view)

    async def Deposit(self, request: pb.DepositRequest, context: Context) -> pb.Account:
        account_id = parse_id(request.account_id, "account_id")
        amount = parse_amount(request.amount)
        request_id = parse_key(request.request_id, "request_id")
        view = await self._accounts.execute(account_id, methodcaller("deposit", amount, request_id))
        return messages.account(view)

    async def Withdraw(self, request: pb.WithdrawRequest, context: Context) -> pb.Account:
        account_id = parse_id(request.account_id, "account_id")
        amount = parse_amount(request.amount)
        request_id = parse_key(request.request_id, "request_id")
        decision = methodcaller("withdraw", amount, request_id)
        return messages.account(await self._accounts.execute(account_id, decision))

    async def CloseAccount(self, request: pb.CloseAccountRequest, context: Context) -> pb.Account:
        account_id = parse_id(request.account_id, "account_id")
        return messages.account(await self._accounts.execute(account_id, methodcaller("close")))

    async def ListAccountEvents(
        self, request: pb.ListAccountEventsRequest, context: Context
    ) -> pb.ListAccountEventsResponse:
        account_id = parse_id(request.account_id, "account_id")
        page_size = parse_page_size(request.page_size)
        listing = f"account-events:{account_id}"
        after = page_tokens.decode(request.page_token, listing) if request.page_token else 0
        # One more than asked tells whether another page exists.
        entries = await self._accounts.history(account_id, after, page_size + 1)
        page = entries[:page_size]
        more = len(entries) > page_size
        return pb.ListAccountEventsResponse(
            events=[messages.account_event(entry) for entry in page],
            next_page_token=page_tokens.encode(listing, page[-1].version) if more else "",
        )

    async def WatchAccount(
        self, request: pb.WatchAccountRequest, context: Context
    ) -> AsyncIterator[pb.AccountEvent]:
        account_id = parse_id(request.account_id, "account_id")
        from_version = parse_version(request.from_version, "from_version")
        async for entry in self._accounts.watch(account_id, from_version):
            yield messages.account_event(entry)


def _reserve(request: pb.ReserveRequest) -> tuple[str, Decision]:
    account_id = parse_id(request.account_id, "account_id")
    reference = parse_key(request.reference, "reference")
    amount = parse_amount(request.amount)
    return account_id, methodcaller("reserve", amount, reference)


def _credit(request: pb.CreditRequest) -> tuple[str, Decision]:
    account_id = parse_id(request.account_id, "account_id")
    reference = parse_key(request.reference, "reference")
    amount = parse_amount(request.amount)
    currency = parse_currency(request.currency)
    return account_id, methodcaller("credit", amount, reference, currency)


def _capture(request: pb.CaptureRequest) -> tuple[str, Decision]:
    account_id = parse_id(request.account_id, "account_id")
    return account_id, methodcaller("capture", parse_key(request.reference, "reference"))


def _release(request: pb.ReleaseRequest) -> tuple[str, Decision]:
    account_id = parse_id(request.account_id, "account_id")
    return account_id, methodcaller("release", parse_key(request.reference, "reference"))


_STEPS = {"reserve": _reserve, "credit": _credit, "capture": _capture, "release": _release}


def _decision(step: pb.Step, kind: str, before: AccountView | None) -> Decision:
    """A step's decision in a sequence; a credit without a currency takes the one of the
    account the step before it left (as a follower started step by step does)."""
    if kind == "credit" and before is not None and not step.credit.currency:
        step.credit.currency = before.currency
    return _STEPS[kind](getattr(step, kind))[1]


def _step_error(exc: BaseException) -> pb.StepError:
    described = ERRORS.describe(exc)
    if described is None:
        log.error("step failed unexpectedly", exc_info=exc)
        return pb.StepError(code=StatusCode.INTERNAL.value[0], message="internal error")
    code, reason, message, metadata = described
    return pb.StepError(code=code.value[0], message=message, reason=reason, metadata=metadata)


@ERRORS.guard
class ReservationServicer(account_pb2_grpc.ReservationServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts
        self._readers: set[asyncio.Task[None]] = set()

    async def drain(self) -> None:
        """Stops taking steps on open streams; they end once their steps are answered."""
        for reader in list(self._readers):
            reader.cancel()

    async def Reserve(self, request: pb.ReserveRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*_reserve(request)))

    async def Credit(self, request: pb.CreditRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*_credit(request)))

    async def Capture(self, request: pb.CaptureRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*_capture(request)))

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*_release(request)))

    async def ExecuteSteps(
        self, requests: AsyncIterator[pb.ExecuteStepsRequest], context: Context
    ) -> AsyncIterator[pb.ExecuteStepsResponse]:
        """Steps go to their accounts' mailboxes as they arrive; outcomes go back as they
        finish, batched into as few messages as the pace allows."""
        await context.send_initial_metadata((STEP_ORDER_METADATA,))
        stream = _StepStream(self._accounts)
        reader = asyncio.create_task(stream.read(requests))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            async for response in stream.responses(reader):
                yield response
        finally:
            reader.cancel()


class _StepStream:
    """The state of one ExecuteSteps call: steps in flight and outcomes not yet sent.

    A step with ``after_step_id`` waits, unparsed, until the step it follows has an
    outcome: then it starts (credit taking that step's currency if it has none of its
    own), or, if that step did not succeed, is answered STEP_NOT_RUN with its own
    followers. The outcomes of a chain of steps (each followed by one other) are sent
    together when it ends: its caller waits for the whole of it anyway. A chain whose
    accounts are idle is first offered to ``Accounts.submit_sequence``, which decides it
    whole and stores it in one append; where it declines, or its append fails, the chain
    runs step by step.
    """

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts
        self._outcomes: list[pb.StepOutcome] = []
        self._ready = asyncio.Event()
        self._in_flight = 0  # started or waiting for the step they follow
        self._followers: dict[int, list[pb.Step]] = {}
        self._held: dict[int, list[pb.StepOutcome]] = {}

    async def read(self, requests: AsyncIterator[pb.ExecuteStepsRequest]) -> None:
        try:
            async for request in requests:
                # Followers are placed before any step starts, so that a step refused at
                # once still finds (and answers) the steps that follow it.
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
                        self._send(pb.StepOutcome(step_id=step.step_id, error=_step_error(error)))
                        continue
                    earlier.add(step.step_id)
                for step in first:
                    self._start_first(step)
        finally:
            self._ready.set()

    def _start_first(self, step: pb.Step) -> None:
        chain = self._chain(step)
        if chain is None or not self._submit_sequence(chain):
            self._start(step)

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

    def _submit_sequence(self, chain: list[pb.Step]) -> bool:
        """Offers the chain to Accounts.submit_sequence; False if it declines."""
        steps: list[SequenceStep] = []
        for step in chain:
            kind = step.WhichOneof("action")
            if kind is None:
                return False
            try:
                account_id = parse_id(getattr(step, kind).account_id, "account_id")
            except InvalidArgument:
                return False
            steps.append((account_id, functools.partial(_decision, step, kind)))
        future = self._accounts.submit_sequence(steps)
        if future is None:
            return False
        # The chain's followers, counted in flight when read, are now part of it.
        for step in chain[:-1]:
            del self._followers[step.step_id]
        self._in_flight -= len(chain) - 2
        future.add_done_callback(functools.partial(self._sequence_done, chain))
        return True

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
                pb.StepOutcome(step_id=step.step_id, account=messages.account(view))
                for step, view in zip(chain, future.result(), strict=True)
            )
        )

    def _start(self, step: pb.Step, currency: str = "") -> None:
        kind = step.WhichOneof("action")
        try:
            if kind is None:
                raise InvalidArgument("action", "a step needs reserve, credit, capture or release")
            if kind == "credit" and currency and not step.credit.currency:
                step.credit.currency = currency
            account_id, decision = _STEPS[kind](getattr(step, kind))
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
            outcome = pb.StepOutcome(step_id=step_id, account=messages.account(view))
        else:
            view = None
            outcome = pb.StepOutcome(step_id=step_id, error=_step_error(exc))
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

    async def responses(self, reader: asyncio.Task[None]) -> AsyncIterator[pb.ExecuteStepsResponse]:
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self._outcomes:
                outcomes, self._outcomes = self._outcomes, []
                yield pb.ExecuteStepsResponse(outcomes=outcomes)
            if reader.done() and not self._in_flight and not self._outcomes:
                return
