"""The transfer process: drives one transfer from its record to its end, or to rest.

The protocol itself (its phases and what each answer means) is the aggregate's
(``transfer_service.domain``). This module runs it:

1. ask the aggregate for the chain of account steps to run next;
2. send the chain to the account side in one go (``AccountsPort.run``): each step runs
   only once the one before it took effect, so the answers are a prefix of the chain;
3. ask the aggregate what the answers mean, and record that (conditional on this driver's
   ownership epoch);
4. repeat until the transfer has ended or rests (a pending hold).

From REQUESTED a simple transfer is one chain (reserve, credit, capture) and two records
in all: the request and the outcome. Since every step is answered finally on the account
side (the same answer to every repeat, from any driver), a chain can always be sent again
from the last record; the records that must come before a call are the ones that choose
between outcomes: a refusal before its undo, a post or a void before it runs.

Invariants:
- every step carries the transfer id as its reference and this driver's epoch, so the
  account side refuses steps of a driver that has been superseded;
- a transient fault (``Undecided``) is never a refusal: the chain is retried with backoff;
- a record refused because the transfer is owned by another driver (``OwnershipLost``), or
  a step fenced on the account side, stops this driver at once;
- the terminal record is stored before the outcome is returned.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from event_store import ConcurrencyConflict, LeaseLost
from transfer_service.domain import (
    AccountStep,
    Action,
    Answer,
    Applied,
    Fenced,
    HoldExpired,
    PostRequested,
    Refused,
    Transfer,
    TransferCredited,
    TransferEvent,
    TransferNotFound,
    TransferRefused,
    TransferRequested,
    TransferReserved,
    Undecided,
    VoidRequested,
)

log = logging.getLogger(__name__)


class OwnershipLost(Exception):
    """Another process owns the transfer now (its lease was taken over): stop driving it."""


# --- ports --------------------------------------------------------------------------------


class AccountsPort(Protocol):
    """The account service's side of the protocol, as the process sees it."""

    async def run(
        self, steps: Sequence[AccountStep], reference: str, epoch: int, currency: str = ""
    ) -> list[Answer]:
        """Runs ``steps`` in order, each only once the one before took effect. A step that
        names a currency (reserve, credit, hold_credit) is sent with ``currency`` for the
        first, then with the currency the step before it answered with (a reserve with none
        checks nothing). Returns the answers up to and including the first that is not
        ``Applied``."""
        ...

    def run_many(
        self, chains: Sequence[tuple[Sequence[AccountStep], str, int, str]]
    ) -> AsyncIterator[list[tuple[int, list[Answer]]]]:
        """``run`` for each ``(steps, reference, epoch, currency)``, all at once; yields
        the answers as they come (chains by index), those that came together at once."""
        ...


class TransferRepository(Protocol):
    async def load(self, transfer_id: str) -> Transfer | None: ...

    async def record(
        self, transfer: Transfer, events: Sequence[TransferEvent], epoch: int
    ) -> Transfer:
        """Append ``events`` at expected version ``transfer.version``, if the transfer is
        still owned at ``epoch``. Returns the transfer with the events applied (with the
        store's time); raises ``ConcurrencyConflict`` if another writer appended first,
        ``LeaseLost`` if another process owns the transfer now. The end of a reversal is
        recorded with its original's settling, in one transaction."""
        ...

    async def record_reversal(
        self, original: Transfer, reserved: Sequence[TransferEvent], request: TransferRequested
    ) -> Transfer:
        """In one transaction: ``reserved`` on the original and the reversal's ``request``
        (its lease created). ``ConcurrencyConflict`` if either stream moved meanwhile."""
        ...

    async def record_requests(self, requests: Sequence[TransferRequested]) -> list[Transfer]:
        """New transfers' requests (their leases created) in one transaction;
        ``ConcurrencyConflict`` if one of them exists."""
        ...

    async def record_many(
        self, records: Sequence[tuple[Transfer, Sequence[TransferEvent], int]]
    ) -> list[Transfer]:
        """``record`` for each ``(transfer, events, epoch)``, in one transaction: all
        recorded or none (raises as ``record`` does)."""
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
AFTER_RECORD_RESERVED = "after-record-reserved"
AFTER_RECORD_CREDITED = "after-record-credited"
AFTER_RECORD_REFUSED = "after-record-refused"
AFTER_RECORD_POST = "after-record-post"
AFTER_RECORD_VOID = "after-record-void"
AFTER_RECORD_EXPIRY = "after-record-expiry"
AFTER_RECORD_REVERSAL = "after-record-reversal"
# After the account side answered a step, before what it answered is recorded.
ANSWERED = {action: f"after-{action.value.replace('_', '-')}-answered" for action in Action}
AFTER_RESERVE_ANSWERED = ANSWERED[Action.RESERVE]
AFTER_CREDIT_ANSWERED = ANSWERED[Action.CREDIT]
AFTER_CAPTURE_ANSWERED = ANSWERED[Action.CAPTURE]
AFTER_RELEASE_ANSWERED = ANSWERED[Action.RELEASE]

