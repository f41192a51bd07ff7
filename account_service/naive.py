"""The naive transfer strategy, kept only to measure the reservation protocol against.

It is the first design of the experiment this project reproduces: inside the account
service, take the **target** account's lock, then the **source**'s, each waiting at most
5 seconds, withdraw from the source and deposit to the target while holding both. Like
the per-account process of that design, an account whose lock is held serves nothing
else, including the other transfers waiting for it. Two transfers in opposite directions
(A→B holds B and waits for A; B→A holds A and waits for B) therefore deadlock until a lock
wait times out, and the transfer is refused with ``ABORTED``/``LOCK_TIMEOUT``.

Served only when the account service is started with ``--experimental-naive-transfers``.
The withdrawal and the deposit carry the transfer id as their reference, so a repeated
transfer moves nothing twice. Before anything is withdrawn, the deposit is checked against
the locked target, so a refused deposit never leaves the money withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from operator import methodcaller

import grpc
from grpc import StatusCode

from account_service import domain
from account_service.application import Accounts
from account_service.grpc_api import messages
from account_service.mailboxes import ContentionTooHigh, Decision
from account_service.views import AccountView
from bank.experimental.v1 import naive_pb2 as pb
from bank.experimental.v1 import naive_pb2_grpc
from event_store import StoreUnavailable
from grpc_common.errors import ErrorTable, Refusal
from grpc_common.server import Service
from shared_kernel.errors import DomainError, InvalidArgument
from shared_kernel.values import parse_amount, parse_id, parse_optional_id

# The lock wait of the original design.
LOCK_TIMEOUT = 5.0


class LockTimeout(DomainError):
    """An account stayed locked by another caller for longer than the caller would wait."""

    def __init__(self, account_id: str, timeout: float) -> None:
        super().__init__(
            f"account {account_id} stayed locked for {timeout:g}s", account_id=account_id
        )


@contextlib.asynccontextmanager
async def exclusive(
    accounts: Accounts,
    account_id: str,
    timeout: float,  # noqa: ASYNC109 - a lock wait, not a deadline
) -> AsyncIterator[Callable[[Decision], Awaitable[AccountView]]]:
    """Holds the account's lock (waiting at most ``timeout``) for several commands.

    Yields a function that decides and stores one command while the lock is held.
    Commands of other callers queue meanwhile. Holding two of these at once is how
    the naive transfer strategy works, and why it deadlocks.
    """
    try:
        held = await asyncio.wait_for(accounts.hold(account_id), timeout)
    except TimeoutError:
        raise LockTimeout(account_id, timeout) from None
    try:
        yield held.execute
    finally:
        held.release()


NAIVE_ERRORS = ErrorTable(
    {
        LockTimeout: Refusal(StatusCode.ABORTED, "LOCK_TIMEOUT"),
        InvalidArgument: Refusal(StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        domain.AccountNotFound: Refusal(StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
        domain.ReferenceReused: Refusal(StatusCode.ALREADY_EXISTS, "REFERENCE_REUSED"),
        domain.InsufficientFunds: Refusal(StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"),
        domain.AccountIsClosed: Refusal(StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSED"),
        domain.CurrencyMismatch: Refusal(StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH"),
        domain.BalanceOutOfRange: Refusal(StatusCode.OUT_OF_RANGE, "BALANCE_OUT_OF_RANGE"),
        StoreUnavailable: Refusal(StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"),
        ContentionTooHigh: Refusal(StatusCode.UNAVAILABLE, "CONTENTION"),
    }
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NaiveTransferService"].full_name


def _deposit_would_succeed(
    amount: int, reference: str
) -> Callable[[domain.Account], list[domain.AccountEvent]]:
    """A decision that stores nothing: it refuses now if the deposit would be refused."""

    def check(account: domain.Account) -> list[domain.AccountEvent]:
        account.deposit(amount, reference)
        return []

    return check


def _same_currency(
    currency: str, withdraw: Callable[[domain.Account], list[domain.AccountEvent]]
) -> Callable[[domain.Account], list[domain.AccountEvent]]:
    def decide(account: domain.Account) -> list[domain.AccountEvent]:
        if account.exists and account.currency != currency:
            raise domain.CurrencyMismatch(account.account_id, account.currency, currency)
        return withdraw(account)

    return decide


@NAIVE_ERRORS.guard
class NaiveTransferServicer(naive_pb2_grpc.NaiveTransferServiceServicer):
    def __init__(self, accounts: Accounts, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self._accounts = accounts
        self._lock_timeout = lock_timeout

    async def Transfer(
        self, request: pb.NaiveTransferRequest, context: grpc.aio.ServicerContext
    ) -> pb.NaiveTransferResponse:
        transfer_id = parse_optional_id(request.transfer_id, "transfer_id")
        source = parse_id(request.from_account_id, "from_account_id")
        target = parse_id(request.to_account_id, "to_account_id")
        if source == target:
            raise InvalidArgument("to_account_id", "must differ from from_account_id")
        amount = parse_amount(request.amount)
        accounts, timeout = self._accounts, self._lock_timeout
        async with exclusive(accounts, target, timeout) as on_target:
            checked = await on_target(_deposit_would_succeed(amount, transfer_id))
            async with exclusive(accounts, source, timeout) as on_source:
                withdraw = methodcaller("withdraw", amount, transfer_id)
                after_source = await on_source(_same_currency(checked.currency, withdraw))
            after_target = await on_target(methodcaller("deposit", amount, transfer_id))
        return pb.NaiveTransferResponse(
            transfer_id=transfer_id,
            from_account=messages.account(after_source),
            to_account=messages.account(after_target),
        )


def naive_service(accounts: Accounts, lock_timeout: float = LOCK_TIMEOUT) -> Service:
    """The experimental service, for the account service's composition root."""
    return Service(
        SERVICE_NAME,
        NaiveTransferServicer(accounts, lock_timeout),
        naive_pb2_grpc.add_NaiveTransferServiceServicer_to_server,
    )
