"""The transfer protocol: the process that moves a transfer from REQUESTED to a terminal state.

The whole protocol, in order, with the transfer id as the ``reference`` of every call:

1. record REQUESTED                                   (``TransferProcess.request``)
2. ``reserve`` the amount on the source               -> record RESERVED
   refused (insufficient funds, closed, unknown)      -> record FAILED; done
3. ``credit`` the amount to the target                -> record CREDITED
   refused (closed, other currency, unknown)          -> record CreditRefused, go to 5
4. ``capture`` the hold on the source                 -> record COMPLETED; done
5. ``release`` the hold on the source                 -> record FAILED (the credit's reason); done

Every call is idempotent on the account side, so the process can stop anywhere and be
driven on from what is stored: a call is at worst repeated, never applied twice. A
transient fault (``StepUnavailable``) is never a refusal: the same step is retried, with
backoff, until it is decided.

Records and calls overlap where that cannot change what happens. RESERVED and CREDITED
are written while the next call (credit, capture) is already on its way: from the state
before either record, a restarted process makes the very same calls again (a repeat of
an applied step answers as the first did), so whether the record landed first changes
nothing. A refusal is different: CreditRefused must be stored before the release, or a
restart could try the credit again, see it accepted (the target opened meanwhile) and
then find the hold released. Every record is stored before the next one is written, and
the terminal record before the outcome is returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random as _random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from event_store import ConcurrencyConflict
from transfer_service.domain import (
    InvalidTransition,
    Step,
    Transfer,
    TransferCredited,
    TransferEvent,
    TransferNotFound,
    TransferReserved,
    TransferState,
)

log = logging.getLogger(__name__)


# --- what the account side can answer -----------------------------------------------------


class StepRefused(Exception):
    """The account service decided "no" for good."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason  # a contract ErrorInfo reason, e.g. "INSUFFICIENT_FUNDS"
        self.message = message


class StepUnavailable(Exception):
    """The call was not decided (peer down, deadline exceeded, ...): retry the same step."""


# --- ports --------------------------------------------------------------------------------


class AccountsPort(Protocol):
    """The account service's ReservationService, as the transfer process sees it.

    Each method raises ``StepRefused`` or ``StepUnavailable``; anything else is a bug.
    """

    async def reserve(self, account_id: str, reference: str, amount: int) -> str:
        """Hold ``amount`` on the account; returns the account's currency."""
        ...

    async def credit(self, account_id: str, reference: str, amount: int, currency: str) -> None: ...

    async def capture(self, account_id: str, reference: str) -> None: ...

    async def release(self, account_id: str, reference: str) -> None: ...


class TransferRepository(Protocol):
    async def load(self, transfer_id: str) -> Transfer | None: ...

    async def record(self, transfer: Transfer, events: Sequence[TransferEvent]) -> Transfer:
        """Append ``events`` at expected version ``transfer.version``.

        Returns the transfer with the events applied (with the store's time); raises
        ``ConcurrencyConflict`` if another writer appended first.
        """
        ...


