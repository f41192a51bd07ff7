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

From REQUESTED the three forward calls (reserve, credit, capture) are made back to back,
each only once the one before succeeded, and everything they decided is recorded in one
append: two durable records for a whole transfer instead of four. The port may carry the
three in one message (``forward``); the account side still applies them one account at a
time, in order. Nothing new is at stake: from REQUESTED a restart makes the same calls
again, and a repeat answers as the first did (a reservation already captured included).
What the records do not yet show is what a restart would redo. A refusal or an undecided
call ends the sequence there; what was decided before it is recorded, and the protocol
goes on step by step from that record.

Records and calls overlap where that cannot change what happens. On the step-by-step
path (after a partial sequence, or with ``forward_calls=False``) RESERVED and CREDITED
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
from typing import Protocol, TypeAlias

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


Decided: TypeAlias = str | StepRefused | StepUnavailable | None
"""One forward call's result: the currency (reserve) or None (credit, capture) if it was
applied, else why not."""


async def forward(
    accounts: AccountsPort, from_account_id: str, to_account_id: str, reference: str, amount: int
) -> list[Decided]:
    """Reserve, credit (in the reserved currency), capture: each only once the one before
    succeeded. Returns the results in that order, up to and including the first that did
    not succeed. Uses the port's own ``forward`` where it has one."""
    own = getattr(accounts, "forward", None)
    if own is not None:
        return await own(from_account_id, to_account_id, reference, amount)
    return await one_by_one(accounts, from_account_id, to_account_id, reference, amount)


async def one_by_one(
    accounts: AccountsPort, from_account_id: str, to_account_id: str, reference: str, amount: int
) -> list[Decided]:
    """``forward`` as three calls, each awaited before the next is made."""
    results: list[Decided] = []
    try:
        currency = await accounts.reserve(from_account_id, reference, amount)
        results.append(currency)
        await accounts.credit(to_account_id, reference, amount, currency)
        results.append(None)
        await accounts.capture(from_account_id, reference)
        results.append(None)
    except (StepRefused, StepUnavailable) as exc:
        results.append(exc)
    return results


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
        forward_calls: bool = True,
    ) -> None:
        """``overlap_records=False`` stores every record before the next call, and
        ``forward_calls=False`` makes and records the calls from REQUESTED one at a time
        (both slower; the protocol as first written, kept to measure the difference)."""
        self._overlap = overlap_records
        self._forward = forward_calls
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
                except (StepUnavailable, StepRefused) as exc:
                    failures = await self._held_up(transfer, step, exc, failures)
                    continue
                except _Partly as partly:
                    # From REQUESTED, where no record is outstanding: store what the
                    # forward calls decided, then wait as for the call that held them up.
                    transfer = await self._record(transfer, partly.events, partly.points)
                    # A call succeeded before this one: the backoff starts afresh.
                    failures = await self._held_up(transfer, partly.step, partly.cause, 0)
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

    async def _held_up(
        self, transfer: Transfer, step: Step, exc: StepUnavailable | StepRefused, failures: int
    ) -> int:
        """Waits before the step is tried again; returns the count of failures in a row."""
        failures += 1
        self._notify_retry(transfer, step, exc)
        if isinstance(exc, StepUnavailable):
            delay = self._backoff.delay(failures)
            log.warning(
                "transfer %s: %s not decided (%s); retry %d in %.2fs",
                transfer.transfer_id,
                step.value,
                exc,
                failures,
                delay,
            )
            await self._backoff.sleep(delay)
        else:
            # Only capture and release get here. Their hold exists because this process
            # made it, so a refusal means the two services disagree. Failing the transfer
            # would be wrong (after a credit the money has already arrived), so it stays
            # non-terminal and visible until someone repairs the account side.
            log.error(
                "transfer %s: %s refused (%s), which the protocol rules out; retrying",
                transfer.transfer_id,
                step.value,
                exc,
            )
            await self._backoff.sleep(self._backoff.maximum)
        return failures

    async def _take(
        self, step: Step, transfer: Transfer
    ) -> tuple[list[TransferEvent], str | tuple[str, ...] | None]:
        """Make the step's call; return the decision to record and the points after recording it."""
        match step:
            case Step.RESERVE if self._forward:
                return await self._forward_calls(transfer)
            case Step.RESERVE:
                return await self._reserve(transfer)
            case Step.CREDIT:
                return await self._credit(transfer)
            case Step.CAPTURE:
                return await self._capture(transfer)
            case Step.RELEASE:
                return await self._release(transfer)

    async def _forward_calls(self, t: Transfer) -> tuple[list[TransferEvent], tuple[str, ...]]:
        results = await forward(
            self._accounts, t.from_account_id, t.to_account_id, t.transfer_id, t.amount
        )
        reserved = results[0]
        if isinstance(reserved, StepUnavailable):
            raise reserved  # nothing decided: the whole sequence is tried again
        self._crash_point(AFTER_RESERVE_ANSWERED)
        if isinstance(reserved, StepRefused):
            return t.failed(reserved.reason), ()
        assert isinstance(reserved, str)
        events = t.reserved(reserved)
        points = [AFTER_RECORD_RESERVED]
        decided = _decided(t, events)
        credited = results[1] if len(results) > 1 else StepUnavailable("not sent")
        if isinstance(credited, StepUnavailable):
            raise _Partly(events, tuple(points), Step.CREDIT, credited)
        self._crash_point(AFTER_CREDIT_ANSWERED)
        if isinstance(credited, StepRefused):
            # Compensation: the next step (release) is decided by this record.
            return [*events, *decided.credit_refused(credited.reason)], (
                *points,
                AFTER_RECORD_CREDIT_REFUSED,
            )
        more = decided.credited()
        events, decided = [*events, *more], _decided(decided, more)
        points.append(AFTER_RECORD_CREDITED)
        captured = results[2] if len(results) > 2 else StepUnavailable("not sent")
        if isinstance(captured, StepRefused | StepUnavailable):
            raise _Partly(events, tuple(points), Step.CAPTURE, captured)
        self._crash_point(AFTER_CAPTURE_ANSWERED)
        return [*events, *decided.completed()], tuple(points)

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
        self,
        transfer: Transfer,
        events: list[TransferEvent],
        point: str | tuple[str, ...] | None,
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
        for each in (point,) if isinstance(point, str) else point or ():
            self._crash_point(each)
        return recorded

    def _notify_retry(self, transfer: Transfer, step: Step, exc: Exception) -> None:
        if self._on_retry is not None:
            self._on_retry(transfer.transfer_id, step.value, exc)


class _Partly(Exception):
    """The forward calls stopped undecided (or refused, where that is ruled out) after
    deciding ``events``: record those, then retry ``step`` after the usual wait."""

    def __init__(
        self,
        events: list[TransferEvent],
        points: tuple[str, ...],
        step: Step,
        cause: StepUnavailable | StepRefused,
    ) -> None:
        super().__init__(f"{step.value}: {cause}")
        self.events, self.points, self.step, self.cause = events, points, step, cause


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
