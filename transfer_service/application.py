"""The transfer service's use cases: create, post, void (and wait for the outcome), read,
list; and the ownership of transfers between the processes that share the store.

Every transfer that has not ended is owned through a lease (see ``repository``): the
process that records a request owns the transfer and drives it; a process that is asked
about a transfer another one owns waits for that one's outcome, or takes the transfer over
once its owner has stopped renewing. Each process, every ``sweep_interval``:

- claims the leases that fell due (owners gone, pending holds expired) and drives those
  transfers on (an expired hold is released first);
- renews its own leases, and stops any driver whose lease another process has taken.

A driver is a task of the service, not of the call that started it: a caller that gives up
does not stop the transfer, and a repeated call joins the driver already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from event_store import ConcurrencyConflict, LeaseLost, StoreUnavailable
from shared_kernel.errors import DomainError
from transfer_service import listings
from transfer_service.domain import (
    ReversalReused,
    Transfer,
    TransferNotFound,
    TransferRequested,
    TransferState,
)
from transfer_service.listings import TransferPage, TransferQuery
from transfer_service.process import DEFAULT_BACKOFF, Backoff, OwnershipLost, TransferProcess
from transfer_service.repository import StoredTransfers

log = logging.getLogger(__name__)
_POLL = (0.02, 0.25)  # first and longest wait between looks at another owner's transfer


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


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Transfers:
    def __init__(
        self,
        repository: StoredTransfers,
        process: TransferProcess,
        *,
        answer_within: float = 30.0,
        store_backoff: Backoff = DEFAULT_BACKOFF,
        sweep_interval: float = 0.5,
        resume_concurrency: int = 64,
        clock: Callable[[], datetime] = _utcnow,
        sole_owner: bool = False,
    ) -> None:
        """``sole_owner``: no other process shares the store, so whatever an earlier
        process owned is due at once (else it waits for those leases to run out)."""
        self._repository = repository
        self._process = process
        self._answer_within = answer_within
        self._store_backoff = store_backoff
        self._sweep_interval = sweep_interval
        self._clock = clock
        # Transfers taken up by the sweep and not finished yet, at most this many at once, so
        # that a large backlog does not stampede the account service.
        self._resume_concurrency = resume_concurrency
        self._taking_up: dict[asyncio.Task[None], tuple[str, int]] = {}  # to (id, epoch)
        # Leases owned here with nothing here driving them: renewals seen so, by (id, epoch);
        # and how often each transfer was taken up for that.
        self._unattended: dict[tuple[str, int], int] = {}
        self._retaken: dict[str, int] = {}
        self._drivers: dict[str, asyncio.Future[Transfer]] = {}
        self._together: set[asyncio.Task[None]] = set()  # passes of drive_together
        self._epochs: dict[str, int] = {}  # the epoch each driver holds
        # Visibility for operators: when each driver started, and its current retries.
        self._started: dict[str, int] = {}
        self._sequence = itertools.count(1)
        self._retries: dict[str, Retry] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._sole_owner = sole_owner
        self._closed = False

    # --- lifecycle ---

    async def start(self) -> None:
        """Takes up the transfers that fell due, then keeps doing so in the background."""
        if self._sole_owner:
            await self._repository.abandon(everyone=True)
        await self._sweep()
        self._loop_task = asyncio.create_task(self._keep_sweeping())

    async def close(self) -> None:
        """Stops driving; hands this process's transfers to whoever claims them next."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        running = [*self._taking_up, *self._together, *self._drivers.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._repository.abandon()

    # --- use cases ---

    async def create(self, request: TransferRequested, wait: float | None = None) -> Transfer:
        """Record the transfer (or find the same one recorded) and answer with its outcome:
        ``COMPLETED``, or ``PENDING`` for a pending transfer.

        Raises ``TransferRefused`` when it failed, ``TransferPending`` when it did not end
        within ``wait`` seconds (it carries on), ``TransferAlreadyExists`` for an id reused
        with other contents."""
        deadline = self._deadline(wait)
        transfer = Transfer.empty(request.transfer_id)
        events = transfer.request(request)
        try:
            transfer = await self._process.record(transfer, events, 1)
        except ConcurrencyConflict:
            stored = await self._load(request.transfer_id)
            stored.request(request)  # the same contents, or TransferAlreadyExists
            return await self._outcome(stored, deadline)
        return await self._answer(self._driver(transfer, 1), transfer.transfer_id, deadline)

    async def create_many(
        self, requests: Sequence[TransferRequested], wait: float | None = None
    ) -> list[Transfer | Exception]:
        """``create`` for each request, answered in order (a refusal as its exception).
        New transfers are recorded together, in one transaction; a batch that names a
        transfer already recorded (a repeat) is recorded item by item instead."""
        deadline = self._deadline(wait)
        firsts: dict[str, int] = {}
        for n, request in enumerate(requests):
            firsts.setdefault(request.transfer_id, n)
        if len(firsts) == len(requests):
            try:
                recorded = await self._process.record_requests(requests)
            except ConcurrencyConflict:
                pass  # an id that is taken: each request on its own, below
            except StoreUnavailable as exc:
                # Stored or not (an answer lost): each item may be sent again; if stored, the
                # renewals find its lease here with nothing driving it and take it up.
                return [exc] * len(requests)
            else:
                return await self._answers(self._drive_together(recorded, 1), deadline)
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.0)
        # The same id twice in one batch: the second is a repeat of the first.
        ordered = [self.create(request, remaining) for request in requests]
        return await asyncio.gather(*ordered, return_exceptions=True)  # type: ignore[return-value]

    async def post(self, transfer_id: str, amount: int, wait: float | None = None) -> Transfer:
        """Post a pending transfer (``amount`` 0: all of it); its outcome."""
        return await self._decide(transfer_id, lambda t: t.post(amount), self._deadline(wait))

    async def void(self, transfer_id: str, wait: float | None = None) -> Transfer:
        """Release a pending transfer's hold; the transfer once VOIDED."""
        return await self._decide(transfer_id, lambda t: t.void(), self._deadline(wait))

    async def reverse(
        self,
        transfer_id: str,
        reversal_id: str,
        amount: int,
        reason: str,
        wait: float | None = None,
        owner: str = "",
    ) -> Transfer:
        """Reverse a COMPLETED transfer (``amount`` 0: all that is left) with a transfer of
        its own, ``reversal_id``; the reversal's outcome. Idempotent by ``reversal_id``."""
        deadline = self._deadline(wait)
        while True:
            existing = await self._repository.load(reversal_id)
            if existing is not None:
                same = existing.reverses_transfer_id == transfer_id and existing.reason == reason
                if not same or amount not in (0, existing.amount):
                    raise ReversalReused(reversal_id)
                return await self._outcome(existing, deadline)
            original = await self._load(transfer_id)
            reserved = original.reserve_reversal(reversal_id, amount)
            request = original.reversal(reversal_id, reserved[0].amount, reason, owner)
            try:
                reversal = await self._process.record_reversal(original, reserved, request)
            except ConcurrencyConflict:
                continue  # another reversal of it, or this one, was recorded first
            return await self._answer(self._driver(reversal, 1), reversal_id, deadline)

    async def get(self, transfer_id: str) -> Transfer:
        return await self._load(transfer_id)

    async def of_account(
        self, query: TransferQuery, cursor: int | None, page_size: int
    ) -> TransferPage:
        """A page of the transfers of an account (see ``transfer_service.listings``)."""
        return await listings.page(self._repository, query, cursor, page_size)

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
            chain = transfer.next_steps()
            step = chain[0][1][0].action.value if chain and chain[0][1] else ""
            retry = self._retries.get(transfer_id)
            if retry is not None and retry.step != step:
                retry = None  # the step that failed has since gone through
            entries.append(Unfinished(transfer, step, retry))
        more = len(started) > page_size
        return UnfinishedPage(entries, started[page_size - 1][0] if more else None)

    # --- deciding on a transfer someone may own ---

    async def _decide(
        self, transfer_id: str, decide: Callable[[Transfer], list[Any]], deadline: float
    ) -> Transfer:
        """A client's decision on a pending transfer, recorded by whoever owns it then."""
        loop = asyncio.get_running_loop()
        for delay in _polls():
            transfer = await self._load(transfer_id)
            events = decide(transfer)  # refusals (not pending, too much) raise here
            if not events:
                return await self._outcome(transfer, deadline)  # the same decision again
            epoch = await self._repository.claim(transfer_id)
            if epoch is not None:
                driver = await self._record_and_drive(transfer, events, epoch)
                if driver is not None:
                    return await self._answer(driver, transfer_id, deadline)
            elif loop.time() >= deadline:
                raise TransferPending(transfer_id)
            else:
                await asyncio.sleep(delay)  # another process is deciding on it now
        raise AssertionError("unreachable")

    async def _record_and_drive(
        self, transfer: Transfer, events: list[Any], epoch: int
    ) -> asyncio.Task[Transfer] | None:
        started = None
        try:
            recorded = await self._process.record(transfer, events, epoch)
            started = self._driver(recorded, epoch)
        except (ConcurrencyConflict, LeaseLost):
            return None  # decided elsewhere meanwhile: look again
        finally:
            if started is None and transfer.transfer_id not in self._drivers:
                # Claimed, but nothing to drive here: back to rest, for the next claimer.
                try:
                    await self._repository.rest(transfer, epoch)
                except StoreUnavailable:
                    # Else its lease stays this process's, renewed: a take-up outlasts it.
                    self._spawn(transfer.transfer_id, epoch)
        return started

    async def _outcome(self, transfer: Transfer, deadline: float) -> Transfer:
        """The outcome of a recorded transfer: as it stands if it has ended or rests; else
        the one its driver reaches, here or in the process that owns it (taking it over if
        that one has stopped)."""
        loop = asyncio.get_running_loop()
        transfer_id = transfer.transfer_id
        for delay in _polls():
            if transfer.is_terminal or transfer.at_rest:
                return _answered(transfer)
            task = self._drivers.get(transfer_id)
            if task is None:
                if self._closed:  # the next owner drives it; this caller hears so now
                    raise TransferPending(transfer_id)
                epoch = await self._repository.claim(transfer_id)
                if epoch is not None:
                    task = self._driver(await self._claimed(transfer_id, epoch), epoch)
            if task is not None:
                return await self._answer(task, transfer_id, deadline)
            if loop.time() >= deadline:
                raise TransferPending(transfer_id)
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0.0)))
            transfer = await self._load(transfer_id)
        raise AssertionError("unreachable")

    async def _answers(
        self, drivers: dict[str, asyncio.Task[Transfer]], deadline: float
    ) -> list[Transfer | Exception]:
        """``_answer`` for many drivers (by transfer id), waited for together: one wait,
        one timer."""
        running = [driver for driver in drivers.values() if not driver.done()]
        if running:
            timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
            await asyncio.wait(running, timeout=timeout)  # never cancels a driver
        answers: list[Transfer | Exception] = []
        for transfer_id, driver in drivers.items():
            if not driver.done():
                answers.append(TransferPending(transfer_id))
                continue
            try:
                answers.append(await self._answer(driver, transfer_id, deadline))
            except Exception as exc:
                answers.append(exc)
        return answers

    async def _answer(
        self, driver: asyncio.Task[Transfer], transfer_id: str, deadline: float
    ) -> Transfer:
        if not driver.done():
            # A future of our own: the driver goes on if this caller gives up.
            loop = asyncio.get_running_loop()
            ended = loop.create_future()
            wake = functools.partial(_wake, ended)
            driver.add_done_callback(wake)
            timer = loop.call_at(deadline, wake, None)
            try:
                await ended
            finally:
                timer.cancel()
                driver.remove_done_callback(wake)
            if not driver.done():
                raise TransferPending(transfer_id)
        if driver.cancelled() or isinstance(driver.exception(), OwnershipLost):
            # Another process took it over: its outcome, as that one reaches it.
            return await self._outcome(await self._load(transfer_id), deadline)
        return _answered(driver.result())

    # --- drivers ---

    def _driver(self, transfer: Transfer, epoch: int) -> asyncio.Future[Transfer]:
        transfer_id = transfer.transfer_id
        driver = self._drivers.get(transfer_id)
        if driver is None or self._epochs[transfer_id] < epoch:
            if driver is not None:
                driver.cancel()  # its claim is stale: it would be fenced at its next step
            driver = asyncio.create_task(self._drive(transfer_id, transfer, epoch))
            self._register(transfer_id, driver, epoch)
        return driver

    def _register(self, transfer_id: str, driver: asyncio.Future[Transfer], epoch: int) -> None:
        """``driver`` (a task, or a batch item's future) stands for the transfer here until
        it is done."""
        self._drivers[transfer_id] = driver
        self._epochs[transfer_id] = epoch
        self._started[transfer_id] = next(self._sequence)
        driver.add_done_callback(functools.partial(self._forgotten, transfer_id))

    def _drive_together(
        self, transfers: Sequence[Transfer], epoch: int
    ) -> dict[str, asyncio.Future[Transfer]]:
        """Drivers for transfers recorded together: one pass for all of them
        (``TransferProcess.drive_together``), then a driver of its own for each that the
        pass did not end. A future per transfer stands for its driver meanwhile."""
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[Transfer]] = {}
        for transfer in transfers:
            futures[transfer.transfer_id] = future = loop.create_future()
            self._register(transfer.transfer_id, future, epoch)
        task = asyncio.create_task(self._pass_together(transfers, futures, epoch))
        self._together.add(task)
        task.add_done_callback(self._together.discard)
        return futures

    async def _pass_together(
        self,
        transfers: Sequence[Transfer],
        futures: dict[str, asyncio.Future[Transfer]],
        epoch: int,
    ) -> None:
        try:
            driven = await self._process.drive_together(transfers, epoch)
        except Exception as exc:  # each goes on alone, from the store
            log.warning("%d transfers driven one by one: %s", len(transfers), exc)
            driven = [None] * len(transfers)
        alone = []
        for transfer, outcome in zip(transfers, driven, strict=True):
            future = futures[transfer.transfer_id]
            if future.done():
                continue  # taken over meanwhile
            if outcome is not None and outcome.is_terminal:
                future.set_result(outcome)
            else:
                task = asyncio.ensure_future(
                    self._drive_into(future, transfer.transfer_id, outcome, epoch)
                )
                future.add_done_callback(functools.partial(_stop_if_cancelled, task))
                alone.append(task)
        if alone:
            await asyncio.gather(*alone)

    async def _drive_into(
        self,
        future: asyncio.Future[Transfer],
        transfer_id: str,
        transfer: Transfer | None,
        epoch: int,
    ) -> None:
        try:
            outcome = await self._drive(transfer_id, transfer, epoch)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # the future's waiters hear it, as a driver's would
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(outcome)

    def _forgotten(self, transfer_id: str, future: asyncio.Future[Transfer]) -> None:
        if self._drivers.get(transfer_id) is future:
            self._forget(transfer_id)
        # Retrieved here, as its callers may have gone: a lost ownership is logged where it
        # is found, anything else here.
        if not future.cancelled() and (exc := future.exception()) is not None:
            if not isinstance(exc, OwnershipLost):
                log.error("transfer %s: its driver failed", transfer_id, exc_info=exc)

    def _forget(self, transfer_id: str) -> None:
        self._drivers.pop(transfer_id, None)
        self._epochs.pop(transfer_id, None)
        self._started.pop(transfer_id, None)
        self._retries.pop(transfer_id, None)

    async def _drive(self, transfer_id: str, transfer: Transfer | None, epoch: int) -> Transfer:
        """Drive to an end (or to rest), outlasting outages of this service's own database."""
        failures = 0
        while True:
            try:
                if transfer is None:
                    transfer = await self._load(transfer_id)
                driven = await self._process.drive(transfer, epoch)
                if driven.at_rest:
                    # Claimed while at rest (a caller raced the hold): hand it back, else
                    # this process renews the lease forever and the hold never falls due.
                    await self._repository.rest(driven, epoch)
                return driven
            except StoreUnavailable as exc:
                # The last record may or may not have been stored: start again from the store.
                transfer = None
                failures += 1
                log.warning("transfer %s: database unavailable (%s)", transfer_id, exc)
                await self._store_backoff.sleep(self._store_backoff.delay(failures))
            except OwnershipLost as lost:
                log.info("transfer %s: %s; its new owner drives it", transfer_id, lost)
                raise

    # --- the sweep ---

    async def _keep_sweeping(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self._renew()
                await self._sweep()
            except StoreUnavailable as exc:
                log.warning("leases not swept: database unavailable (%s)", exc)
            except Exception:
                log.exception("leases not swept")

    async def _renew(self) -> None:
        # Drivers started from here on may have leases the renewal does not see yet.
        horizon = next(self._sequence)
        owned = await self._repository.renew()
        for transfer_id, task in list(self._drivers.items()):
            epoch = self._epochs.get(transfer_id)
            started = self._started.get(transfer_id, horizon)
            if task.done() or started >= horizon or owned.get(transfer_id) == epoch:
                continue
            # Not renewed: ended meanwhile (its driver is finishing), or taken over.
            lease = await self._repository.lease(transfer_id)
            if lease is not None and (
                lease.owner != self._repository.owner or lease.epoch != epoch
            ):
                log.warning("transfer %s: taken over by another process; stopping", transfer_id)
                task.cancel()
        self._attend(owned)

    def _attend(self, owned: dict[str, int]) -> None:
        """Takes up each lease owned here with nothing here driving it at two renewals in a
        row (one may be a claim on its way to its driver): a path that claims and then fails
        without a driver would otherwise keep its transfer here, renewed, for good. One taken
        up this way again (its driver failed) waits twice as many renewals, up to 128. Like
        the sweep's, at most ``resume_concurrency`` take-ups run at once."""
        taken = set(self._taking_up.values())
        room = self._resume_concurrency - len(self._taking_up)  # the rest: a later renewal
        seen: dict[tuple[str, int], int] = {}
        for lease in owned.items():
            transfer_id, epoch = lease
            if self._epochs.get(transfer_id) == epoch or lease in taken:
                continue
            renewals = self._unattended.get(lease, 0) + 1
            retaken = self._retaken.get(transfer_id, 0)
            if renewals < 2 << min(retaken, 6) or room <= 0:
                seen[lease] = renewals
                continue
            room -= 1
            log.warning("transfer %s: owned here, nothing driving it; taking it up", transfer_id)
            self._retaken[transfer_id] = retaken + 1
            self._spawn(transfer_id, epoch)
        self._unattended = seen
        for transfer_id in [t for t in self._retaken if t not in owned]:
            del self._retaken[transfer_id]

    async def _sweep(self) -> int:
        """Claims the transfers that fell due and drives them; how many."""
        room = self._resume_concurrency - len(self._taking_up)
        if room <= 0:
            return 0
        claimed = await self._repository.claim_due(limit=room)
        for transfer_id, epoch in claimed:
            # Even with a driver here: that one holds an older epoch, so it cannot finish.
            self._spawn(transfer_id, epoch)
        if claimed:
            log.info("took up %d transfers", len(claimed))
        return len(claimed)

    def _spawn(self, transfer_id: str, epoch: int) -> None:
        task = asyncio.create_task(self._take_up(transfer_id, epoch))
        self._taking_up[task] = (transfer_id, epoch)
        task.add_done_callback(self._taken_up)

    def _taken_up(self, task: asyncio.Task[None]) -> None:
        self._taking_up.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("taking up a transfer failed", exc_info=task.exception())

    async def _take_up(self, transfer_id: str, epoch: int) -> None:
        failures = 0
        while True:
            try:
                transfer = await self._load(transfer_id)
                if transfer.at_rest:
                    events = transfer.expire(self._clock())
                    if not events:
                        await self._repository.rest(transfer, epoch)  # not due by our clock
                        return
                    transfer = await self._process.record(transfer, events, epoch)
                break
            except StoreUnavailable as exc:
                # Its lease stays this process's, renewed: no one else would take it up.
                failures += 1
                log.warning("transfer %s: database unavailable (%s)", transfer_id, exc)
                await self._store_backoff.sleep(self._store_backoff.delay(failures))
            except ConcurrencyConflict:
                continue  # a client's decision recorded first (a void racing the expiry)
            except LeaseLost as lost:
                log.info("transfer %s: %s; its new owner drives it", transfer_id, lost)
                return
        # Until it ends; how it failed, if it did, is the driver's to log (_forgotten).
        await asyncio.wait([self._driver(transfer, epoch)])

    # --- helpers ---

    async def _claimed(self, transfer_id: str, epoch: int) -> Transfer:
        """The transfer just claimed. If it cannot be read now, a take-up drives it once it
        can: else its lease stays this process's, renewed, and no one else would."""
        try:
            return await self._load(transfer_id)
        except StoreUnavailable:
            self._spawn(transfer_id, epoch)
            raise

    async def _load(self, transfer_id: str) -> Transfer:
        transfer = await self._repository.load(transfer_id)
        if transfer is None:
            raise TransferNotFound(transfer_id)
        return transfer

    def _deadline(self, wait: float | None) -> float:
        limit = self._answer_within if wait is None else min(wait, self._answer_within)
        return asyncio.get_running_loop().time() + limit


def _stop_if_cancelled(task: asyncio.Task[None], future: asyncio.Future[Transfer]) -> None:
    if future.cancelled():  # taken over by another process, or this one is closing
        task.cancel()


def _wake(ended: asyncio.Future[None], _: object) -> None:
    if not ended.done():
        ended.set_result(None)


def _answered(transfer: Transfer) -> Transfer:
    if transfer.state is TransferState.FAILED:
        raise TransferRefused(transfer)
    return transfer


def _polls():
    """Waits between looks: growing from the first to the longest, then staying there."""
    delay = _POLL[0]
    while True:
        yield delay
        delay = min(delay * 2, _POLL[1])
