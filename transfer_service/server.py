"""The transfer service's composition root: repository, process, account client, server."""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from bank.v1 import transfer_pb2, transfer_pb2_grpc
from event_store import AsyncEventStore, OwnedByAnother, open_async_store
from grpc_common import metrics, tracing
from grpc_common.server import Assembly, Service, run_service
from shared_kernel.crash import crash_point_from_env
from transfer_service.accounts_client import (
    Chain,
    StepStream,
    StreamingAccounts,
    UnaryAccounts,
    Wave,
    open_channel,
    parse_targets,
)
from transfer_service.application import Transfers
from transfer_service.domain import (
    AccountStep,
    Answer,
    Transfer,
    TransferCompleted,
    TransferEvent,
    TransferExpired,
    TransferFailed,
    TransferRequested,
    TransferReserved,
    TransferVoided,
)
from transfer_service.grpc_api.servicers import TransferServicer
from transfer_service.process import POINTS, RetryHook, TransferProcess, TransferRepository
from transfer_service.repository import StoredTransfers

# How the service names itself: in its log lines, its traces, and its claim on its database.
SERVICE_NAME = "transfer-service"
DEFAULT_LISTEN = "127.0.0.1:50052"
DEFAULT_DB = "sqlite:///transfers.db"
DEFAULT_ACCOUNTS = "127.0.0.1:50051"
# How long a process owns a transfer without renewing its lease: the time another replica
# waits before it takes over the transfers of one that died.
LEASE_SECONDS = 5.0
_SERVICE = transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name
log = logging.getLogger(__name__)


class _CountedTransfers:
    """The repository as the process sees it, counting transfers and holds as recorded."""

    def __init__(self, repository: TransferRepository, counts: metrics.TransferMetrics) -> None:
        self._repository = repository
        self._counts = counts

    async def load(self, transfer_id: str) -> Transfer | None:
        return await self._repository.load(transfer_id)

    async def record_reversal(
        self, original: Transfer, reserved: Sequence[TransferEvent], request: TransferRequested
    ) -> Transfer:
        reversal = await self._repository.record_reversal(original, reserved, request)
        self._counts.requested()
        return reversal

    async def record_requests(self, requests: Sequence[TransferRequested]) -> list[Transfer]:
        recorded = await self._repository.record_requests(requests)
        for _ in recorded:
            self._counts.requested()
        return recorded

    async def record(
        self, transfer: Transfer, events: Sequence[TransferEvent], epoch: int
    ) -> Transfer:
        pending = transfer.pending
        recorded = await self._repository.record(transfer, events, epoch)
        self._count(pending, events, recorded)
        return recorded

    async def record_many(
        self, records: Sequence[tuple[Transfer, Sequence[TransferEvent], int]]
    ) -> list[Transfer]:
        pending = [transfer.pending for transfer, _, _ in records]
        recorded = await self._repository.record_many(records)
        for was, (_, events, _), transfer in zip(pending, records, recorded, strict=True):
            self._count(was, events, transfer)
        return recorded

    def _count(self, pending: bool, events: Sequence[TransferEvent], recorded: Transfer) -> None:
        for event in events:
            if isinstance(event, TransferRequested):
                self._counts.requested()
                pending = event.pending
            elif isinstance(event, TransferReserved) and pending:
                self._counts.hold("placed")
            elif type(event) in _ENDS:
                state = _ENDS[type(event)]
                reason = event.reason if isinstance(event, TransferFailed) else ""
                started, ended = recorded.created_at, recorded.updated_at
                seconds = (ended - started).total_seconds() if started and ended else None
                self._counts.ended(state, reason, seconds)
                if pending and state in _HOLD_ENDS:
                    self._counts.hold(_HOLD_ENDS[state])


_ENDS = {
    TransferCompleted: "COMPLETED",
    TransferFailed: "FAILED",
    TransferVoided: "VOIDED",
    TransferExpired: "EXPIRED",
}
# What became of a pending transfer's hold, by the state the transfer ended in.
_HOLD_ENDS = {"COMPLETED": "posted", "VOIDED": "voided", "EXPIRED": "expired"}