# --- retry timing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter."""

    initial: float = 0.05
    maximum: float = 5.0
    factor: float = 2.0
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
    random: Callable[[], float] = _random.random

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures (1 for the first)."""
        # The cap is reached long before 64; bounding the exponent keeps the power finite.
        exponent = min(max(failures - 1, 0), 64)
        ceiling = min(self.maximum, self.initial * self.factor**exponent)
        return ceiling * self.random()


DEFAULT_BACKOFF = Backoff()


# --- crash points -------------------------------------------------------------------------

CrashPoint = Callable[[str], None]

AFTER_RECORD_REQUESTED = "after-record-requested"
AFTER_RESERVE_ANSWERED = "after-reserve-answered"
AFTER_RECORD_RESERVED = "after-record-reserved"
AFTER_CREDIT_ANSWERED = "after-credit-answered"
AFTER_RECORD_CREDITED = "after-record-credited"
AFTER_RECORD_CREDIT_REFUSED = "after-record-credit-refused"
AFTER_CAPTURE_ANSWERED = "after-capture-answered"
AFTER_RELEASE_ANSWERED = "after-release-answered"

POINTS = (
    AFTER_RECORD_REQUESTED,
    AFTER_RESERVE_ANSWERED,
    AFTER_RECORD_RESERVED,
    AFTER_CREDIT_ANSWERED,
    AFTER_RECORD_CREDITED,
    AFTER_RECORD_CREDIT_REFUSED,
    AFTER_CAPTURE_ANSWERED,
    AFTER_RELEASE_ANSWERED,
)


def no_op(point: str) -> None:
    return None


RetryHook = Callable[[str, str, Exception], None]


# --- the process --------------------------------------------------------------------------


class TransferProcess:
    def __init__(
        self,
        accounts: AccountsPort,
        repository: TransferRepository,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        crash_point: CrashPoint = no_op,
        on_retry: RetryHook | None = None,
        overlap_records: bool = True,
    ) -> None:
        """``overlap_records=False`` stores every record before the next call (slower;
        the protocol as first written, kept to measure the difference)."""
        self._overlap = overlap_records
        self._accounts = accounts
        self._repository = repository
        self._backoff = backoff
        self._crash_point = crash_point
        self._on_retry = on_retry

    async def request(
        self, transfer_id: str, from_account_id: str, to_account_id: str, amount: int
    ) -> Transfer:
        """Record the transfer as REQUESTED, or return it as stored if this request is a repeat.

        Raises ``InvalidArgument`` or ``TransferAlreadyExists``; does not drive the transfer.
        """
        # Optimistically record first: for a new id (the usual case) that is one append and
        # no read; if the id is taken, the conflict says so and the stored one is compared.
        transfer: Transfer | None = Transfer.empty(transfer_id)
        while True:
            if transfer is None:
                transfer = await self._repository.load(transfer_id) or Transfer.empty(transfer_id)
            events = transfer.request(from_account_id, to_account_id, amount)
            if not events:
                return transfer
            try:
                transfer = await self._repository.record(transfer, events)
            except ConcurrencyConflict:
                # Someone recorded this id first: decide again against what they stored.
                transfer = None
                continue
            self._crash_point(AFTER_RECORD_REQUESTED)
            return transfer

    async def drive(self, transfer: Transfer) -> Transfer:
        """Run the protocol from the transfer's current state to a terminal state; return it."""
        # A forward record still being written while the next call is made.
        recording: asyncio.Task[Transfer] | None = None
        try:
            failures = 0
            while not transfer.is_terminal:
                step = transfer.next_step
                if step is None:
                    raise InvalidTransition(f"transfer {transfer.transfer_id} was never requested")
                try:
                    events, point = await self._take(step, transfer)
                except StepUnavailable as exc:
                    failures += 1
                    delay = self._backoff.delay(failures)
                    log.warning(
                        "transfer %s: %s not decided (%s); retry %d in %.2fs",
                        transfer.transfer_id,
                        step.value,
                        exc,
                        failures,
                        delay,
                    )
                    self._notify_retry(transfer, step, exc)
                    await self._backoff.sleep(delay)
                    continue
                except StepRefused as exc:
                    # Only capture and release get here. Their hold exists because this
                    # process made it, so a refusal means the two services disagree. Failing
                    # the transfer would be wrong (after a credit the money has already
                    # arrived), so it stays non-terminal and visible until someone repairs
                    # the account side.
                    failures += 1
                    log.error(
                        "transfer %s: %s refused (%s), which the protocol rules out; retrying",
                        transfer.transfer_id,
                        step.value,
                        exc,
                    )
                    self._notify_retry(transfer, step, exc)
                    await self._backoff.sleep(self._backoff.maximum)
                    continue
                failures = 0
                if recording is not None:
                    stored, recording = await recording, None
                    if _progress(stored) != _progress(transfer):
                        # Another driver recorded something else first: its record stands,
                        # and this call (idempotent) is decided again from it.
                        transfer = stored
                        continue
                    transfer = stored
                if self._overlap and _overlaps_next_call(events):
                    decided = _decided(transfer, events)
                    recording = asyncio.create_task(self._record(transfer, events, point))
                    transfer = decided
                else:
                    transfer = await self._record(transfer, events, point)
            return transfer
        finally:
            if recording is not None and not recording.done():
                # Only on the way out with an error or a cancellation: the write may or may
                # not land, as with any interrupted record; both are states to resume from.
                recording.cancel()

    async def _take(self, step: Step, transfer: Transfer) -> tuple[list[TransferEvent], str | None]:
        """Make the step's call; return the decision to record and the point after recording it."""
        match step:
            case Step.RESERVE:
                return await self._reserve(transfer)
            case Step.CREDIT:
                return await self._credit(transfer)
            case Step.CAPTURE:
                return await self._capture(transfer)
            case Step.RELEASE:
                return await self._release(transfer)

    async def _reserve(self, t: Transfer) -> tuple[list[TransferEvent], str | None]:
        try:
            currency = await self._accounts.reserve(t.from_account_id, t.transfer_id, t.amount)
        except StepRefused as refused:
            self._crash_point(AFTER_RESERVE_ANSWERED)
            return t.failed(refused.reason), None
        self._crash_point(AFTER_RESERVE_ANSWERED)
        return t.reserved(currency), AFTER_RECORD_RESERVED

    async def _credit(self, t: Transfer) -> tuple[list[TransferEvent], str | None]:
        try:
            await self._accounts.credit(t.to_account_id, t.transfer_id, t.amount, t.currency)
        except StepRefused as refused:
            self._crash_point(AFTER_CREDIT_ANSWERED)
            # Compensation: the next step (release) is decided by this record.
            return t.credit_refused(refused.reason), AFTER_RECORD_CREDIT_REFUSED
        self._crash_point(AFTER_CREDIT_ANSWERED)
        return t.credited(), AFTER_RECORD_CREDITED

    async def _capture(self, t: Transfer) -> tuple[list[TransferEvent], str | None]:
        await self._accounts.capture(t.from_account_id, t.transfer_id)
        self._crash_point(AFTER_CAPTURE_ANSWERED)
        return t.completed(), None

    async def _release(self, t: Transfer) -> tuple[list[TransferEvent], str | None]:
        await self._accounts.release(t.from_account_id, t.transfer_id)
        self._crash_point(AFTER_RELEASE_ANSWERED)
        return t.failed(t.failure_reason), None

    async def _record(
        self, transfer: Transfer, events: list[TransferEvent], point: str | None
    ) -> Transfer:
        try:
            recorded = await self._repository.record(transfer, events)
        except ConcurrencyConflict:
            # Another driver advanced this transfer first. Its record stands; carry on from
            # it rather than from this decision (the call just made was idempotent anyway).
            log.info("transfer %s: recorded elsewhere first; reloading", transfer.transfer_id)
            stored = await self._repository.load(transfer.transfer_id)
            if stored is None:
                raise TransferNotFound(transfer.transfer_id) from None
            return stored
        if point is not None:
            self._crash_point(point)
        return recorded

    def _notify_retry(self, transfer: Transfer, step: Step, exc: Exception) -> None:
        if self._on_retry is not None:
            self._on_retry(transfer.transfer_id, step.value, exc)


def _decided(transfer: Transfer, events: Sequence[TransferEvent]) -> Transfer:
    """The transfer as it will be once ``events`` are recorded (the argument is kept)."""
    decided = dataclasses.replace(transfer)
    for event in events:
        decided.apply(event)
    return decided


def _overlaps_next_call(events: Sequence[TransferEvent]) -> bool:
    """Whether the next call may go out before these events are stored: only after a
    reservation or a credit, where a restart from the state before them would make that
    same call (see the module)."""
    return len(events) == 1 and isinstance(events[0], TransferReserved | TransferCredited)


def _progress(transfer: Transfer) -> tuple[int, TransferState | None, bool]:
    return transfer.version, transfer.state, transfer.credit_was_refused
