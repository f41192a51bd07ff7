"""The Transfer aggregate: its legs, states, events, the steps it asks of the accounts, and
what it decides from their answers.

A transfer moves money along one or more legs (source -> target, amount), all or none.
The protocol runs in phases, each a chain of account steps taken one account at a time,
in order, every one with the transfer id as its reference:

- HOLD: ``reserve`` the debits, one per source account (the legs' amounts summed).
- CREDIT: ``hold_credit`` on every target but the last, then ``credit`` the last. The last
  credit is the protocol's last point of refusal: once it is applied, nothing can refuse.
- SETTLE: ``confirm_credit`` the held credits, ``capture`` the holds.
- UNDO: after a refusal, ``cancel_credit`` and ``release`` whatever was placed; a void or
  an expiry of a pending transfer releases its holds.

A simple transfer is the one-leg case: reserve, credit, capture. A pending transfer stops
after HOLD (state PENDING) until it is posted (CREDIT and SETTLE, possibly for less:
``capture`` then releases the rest), voided or expired (UNDO).

The account side answers every step finally (a refused step is refused again to every
repeat; a hold is never placed twice), so any chain can be sent again from the last record
and gets the same answers. ``decide`` turns the answers to a chain into events; records
are only needed where a choice is made (a refusal before its undo, a post or void before
it runs) and where the transfer ends or comes to rest.

Nothing here does I/O or reads a clock: times arrive with the events, from the store.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from transfer_service.domain.errors import (
    ExceedsPendingAmount,
    ExceedsReversibleAmount,
    PartialPostOfLegs,
    PartialReversalOfLegs,
    TransferAlreadyExists,
    TransferNotCompleted,
    TransferNotPending,
)
from transfer_service.domain.events import (
    HoldExpired,
    Leg,
    PostRequested,
    ReversalReserved,
    ReversalSettled,
    TransferCompleted,
    TransferCredited,
    TransferEvent,
    TransferExpired,
    TransferFailed,
    TransferRefused,
    TransferRequested,
    TransferReserved,
    TransferVoided,
    VoidRequested,
    requested,
)
from transfer_service.domain.steps import (
    AccountStep,
    Action,
    Answer,
    Fenced,
    Phase,
    Refused,
    Undecided,
)

_UNIX = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class TransferState(enum.Enum):
    REQUESTED = "REQUESTED"
    RESERVED = "RESERVED"
    CREDITED = "CREDITED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    PENDING = "PENDING"
    VOIDED = "VOIDED"
    EXPIRED = "EXPIRED"


_TERMINAL = frozenset(
    {
        TransferState.COMPLETED,
        TransferState.FAILED,
        TransferState.VOIDED,
        TransferState.EXPIRED,
    }
)
_ENDS = {
    TransferState.FAILED: TransferFailed,
    TransferState.VOIDED: TransferVoided,
    TransferState.EXPIRED: TransferExpired,
}


@dataclass(frozen=True, slots=True)
class Undo:
    """What an undo releases, and how the transfer ends once it has."""

    phase: Phase  # the phase that was under way: HOLD undoes part of the holds
    placed: int  # steps of that phase that took effect
    ends: TransferState  # FAILED, VOIDED or EXPIRED


def _summed(pairs: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    totals: dict[str, int] = {}
    for account_id, amount in pairs:
        totals[account_id] = totals.get(account_id, 0) + amount
    return list(totals.items())


def micros(value: datetime) -> int:
    """Microseconds since the Unix epoch."""
    return (value - _UNIX) // _MICROSECOND


# --- the aggregate ----------------------------------------------------------------------


@dataclass
class Transfer:
    transfer_id: str
    legs: tuple[Leg, ...] = ()
    from_account_id: str = ""
    to_account_id: str = ""
    amount: int = 0
    currency: str = ""
    state: TransferState | None = None
    failure_reason: str = ""
    pending: bool = False
    expires_after: int = 0  # microseconds
    metadata: dict[str, str] = field(default_factory=dict)
    reverses_transfer_id: str = ""
    reason: str = ""
    # The amount a post is moving (or moved); 0 until a post is decided.
    post_amount: int = 0
    posted_amount: int = 0
    # What its COMPLETED reversals took back, and what reversals under way set aside.
    reversed_amount: int = 0
    reversals: dict[str, int] = field(default_factory=dict)
    undo: Undo | None = None
    # The request as recorded: a repeat must carry the very same contents.
    requested: TransferRequested | None = None
    version: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def empty(cls, transfer_id: str) -> Transfer:
        return cls(transfer_id=transfer_id)

    @classmethod
    def from_events(
        cls,
        transfer_id: str,
        events_with_times: Iterable[tuple[TransferEvent, datetime | None]],
    ) -> Transfer:
        transfer = cls.empty(transfer_id)
        for event, at in events_with_times:
            transfer.apply(event, at)
        return transfer

    # --- folding ---

    def apply(self, event: TransferEvent, at: datetime | None = None) -> None:
        """Fold one recorded event into the state. Recorded facts are not re-validated."""
        match event:
            case TransferRequested():
                self._requested(event)
                if at is not None:
                    self.created_at = at
            case TransferReserved(currency):
                self.currency = currency
                self.state = TransferState.PENDING if self.pending else TransferState.RESERVED
            case PostRequested(amount):
                self.post_amount = amount
                self.state = TransferState.RESERVED
            case VoidRequested():
                self.undo = Undo(Phase.HOLD, len(self.sources), TransferState.VOIDED)
            case HoldExpired():
                self.undo = Undo(Phase.HOLD, len(self.sources), TransferState.EXPIRED)
            case TransferCredited():
                self.state = TransferState.CREDITED
            case TransferRefused(reason, phase, placed):
                self.failure_reason = reason
                self.undo = Undo(Phase(phase), placed, TransferState.FAILED)
            case TransferCompleted():
                self.state = TransferState.COMPLETED
                self.posted_amount = self.post_amount or self.amount
            case TransferFailed(reason):
                self.failure_reason = reason
                self.state = TransferState.FAILED
                self.undo = None
            case TransferVoided():
                self.state = TransferState.VOIDED
                self.undo = None
            case TransferExpired():
                self.state = TransferState.EXPIRED
                self.undo = None
            case ReversalReserved(reversal_id, amount):
                self.reversals[reversal_id] = amount
            case ReversalSettled(reversal_id, completed):
                amount = self.reversals.pop(reversal_id, 0)
                if completed:
                    self.reversed_amount += amount
            case _:
                raise TypeError(f"not a transfer event: {event!r}")
        self.version += 1
        if at is not None:
            self.updated_at = at

    def _requested(self, event: TransferRequested) -> None:
        self.requested = event
        self.transfer_id = event.transfer_id
        if event.legs:
            self.legs = tuple(Leg(str(f), str(t), int(a)) for f, t, a in event.legs)
        else:
            self.legs = (Leg(event.from_account_id, event.to_account_id, event.amount),)
        self.from_account_id = event.from_account_id
        self.to_account_id = event.to_account_id
        self.amount = event.amount
        self.pending = event.pending
        self.expires_after = event.expires_after
        self.metadata = dict(event.metadata)
        self.reverses_transfer_id = event.reverses_transfer_id
        self.reason = event.reason
        self.state = TransferState.REQUESTED

    # --- queries ---

    @property
    def is_terminal(self) -> bool:
        return self.state in _TERMINAL

    @property
    def at_rest(self) -> bool:
        """Nothing to do until a client (or the clock) decides: a pending hold."""
        return self.state is TransferState.PENDING and self.undo is None

    @property
    def is_simple(self) -> bool:
        return len(self.legs) == 1

    @property
    def expires_at(self) -> datetime | None:
        if not self.expires_after or self.created_at is None:
            return None
        return self.created_at + timedelta(microseconds=self.expires_after)

    @property
    def sources(self) -> list[tuple[str, int]]:
        """Each source account once, in leg order, with what it pays."""
        if len(self.legs) == 1:
            return [(self.legs[0].from_account_id, self.legs[0].amount)]
        return _summed((leg.from_account_id, leg.amount) for leg in self.legs)

    @property
    def targets(self) -> list[tuple[str, int]]:
        """Each target account once, in leg order, with what it receives."""
        if self.post_amount and self.post_amount != self.amount:
            # Only a one-leg transfer is posted for less than its amount.
            return [(self.legs[0].to_account_id, self.post_amount)]
        if len(self.legs) == 1:
            return [(self.legs[0].to_account_id, self.legs[0].amount)]
        return _summed((leg.to_account_id, leg.amount) for leg in self.legs)

    @property
    def accounts(self) -> set[str]:
        return {a for leg in self.legs for a in (leg.from_account_id, leg.to_account_id)}

    def matches(self, request: TransferRequested) -> bool:
        """Whether a request carries the same contents as the one that created this one."""
        return self.requested is not None and self.requested == request

    # --- what to ask of the accounts next ---

    def next_steps(self) -> list[tuple[Phase, list[AccountStep]]]:
        """The phases to run next, as one chain (each step only after the one before took
        effect); empty when the transfer has ended or rests."""
        if self.state is None or self.is_terminal:
            return []
        if self.undo is not None:
            return [(Phase.UNDO, self._undo_steps(self.undo))]
        match self.state:
            case TransferState.REQUESTED if self.pending:
                return [(Phase.HOLD, self._hold_steps(self.sources))]
            case TransferState.REQUESTED:
                sources, targets = self.sources, self.targets
                return [
                    (Phase.HOLD, self._hold_steps(sources)),
                    (Phase.CREDIT, self._credit_steps(targets)),
                    (Phase.SETTLE, self._settle_steps(sources, targets)),
                ]
            case TransferState.RESERVED:
                sources, targets = self.sources, self.targets
                return [
                    (Phase.CREDIT, self._credit_steps(targets)),
                    (Phase.SETTLE, self._settle_steps(sources, targets)),
                ]
            case TransferState.CREDITED:
                return [(Phase.SETTLE, self._settle_steps(self.sources, self.targets))]
            case _:
                return []

    def _hold_steps(self, sources: list[tuple[str, int]]) -> list[AccountStep]:
        expires = self.expires_at
        expires_at = micros(expires) if expires is not None else 0
        owner = self.requested.owner if self.requested is not None else ""
        return [AccountStep(Action.RESERVE, a, amount, expires_at, owner) for a, amount in sources]

    @staticmethod
    def _credit_steps(targets: list[tuple[str, int]]) -> list[AccountStep]:
        steps = [AccountStep(Action.HOLD_CREDIT, a, n) for a, n in targets[:-1]]
        last, amount = targets[-1]
        steps.append(AccountStep(Action.CREDIT, last, amount))
        return steps

    def _settle_steps(
        self, sources: list[tuple[str, int]], targets: list[tuple[str, int]]
    ) -> list[AccountStep]:
        partial = self.post_amount if self.post_amount != self.amount else 0
        steps = [AccountStep(Action.CONFIRM_CREDIT, a) for a, _ in targets[:-1]]
        steps.extend([AccountStep(Action.CAPTURE, a, partial) for a, _ in sources])
        return steps

    def _undo_steps(self, undo: Undo) -> list[AccountStep]:
        sources = self.sources
        if undo.phase is Phase.HOLD:
            return [AccountStep(Action.RELEASE, a) for a, _ in sources[: undo.placed]]
        *held, _ = self.targets
        return [
            *(AccountStep(Action.CANCEL_CREDIT, a) for a, _ in held[: undo.placed]),
            *(AccountStep(Action.RELEASE, a) for a, _ in sources),
        ]

    # --- decisions ---

    def decide(
        self, chain: Sequence[tuple[Phase, Sequence[AccountStep]]], answers: Sequence[Answer]
    ) -> tuple[list[TransferEvent], Answer | None]:
        """The events the answers to ``chain`` (a prefix of it, in order) call for, and the
        answer that held the transfer up, if one did: ``Undecided`` or ``Fenced``, or a
        ``Refused`` where the protocol rules a refusal out."""
        events: list[TransferEvent] = []
        given = iter(answers)
        currency = self.currency
        for phase, steps in chain:
            for placed, _ in enumerate(steps):
                answer = next(given, None)
                if answer is None:
                    return events, Undecided("not answered")
                if isinstance(answer, Undecided | Fenced):
                    return events, answer
                if isinstance(answer, Refused):
                    return self._refused(events, phase, placed, answer, currency)
                if phase is Phase.HOLD and not currency:
                    currency = answer.currency
            events.append(self._phase_done(phase, currency))
        return events, None

    def _phase_done(self, phase: Phase, currency: str) -> TransferEvent:
        match phase:
            case Phase.HOLD:
                return TransferReserved(currency)
            case Phase.CREDIT:
                return TransferCredited()
            case Phase.SETTLE:
                return TransferCompleted()
            case Phase.UNDO:
                assert self.undo is not None
                if self.undo.ends is TransferState.FAILED:
                    return TransferFailed(self.failure_reason)
                return _ENDS[self.undo.ends]()

    def _refused(
        self,
        events: list[TransferEvent],
        phase: Phase,
        placed: int,
        refused: Refused,
        currency: str,
    ) -> tuple[list[TransferEvent], Answer | None]:
        if phase in (Phase.SETTLE, Phase.UNDO):
            # Every hold settled here was placed by this transfer: a refusal means the two
            # services disagree. The transfer stays unfinished, visibly, until repaired.
            return events, refused
        if refused.reason == "RESERVATION_SETTLED":
            return self._settled_already(events, phase, refused)
        if phase is Phase.HOLD and placed == 0:
            return [*events, TransferFailed(refused.reason)], None
        return [*events, TransferRefused(refused.reason, phase.value, placed)], None

    def _settled_already(
        self, events: list[TransferEvent], phase: Phase, refused: Refused
    ) -> tuple[list[TransferEvent], Answer | None]:
        """A hold this transfer would place is settled already: the settle phase ran
        before its record (a crash in between). Only a capture or confirmation says so;
        a release is always recorded (as an undo) before it is made."""
        if refused.details.get("outcome") not in ("captured", "confirmed"):
            return events, refused
        if self.pending and self.post_amount == 0:
            return events, refused  # a pending hold is settled only after a recorded post
        if phase is Phase.HOLD:
            events.append(TransferReserved(refused.details.get("currency", self.currency)))
        return [*events, TransferCredited()], None

    # --- requests from clients ---

    def request(self, requested: TransferRequested) -> list[TransferEvent]:
        if self.state is not None:
            if self.matches(requested):
                return []
            raise TransferAlreadyExists(self.transfer_id)
        return [requested]

    def post(self, amount: int) -> list[TransferEvent]:
        """Post a pending transfer for ``amount`` (0: all of it)."""
        if self.post_amount:
            if amount == self.post_amount or (amount == 0 and self.post_amount == self.amount):
                return []  # the same post again
            raise TransferNotPending(self.transfer_id, self.state)
        if not self.at_rest:
            raise TransferNotPending(self.transfer_id, self.state)
        if amount > self.amount:
            raise ExceedsPendingAmount(self.transfer_id, self.amount, amount)
        if amount and amount != self.amount and not self.is_simple:
            raise PartialPostOfLegs(self.transfer_id)
        return [PostRequested(amount or self.amount)]

    def void(self) -> list[TransferEvent]:
        voiding = self.undo is not None and self.undo.ends is TransferState.VOIDED
        if voiding or self.state is TransferState.VOIDED:
            return []  # the same void again
        if not self.at_rest:
            raise TransferNotPending(self.transfer_id, self.state)
        return [VoidRequested()]

    @property
    def reversible(self) -> int:
        """What is left to reverse: what it moved, less what is reversed or set aside."""
        return self.posted_amount - self.reversed_amount - sum(self.reversals.values())

    def reserve_reversal(self, reversal_id: str, amount: int) -> list[TransferEvent]:
        """Sets ``amount`` (0: all that is left; a multi-leg transfer only whole) aside for
        the reversal ``reversal_id``."""
        if reversal_id in self.reversals:
            return []
        if self.state is not TransferState.COMPLETED:
            raise TransferNotCompleted(self.transfer_id, self.state)
        if not self.is_simple and (amount or self.reversible != self.posted_amount):
            if amount:
                raise PartialReversalOfLegs(self.transfer_id)
            raise ExceedsReversibleAmount(self.transfer_id, 0, self.posted_amount)
        wanted = amount or self.reversible
        if not 0 < wanted <= self.reversible:
            raise ExceedsReversibleAmount(self.transfer_id, self.reversible, wanted)
        return [ReversalReserved(reversal_id, wanted)]

    def reversal(
        self, reversal_id: str, amount: int, reason: str, owner: str = ""
    ) -> TransferRequested:
        """The request of a reversal of this transfer for ``amount``: every leg back, from
        its target to its source (a simple transfer's for ``amount``). ``owner``: the
        requesting token's, which every one of those targets must have."""
        if self.is_simple:
            (leg,) = self.legs
            back = [Leg(leg.to_account_id, leg.from_account_id, amount)]
        else:
            back = [Leg(leg.to_account_id, leg.from_account_id, leg.amount) for leg in self.legs]
        return requested(
            reversal_id, back, reverses_transfer_id=self.transfer_id, reason=reason, owner=owner
        )

    def settle_reversal(self, reversal: Transfer) -> list[TransferEvent]:
        """What this transfer records when its reversal ``reversal`` ends."""
        if reversal.transfer_id not in self.reversals:
            return []
        completed = reversal.state is TransferState.COMPLETED
        return [ReversalSettled(reversal.transfer_id, completed)]

    def expire(self, now: datetime) -> list[TransferEvent]:
        """Release the hold if its time has come; nothing otherwise."""
        expires = self.expires_at
        if not self.at_rest or expires is None or now < expires:
            return []
        return [HoldExpired()]