class _TracedProcess(TransferProcess):
    """The process, driving each transfer inside a span."""

    async def drive(self, transfer: Transfer, epoch: int) -> Transfer:
        with tracing.span("transfer", {tracing.TRANSFER_ID: transfer.transfer_id}) as span:
            driven = await super().drive(transfer, epoch)
            if span is not None:
                span.set_attribute("bank.transfer_state", driven.state.name if driven.state else "")
            return driven

    async def drive_together(
        self, transfers: Sequence[Transfer], epoch: int
    ) -> list[Transfer | None]:
        return list(transfers)  # none driven here: each goes alone, in a span of its own


class _SampledSteps:
    """AccountsPort with tracing: a sampled transfer's steps go as unary calls, which
    carry its trace context (a stream's metadata is sent once); all others keep to the
    streams."""

    def __init__(self, traced: UnaryAccounts, streams: StreamingAccounts) -> None:
        self._traced = traced
        self._streams = streams

    async def run(
        self, steps: Sequence[AccountStep], reference: str, epoch: int, currency: str = ""
    ) -> list[Answer]:
        port = self._traced if tracing.sampled() else self._streams
        return await port.run(steps, reference, epoch, currency)

    def run_many(self, chains: Sequence[Chain]) -> AsyncIterator[Wave]:
        return self._streams.run_many(chains)


def _retry_hooks(*hooks: RetryHook) -> RetryHook:
    def on_retry(transfer_id: str, step: str, exc: Exception) -> None:
        for hook in hooks:
            hook(transfer_id, step, exc)

    return on_retry


def builder(accounts_target: str, deadline: float, sole_owner: bool = False):
    def build(store: AsyncEventStore) -> Assembly:
        measured = metrics.configured()
        traced = tracing.enabled()
        channels = {address: open_channel(address) for address in parse_targets(accounts_target)}
        streams = StreamingAccounts(
            {address: StepStream(channel, deadline) for address, channel in channels.items()}
        )
        accounts: Any = streams
        if traced:
            log.info("tracing: steps of sampled transfers go as unary calls, with their context")
            unary = {address: tracing.TracedChannel(c) for address, c in channels.items()}
            accounts = _SampledSteps(UnaryAccounts(unary, streams.address, deadline), streams)
        repository = StoredTransfers(store, lease_seconds=LEASE_SECONDS)
        hooks: list[RetryHook] = [lambda *retry: transfers.note_retry(*retry)]
        if measured is not None:
            hooks.append(measured.transfers().retried)
        if traced:
            hooks.append(tracing.note_retry)
        process_type = _TracedProcess if traced else TransferProcess
        process = process_type(
            accounts,
            repository if measured is None else _CountedTransfers(repository, measured.transfers()),
            crash_point=crash_point_from_env(POINTS),
            on_retry=hooks[0] if len(hooks) == 1 else _retry_hooks(*hooks),
        )
        # On SQLite this is the only transfer service of the file (hold_sqlite_file): every
        # lease left by an earlier process is due at once.
        transfers = Transfers(repository, process, sole_owner=sole_owner)

        async def stop() -> None:
            await transfers.close()
            await streams.close()
            for channel in channels.values():
                await channel.close()

        return Assembly(
            services=[
                Service(
                    _SERVICE,
                    TransferServicer(transfers),
                    transfer_pb2_grpc.add_TransferServiceServicer_to_server,
                )
            ],
            on_start=[transfers.start],
            on_stop=[stop],
        )

    return build


def hold_sqlite_file(db: str) -> Any:
    """On SQLite, one transfer service per database file: its leases would otherwise be
    every process's at once. Holds an exclusive lock on the file for the life of the
    process (the returned handle); exits if another process holds it."""
    if not db.startswith("sqlite:///"):
        return None
    path = Path(db.removeprefix("sqlite:///").partition("?")[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.with_name(path.name + ".lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.critical(
            "another transfer service uses %s: on SQLite one transfer service serves a"
            " database file (run several on Postgres)",
            path,
        )
        raise SystemExit(2) from None
    return handle


async def run(
    listen: str,
    db: str,
    accounts: str,
    grace: float,
    deadline: float = 5.0,
    stop: asyncio.Event | None = None,
) -> None:
    lock = hold_sqlite_file(db)
    try:
        try:
            store = await open_async_store(
                db, owner=SERVICE_NAME, observer=metrics.store_observer()
            )
        except OwnedByAnother as exc:
            log.critical("%s", exc)
            raise SystemExit(2) from None
        await run_service(
            listen=listen,
            store=store,
            grace=grace,
            build=builder(accounts, deadline, sole_owner=lock is not None),
            stop=stop,
        )
    finally:
        if lock is not None:
            lock.close()
