"""AccountService and ReservationService: parse the request, call the application, answer.

Refusals are raised as domain errors and answered through the one error table. An
ExecuteSteps call is a ``StepStream`` (``account_service.grpc_api.step_stream``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from operator import methodcaller

import grpc

from account_service.application import Accounts
from account_service.domain import Account
from account_service.grpc_api import messages, steps
from account_service.grpc_api.errors import ERRORS
from account_service.grpc_api.step_stream import StepStream
from account_service.mailboxes import Decision
from account_service.views import AccountView
from bank.v1 import account_pb2 as pb
from bank.v1 import account_pb2_grpc
from grpc_common import caller
from grpc_common.caller import owned_by
from grpc_common.step_order import STEP_ORDER_METADATA
from shared_kernel import page_tokens
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


def _owner(account: Account) -> str:
    return account.owner


def _as_caller(decision: Decision) -> Decision:
    """``decision``, refused first if the caller's token is bound to another owner."""
    return owned_by(caller.bound_owner(), decision, _owner)


@ERRORS.guard
class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def _readable(self, account_id: str) -> AccountView | None:
        """Refuses an owner-bound caller reading someone else's account; the account as it
        is now when it had to be read for that (None when the caller may read anything)."""
        if not caller.bound_owner():
            return None
        view = await self._accounts.get(account_id)
        caller.check_owner(view.owner)
        return view

    async def OpenAccount(self, request: pb.OpenAccountRequest, context: Context) -> pb.Account:
        account_id = parse_optional_id(request.account_id, "account_id")
        owner = parse_owner(request.owner)
        currency = parse_currency(request.currency)
        caller.check_owner(owner)
        view = await self._accounts.execute(account_id, methodcaller("open", owner, currency))
        return messages.account(view)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.Account:
        account_id = parse_id(request.account_id, "account_id")
        as_of = messages.as_of(request)
        now = await self._readable(account_id)
        if as_of is None:
            return messages.account(now or await self._accounts.get(account_id))
        return messages.account(await self._accounts.as_of(account_id, **as_of))

    async def Deposit(self, request: pb.DepositRequest, context: Context) -> pb.Account:
        account_id = parse_id(request.account_id, "account_id")
        amount = parse_amount(request.amount)
        request_id = parse_key(request.request_id, "request_id")
        view = await self._accounts.execute(
            account_id, _as_caller(methodcaller("deposit", amount, request_id))
        )
        return messages.account(view)

    async def Withdraw(self, request: pb.WithdrawRequest, context: Context) -> pb.Account:
        account_id = parse_id(request.account_id, "account_id")
        amount = parse_amount(request.amount)
        request_id = parse_key(request.request_id, "request_id")
        decision = _as_caller(methodcaller("withdraw", amount, request_id))
        return messages.account(await self._accounts.execute(account_id, decision))

    async def CloseAccount(self, request: pb.CloseAccountRequest, context: Context) -> pb.Account:
        account_id = parse_id(request.account_id, "account_id")
        return messages.account(
            await self._accounts.execute(account_id, _as_caller(methodcaller("close")))
        )

    async def SetOverdraftLimit(
        self, request: pb.SetOverdraftLimitRequest, context: Context
    ) -> pb.Account:
        account_id = parse_id(request.account_id, "account_id")
        request_id = parse_key(request.request_id, "request_id")
        decision = _as_caller(
            methodcaller("set_overdraft_limit", request.overdraft_limit, request_id)
        )
        return messages.account(await self._accounts.execute(account_id, decision))

    async def ListAccountEvents(
        self, request: pb.ListAccountEventsRequest, context: Context
    ) -> pb.ListAccountEventsResponse:
        account_id = parse_id(request.account_id, "account_id")
        page_size = parse_page_size(request.page_size)
        listing = f"account-events:{account_id}"
        after = parse_version(request.from_version, "from_version")
        if request.page_token:
            after = page_tokens.decode(request.page_token, listing)
        await self._readable(account_id)
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
        await self._readable(account_id)
        who = caller.current()
        # Counted per token, or per connection without one.
        key = f"token:{who.name}" if who is not None else f"peer:{context.peer()}"
        async for entry in self._accounts.watch(account_id, from_version, key):
            yield messages.account_event(entry)


@ERRORS.guard
class ReservationServicer(account_pb2_grpc.ReservationServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts
        self._streams: set[StepStream] = set()

    async def drain(self) -> None:
        """Stops taking steps on open streams; they end once their steps are answered."""
        for stream in list(self._streams):
            stream.stop_reading()

    async def Reserve(self, request: pb.ReserveRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*steps.reserve(request)))

    async def Credit(self, request: pb.CreditRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*steps.credit(request)))

    async def Capture(self, request: pb.CaptureRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*steps.capture(request)))

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*steps.release(request)))

    async def HoldCredit(self, request: pb.HoldCreditRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*steps.hold_credit(request)))

    async def ConfirmCredit(self, request: pb.ConfirmCreditRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*steps.confirm_credit(request)))

    async def CancelCredit(self, request: pb.CancelCreditRequest, context: Context) -> pb.Account:
        return messages.account(await self._accounts.execute(*steps.cancel_credit(request)))

    async def ExecuteSteps(
        self, requests: AsyncIterator[pb.ExecuteStepsRequest], context: Context
    ) -> AsyncIterator[pb.ExecuteStepsResponse]:
        await context.send_initial_metadata((STEP_ORDER_METADATA,))
        stream = StepStream(self._accounts)
        self._streams.add(stream)
        try:
            async for response in stream.answer(requests):
                yield response
        finally:
            self._streams.discard(stream)