_RECORDED = {
    TransferRequested: AFTER_RECORD_REQUESTED,
    TransferReserved: AFTER_RECORD_RESERVED,
    TransferCredited: AFTER_RECORD_CREDITED,
    TransferRefused: AFTER_RECORD_REFUSED,
    PostRequested: AFTER_RECORD_POST,
    VoidRequested: AFTER_RECORD_VOID,
    HoldExpired: AFTER_RECORD_EXPIRY,
}

POINTS = (*_RECORDED.values(), AFTER_RECORD_REVERSAL, *ANSWERED.values())


def no_op(point: str) -> None:
    return None


RetryHook = Callable[[str, str, Exception], None]


class StepHeldUp(Exception):
    """Why a step has not gone through yet, for the retry hook and operators."""


class StepUnanswered(StepHeldUp):
    """The account side did not answer (down, a deadline): the chain is sent again."""


class SettlementRefused(StepHeldUp):
    """The account side refused to settle a hold this transfer placed, which the protocol
    rules out: retried slowly until someone repairs the account side."""


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
    ) -> None:
        self._accounts = accounts
        self._repository = repository
        self._backoff = backoff
        self._crash_point = crash_point
        self._on_retry = on_retry

    async def record(
        self, transfer: Transfer, events: Sequence[TransferEvent], epoch: int
    ) -> Transfer:
        """Records ``events`` (a request, or a client's decision), then passes its crash
        points. Raises as ``TransferRepository.record`` does."""
        recorded = await self._repository.record(transfer, events, epoch)
        self._recorded(events)
        return recorded

    async def record_requests(self, requests: Sequence[TransferRequested]) -> list[Transfer]:
        """Records new transfers' requests in one transaction (``ConcurrencyConflict``, and
        none recorded, if one of them is taken)."""
        recorded = await self._repository.record_requests(requests)
        for _ in recorded:
            self._crash_point(AFTER_RECORD_REQUESTED)
        return recorded

    async def record_reversal(
        self, original: Transfer, reserved: Sequence[TransferEvent], request: TransferRequested
    ) -> Transfer:
        """Records a reversal's request with the amount its original sets aside for it."""
        reversal = await self._repository.record_reversal(original, reserved, request)
        self._crash_point(AFTER_RECORD_REVERSAL)
        return reversal

    async def drive(self, transfer: Transfer, epoch: int) -> Transfer:
        """Runs the protocol until the transfer ends or rests; returns it as recorded.

        Raises ``OwnershipLost`` when another process has taken the transfer over."""
        failures = 0
        while True:
            chain = transfer.next_steps()
            if not chain:
                return transfer
            steps = [step for _, phase in chain for step in phase]
            answers = await self._accounts.run(
                steps, transfer.transfer_id, epoch, transfer.currency
            )
            for step, answer in zip(steps, answers, strict=False):
                if isinstance(answer, Applied | Refused):
                    self._crash_point(ANSWERED[step.action])
            events, held_up = transfer.decide(chain, answers)
            if events:
                transfer = await self._record(transfer, events, epoch)
                failures = 0
            if held_up is None:
                continue
            if isinstance(held_up, Fenced):
                raise OwnershipLost(f"transfer {transfer.transfer_id}: {held_up.why}")
            step = steps[len(answers) - 1] if answers else steps[0]
            failures = await self._held_up(transfer, step, held_up, failures)

    async def drive_together(
        self, transfers: Sequence[Transfer], epoch: int
    ) -> list[Transfer | None]:
        """One pass of ``drive`` for many transfers at once: their next chains sent
        together, and what the answers call for recorded as they come, the answers that
        came together in one transaction. Each transfer as recorded after the pass, or
        None where the pass recorded nothing for it (a chain held up, or its record
        failed): ``drive`` takes those on from the store."""
        chains = [transfer.next_steps() for transfer in transfers]
        runs = [
            (n, [step for _, phase in chain for step in phase])
            for n, chain in enumerate(chains)
            if chain
        ]
        driven: list[Transfer | None] = list(transfers)
        records: list[asyncio.Task[None]] = []
        waves = self._accounts.run_many(
            [(steps, transfers[n].transfer_id, epoch, transfers[n].currency) for n, steps in runs]
        )
        try:
            async for wave in waves:
                decided = []
                for k, answers in wave:
                    n, steps = runs[k]
                    for step, answer in zip(steps, answers, strict=False):
                        if isinstance(answer, Applied | Refused):
                            self._crash_point(ANSWERED[step.action])
                    events, held_up = transfers[n].decide(chains[n], answers)
                    if events and held_up is None:
                        decided.append((n, transfers[n], events))
                    else:
                        driven[n] = None
                if decided:
                    records.append(asyncio.create_task(self._record_wave(decided, epoch, driven)))
        finally:
            await waves.aclose()
            if records:
                await asyncio.gather(*records)
        return driven

    async def _record_wave(
        self,
        decided: list[tuple[int, Transfer, list[TransferEvent]]],
        epoch: int,
        driven: list[Transfer | None],
    ) -> None:
        try:
            recorded = await self._repository.record_many(
                [(transfer, events, epoch) for _, transfer, events in decided]
            )
        except Exception as exc:  # each goes on alone, from what the store holds
            log.info("%d transfers to be recorded one by one: %s", len(decided), exc)
            for n, _, _ in decided:
                driven[n] = None
            return
        for (n, _, events), transfer in zip(decided, recorded, strict=True):
            self._recorded(events)
            driven[n] = transfer

    async def _record(
        self, transfer: Transfer, events: Sequence[TransferEvent], epoch: int
    ) -> Transfer:
        try:
            return await self.record(transfer, events, epoch)
        except LeaseLost as lost:
            raise OwnershipLost(f"transfer {transfer.transfer_id}: {lost}") from lost
        except ConcurrencyConflict:
            # Written meanwhile by a client's decision (a void racing an expiry, say): that
            # record stands, and the chain is decided again from it.
            log.info("transfer %s: recorded elsewhere first; reloading", transfer.transfer_id)
            stored = await self._repository.load(transfer.transfer_id)
            if stored is None:
                raise TransferNotFound(transfer.transfer_id) from None
            return stored

    def _recorded(self, events: Sequence[TransferEvent]) -> None:
        for event in events:
            point = _RECORDED.get(type(event))
            if point is not None:
                self._crash_point(point)

    async def _held_up(
        self, transfer: Transfer, step: AccountStep, answer: Answer, failures: int
    ) -> int:
        """Waits before the chain is tried again; returns the count of failures in a row."""
        failures += 1
        held: StepHeldUp
        if isinstance(answer, Undecided):
            why = answer.why
            held = StepUnanswered(why)
        else:
            why = f"refused: {answer}"
            held = SettlementRefused(why)
        self._notify_retry(transfer, step, held)
        if isinstance(answer, Undecided):
            delay = self._backoff.delay(failures)
            log.warning(
                "transfer %s: %s not decided (%s); retry %d in %.2fs",
                transfer.transfer_id,
                step.action.value,
                why,
                failures,
                delay,
            )
            await self._backoff.sleep(delay)
        else:
            # A hold this transfer placed was refused its settling: the two services
            # disagree. Failing the transfer would be wrong (money may have arrived), so
            # it stays unfinished and visible until someone repairs the account side.
            log.error(
                "transfer %s: %s %s, which the protocol rules out; retrying",
                transfer.transfer_id,
                step.action.value,
                why,
            )
            await self._backoff.sleep(self._backoff.maximum)
        return failures

    def _notify_retry(self, transfer: Transfer, step: AccountStep, exc: Exception) -> None:
        if self._on_retry is not None:
            self._on_retry(transfer.transfer_id, step.action.value, exc)
