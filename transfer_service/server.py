"""The transfer service's composition root: repository, process, account client, server."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Sequence
from typing import Any

from bank.v1 import transfer_pb2, transfer_pb2_grpc
from event_store import AsyncEventStore, OwnedByAnother, open_async_store
from grpc_common import metrics, tracing
from grpc_common.server import Assembly, Service, run_service
from shared_kernel.crash import crash_point_from_env
from transfer_service.accounts_client import GrpcAccounts, StreamingAccounts, open_channel
from transfer_service.application import Transfers
from transfer_service.domain import (
    Transfer,
    TransferCompleted,
    TransferEvent,
    TransferFailed,
    TransferRequested,
)
from transfer_service.grpc_api.servicers import TransferServicer
from transfer_service.process import (
    POINTS,
    Decided,
    RetryHook,
    TransferProcess,
    TransferRepository,
    one_by_one,
)
from transfer_service.repository import StoredTransfers

# How the service names itself: in its log lines, its traces, and its claim on its database.
SERVICE_NAME = "transfer-service"
DEFAULT_LISTEN = "127.0.0.1:50052"
DEFAULT_DB = "sqlite:///transfers.db"
DEFAULT_ACCOUNTS = "127.0.0.1:50051"
_SERVICE = transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name
log = logging.getLogger(__name__)


class _CountedTransfers:
    """The repository as the process sees it, counting transfers as their ends are recorded."""

    def __init__(self, repository: TransferRepository, counts: metrics.TransferMetrics) -> None:
        self._repository = repository
        self._counts = counts

    async def load(self, transfer_id: str) -> Transfer | None:
        return await self._repository.load(transfer_id)

    async def record(self, transfer: Transfer, events: Sequence[TransferEvent]) -> Transfer:
        recorded = await self._repository.record(transfer, events)
        for event in events:
            if isinstance(event, TransferRequested):
                self._counts.requested()
            elif isinstance(event, TransferCompleted | TransferFailed):
                state = "COMPLETED" if isinstance(event, TransferCompleted) else "FAILED"
                reason = event.reason if isinstance(event, TransferFailed) else ""
                started, ended = recorded.created_at, recorded.updated_at
                seconds = (ended - started).total_seconds() if started and ended else None
                self._counts.ended(state, reason, seconds)
        return recorded


class _TracedProcess:
    """The process as the application sees it, driving each transfer inside a span."""

    def __init__(self, process: TransferProcess) -> None:
        self._process = process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._process, name)

    async def drive(self, transfer: Transfer) -> Transfer:
        with tracing.span("transfer", {tracing.TRANSFER_ID: transfer.transfer_id}) as span:
            driven = await self._process.drive(transfer)
            if span is not None:
                span.set_attribute("bank.transfer_state", driven.state.name if driven.state else "")
            return driven


class _SampledSteps:
    """AccountsPort for tracing over the ExecuteSteps stream.

    The stream's metadata is sent once, so it cannot carry each step's trace context. The
    steps of a transfer whose trace is sampled go as unary calls, which carry it (and
    give the account side's spans); every other step keeps to the stream. With every
    trace sampled, every step is a unary call.
    """

    def __init__(self, traced: GrpcAccounts, stream: StreamingAccounts) -> None:
        self._traced = traced
        self._stream = stream

    def _port(self) -> GrpcAccounts | StreamingAccounts:
        return self._traced if tracing.sampled() else self._stream

    # Each returns the chosen port's coroutine: no extra frame per step.
    def reserve(self, account_id: str, reference: str, amount: int) -> Awaitable[str]:
        return self._port().reserve(account_id, reference, amount)

    def credit(
        self, account_id: str, reference: str, amount: int, currency: str
    ) -> Awaitable[None]:
        return self._port().credit(account_id, reference, amount, currency)

    def capture(self, account_id: str, reference: str) -> Awaitable[None]:
        return self._port().capture(account_id, reference)

    def release(self, account_id: str, reference: str) -> Awaitable[None]:
        return self._port().release(account_id, reference)

    def forward(
        self, from_account_id: str, to_account_id: str, reference: str, amount: int
    ) -> Awaitable[list[Decided]]:
        if tracing.sampled():
            return one_by_one(self._traced, from_account_id, to_account_id, reference, amount)
        return self._stream.forward(from_account_id, to_account_id, reference, amount)

    async def close(self) -> None:
        await self._stream.close()


def _retry_hooks(*hooks: RetryHook) -> RetryHook:
    def on_retry(transfer_id: str, step: str, exc: Exception) -> None:
        for hook in hooks:
            hook(transfer_id, step, exc)

    return on_retry


def builder(accounts_target: str, deadline: float, transport: str = "stream"):
    def build(store: AsyncEventStore) -> Assembly:
        measured = metrics.configured()
        traced = tracing.enabled()
        channel = open_channel(accounts_target)
        repository = StoredTransfers(store)
        accounts: GrpcAccounts | StreamingAccounts | _SampledSteps
        # With tracing, unary calls go through a channel that sends their trace context.
        unary_channel: Any = tracing.TracedChannel(channel) if traced else channel
        if transport == "unary":
            accounts = GrpcAccounts(unary_channel, deadline)
        elif traced:
            log.info("tracing: steps of sampled transfers go as unary calls, with their context")
            stream = StreamingAccounts(channel, deadline)
            accounts = _SampledSteps(GrpcAccounts(unary_channel, deadline), stream)
        else:
            accounts = StreamingAccounts(channel, deadline)
        hooks: list[RetryHook] = [lambda *retry: transfers.note_retry(*retry)]
        if measured is not None:
            hooks.append(measured.transfers().retried)
        if traced:
            hooks.append(tracing.note_retry)
        process = TransferProcess(
            accounts,
            repository if measured is None else _CountedTransfers(repository, measured.transfers()),
            crash_point=crash_point_from_env(POINTS),
            on_retry=hooks[0] if len(hooks) == 1 else _retry_hooks(*hooks),
            # BANK_OVERLAP_RECORDS=0 waits for every record before the next call (for
            # measurement: see bank bench-variants).
            overlap_records=os.environ.get("BANK_OVERLAP_RECORDS", "1") != "0",
            # BANK_FORWARD_CALLS=0 makes and records the calls from REQUESTED one at a time.
            forward_calls=os.environ.get("BANK_FORWARD_CALLS", "1") != "0",
        )
        driver: Any = _TracedProcess(process) if traced else process
        transfers = Transfers(repository, driver)

        async def stop() -> None:
            await transfers.close()
            if isinstance(accounts, StreamingAccounts | _SampledSteps):
                await accounts.close()
            await channel.close()

        return Assembly(
            services=[
                Service(
                    _SERVICE,
                    TransferServicer(transfers),
                    transfer_pb2_grpc.add_TransferServiceServicer_to_server,
                )
            ],
            on_start=[transfers.resume_unfinished],
            on_stop=[stop],
        )

    return build


async def run(
    listen: str,
    db: str,
    accounts: str,
    grace: float,
    deadline: float = 5.0,
    stop: asyncio.Event | None = None,
    transport: str = "stream",
) -> None:
    build = builder(accounts, deadline, transport)
    try:
        store = await open_async_store(db, owner=SERVICE_NAME, observer=metrics.store_observer())
    except OwnedByAnother as exc:
        log.critical("%s", exc)
        raise SystemExit(2) from None
    await run_service(listen=listen, store=store, grace=grace, build=build, stop=stop)
