"""The transfer service's use cases: create (and wait for) a transfer, read, list, resume.

Each transfer is driven by one task in this process. The task belongs to the service, not
to the call that started it: a caller that gives up does not stop the transfer, and a
repeated ``CreateTransfer`` joins the task already running.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from event_store import StoreUnavailable
from shared_kernel.errors import DomainError
from transfer_service.domain import Transfer, TransferNotFound, TransferState
from transfer_service.process import DEFAULT_BACKOFF, Backoff, TransferProcess
from transfer_service.repository import StoredTransfers

log = logging.getLogger(__name__)
T = TypeVar("T")


class TransferRefused(DomainError):
    """The transfer ended FAILED; ``reason`` is the account service's refusal."""

    def __init__(self, transfer: Transfer) -> None:
        super().__init__(
            f"transfer {transfer.transfer_id} failed: {transfer.failure_reason}",
            transfer_id=transfer.transfer_id,
        )
        self.reason = transfer.failure_reason
        self.transfer = transfer


class TransferPending(DomainError):
    """The transfer is recorded and still running (a peer is slow or down)."""

    def __init__(self, transfer_id: str) -> None:
        super().__init__(
            f"transfer {transfer_id} is recorded and still in progress; "
            "retry with the same transfer_id to get its outcome",
            transfer_id=transfer_id,
        )


@dataclass(frozen=True, slots=True)
class Retry:
    step: str
    attempts: int
    last_error: str
    last_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class Unfinished:
    transfer: Transfer
    step: str
    retry: Retry | None


@dataclass(frozen=True, slots=True)
class UnfinishedPage:
    entries: list[Unfinished]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class TransferPage:
    transfers: list[Transfer]
    next_cursor: int | None


class Transfers:
    def __init__(
        self,
        repository: StoredTransfers,
        process: TransferProcess,
        *,
        answer_within: float = 30.0,
        store_backoff: Backoff = DEFAULT_BACKOFF,
        resume_concurrency: int = 64,
    ) -> None:
        self._repository = repository
        self._process = process
        self._answer_within = answer_within
        self._store_backoff = store_backoff
        self._resume_concurrency = resume_concurrency
        self._drivers: dict[str, asyncio.Task[Transfer]] = {}
        # Visibility for operators: when each driver started, and its current retries.
        self._started: dict[str, int] = {}
        self._sequence = itertools.count(1)
        self._retries: dict[str, Retry] = {}

    async def create(
        self,
        transfer_id: str,
        from_account_id: str,
        to_account_id: str,
        amount: int,
        wait: float | None = None,
    ) -> Transfer:
        """Record the transfer (or find the same one recorded) and answer with its outcome.

        Raises ``TransferRefused`` when it failed, ``TransferPending`` when it did not end
        within ``wait`` seconds (it carries on), ``TransferAlreadyExists`` for an id reused
        with other fields.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        transfer = await self._process.request(transfer_id, from_account_id, to_account_id, amount)
        if not transfer.is_terminal:
            driver = self._driver(transfer_id, transfer)
            limit = self._answer_within if wait is None else min(wait, self._answer_within)
            # ``wait`` counts from the call's start: recording the request took some of it.
            limit = max(limit - (loop.time() - started), 0.0)
            try:
                transfer = await asyncio.wait_for(asyncio.shield(driver), timeout=limit)
            except TimeoutError:
                raise TransferPending(transfer_id) from None
        if transfer.state is TransferState.FAILED:
            raise TransferRefused(transfer)
        return transfer

    async def get(self, transfer_id: str) -> Transfer:
        transfer = await self._repository.load(transfer_id)
        if transfer is None:
            raise TransferNotFound(transfer_id)
        return transfer

    async def of_account(self, account_id: str, before: int | None, page_size: int) -> TransferPage:
        entries = await self._repository.of_account(account_id, before, page_size + 1)
        page = entries[:page_size]
        more = len(entries) > page_size
        return TransferPage([t for _, t in page], page[-1][0] if more else None)

    async def resume_unfinished(self) -> int:
        """Start a driver for every transfer that is not terminal; how many there were."""
        transfer_ids = await self._repository.unfinished()
        # Bounded, so that a restart with a large backlog does not stampede the account
        # service (or other replicas' work) with every unfinished transfer at once.
        gate = asyncio.Semaphore(self._resume_concurrency)
        for transfer_id in transfer_ids:
            self._driver(transfer_id, gate=gate)
        if transfer_ids:
            log.info("resuming %d unfinished transfers", len(transfer_ids))
        return len(transfer_ids)

    async def close(self) -> None:
        for task in list(self._drivers.values()):
            task.cancel()
        await asyncio.gather(*self._drivers.values(), return_exceptions=True)

    def _driver(
        self,
        transfer_id: str,
        transfer: Transfer | None = None,
        gate: asyncio.Semaphore | None = None,
    ) -> asyncio.Task[Transfer]:
        task = self._drivers.get(transfer_id)
        if task is None:
            drive = self._drive(transfer_id, transfer)
            task = asyncio.create_task(drive if gate is None else _gated(gate, drive))
            self._drivers[transfer_id] = task
            self._started[transfer_id] = next(self._sequence)
            task.add_done_callback(lambda _: self._forget(transfer_id))
        return task

    def _forget(self, transfer_id: str) -> None:
        self._drivers.pop(transfer_id, None)
        self._started.pop(transfer_id, None)
        self._retries.pop(transfer_id, None)

    def note_retry(self, transfer_id: str, step: str, exc: Exception) -> None:
        """Records a failed attempt, for operators (``on_retry`` hook of the process)."""
        previous = self._retries.get(transfer_id)
        attempts = previous.attempts + 1 if previous and previous.step == step else 1
        self._retries[transfer_id] = Retry(step, attempts, str(exc), datetime.now(UTC))

    async def unfinished(self, after: int, page_size: int) -> UnfinishedPage:
        """Transfers being driven here, oldest first, from driver number ``after`` on."""
        started = sorted((seq, tid) for tid, seq in self._started.items() if seq > after)
        entries = []
        for _, transfer_id in started[:page_size]:
            transfer = await self._repository.load(transfer_id)
            if transfer is None or transfer.is_terminal:
                continue
            step = transfer.next_step
            retry = self._retries.get(transfer_id)
            if retry is not None and step is not None and retry.step != step.value:
                retry = None  # the step that failed has since gone through
            entries.append(Unfinished(transfer, step.value if step else "", retry))
        more = len(started) > page_size
        return UnfinishedPage(entries, started[page_size - 1][0] if more else None)

    async def _drive(self, transfer_id: str, transfer: Transfer | None) -> Transfer:
        """Drive to a terminal state, outlasting outages of this service's own database."""
        failures = 0
        while True:
            try:
                if transfer is None:
                    transfer = await self._repository.load(transfer_id)
                    if transfer is None:
                        raise TransferNotFound(transfer_id)
                return await self._process.drive(transfer)
            except StoreUnavailable as exc:
                # The last record may or may not have been stored: start again from the store.
                transfer = None
                failures += 1
                delay = self._store_backoff.delay(failures)
                log.warning("transfer %s: database unavailable (%s)", transfer_id, exc)
                await self._store_backoff.sleep(delay)


async def _gated(gate: asyncio.Semaphore, work: Coroutine[Any, Any, T]) -> T:
    async with gate:
        return await work
