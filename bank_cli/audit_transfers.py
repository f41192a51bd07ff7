"""The transfer half of ``bank audit``: each transfer's recorded history, and the account
events carrying its id, judged against the protocol (see ``bank_cli.audit_checks``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from bank_cli.audit_report import (
    AMOUNT_MISMATCH,
    CURRENCY_MISMATCH,
    ILLEGAL_TRANSITION,
    IN_TRANSIT,
    MISSING_EFFECT,
    OUT_OF_ORDER,
    REVERSAL,
    UNEXPECTED_EFFECT,
    UNREADABLE,
    WRONG_ACCOUNT,
    AuditReport,
    InFlight,
    Violation,
)
from event_store import RecordedEvent
from transfer_service import codec as transfer_codec
from transfer_service.domain import (
    HoldExpired,
    PostRequested,
    ReversalReserved,
    ReversalSettled,
    Transfer,
    TransferCompleted,
    TransferCredited,
    TransferEvent,
    TransferExpired,
    TransferFailed,
    TransferRefused,
    TransferRequested,
    TransferReserved,
    TransferState,
    TransferVoided,
    VoidRequested,
)

# The account events a transfer causes, by the part each plays (their stored type names).
RESERVE, CAPTURE, RELEASE = "Reserved", "ReservationCaptured", "ReservationReleased"
CREDIT, HOLD, CONFIRM, CANCEL = "Credited", "CreditHeld", "CreditConfirmed", "CreditCancelled"
EFFECT_TYPES = (RESERVE, HOLD, CREDIT, CONFIRM, CAPTURE, CANCEL, RELEASE)


@dataclass(frozen=True, slots=True)
class Effect:
    """An account event a transfer caused (its reference is the transfer id)."""

    account_id: str
    type: str
    amount: int
    version: int

    def describe(self) -> str:
        return f"{self.type} {self.amount} on account {self.account_id} (version {self.version})"


# The next events each situation of a transfer allows (see ``_allowed``).
_NEXT: dict[TransferState | None, tuple[type, ...]] = {
    None: (TransferRequested,),
    TransferState.REQUESTED: (TransferReserved, TransferFailed, TransferRefused),
    TransferState.RESERVED: (TransferCredited, TransferRefused),
    TransferState.PENDING: (PostRequested, VoidRequested, HoldExpired),
    TransferState.CREDITED: (TransferCompleted,),
    TransferState.COMPLETED: (ReversalReserved, ReversalSettled),
}
_UNDO_ENDS = {
    TransferState.FAILED: TransferFailed,
    TransferState.VOIDED: TransferVoided,
    TransferState.EXPIRED: TransferExpired,
}


@dataclass
class TransferAudit:
    transfer: Transfer
    broken: bool = False
    # Its reversals as it recorded them: id -> (amount set aside, how it ended or None).
    reversals: dict[str, tuple[int, bool | None]] = field(default_factory=dict)


def _allowed(transfer: Transfer, event: TransferEvent) -> bool:
    """Whether the protocol lets ``event`` follow the transfer as it stands."""
    if transfer.undo is not None:
        allowed: tuple[type, ...] = (_UNDO_ENDS[transfer.undo.ends],)
    else:
        allowed = _NEXT.get(transfer.state, ())
    if not isinstance(event, allowed):
        return False
    match event:
        case TransferRefused(phase=phase):
            expected = "hold" if transfer.state is TransferState.REQUESTED else "credit"
            return phase == expected
        case TransferFailed(reason) if transfer.undo is not None:
            return reason == transfer.failure_reason
        case PostRequested(amount):
            return 0 < amount <= transfer.amount
        case ReversalReserved(reversal_id, amount):
            return reversal_id not in transfer.reversals and 0 < amount <= transfer.reversible
        case ReversalSettled(reversal_id):
            return reversal_id in transfer.reversals
    return True


def read_transfers(
    streams: dict[str, list[RecordedEvent]], report: AuditReport
) -> dict[str, TransferAudit]:
    audited: dict[str, TransferAudit] = {}
    for transfer_id, recorded in streams.items():
        entry = audited[transfer_id] = TransferAudit(Transfer.empty(transfer_id))
        subject = f"transfer {transfer_id}"
        for stored in recorded:
            transfer = entry.transfer
            if stored.version != transfer.version + 1:
                report.violations.append(
                    Violation(
                        OUT_OF_ORDER,
                        subject,
                        f"version {stored.version} follows version {transfer.version}",
                    )
                )
            try:
                event = transfer_codec.decode(stored.type, stored.data)
            except ValueError as exc:
                report.violations.append(
                    Violation(UNREADABLE, subject, f"version {stored.version}: {exc}")
                )
                entry.broken = True
                break
            if isinstance(event, TransferRequested) and event.transfer_id != transfer_id:
                report.violations.append(
                    Violation(
                        ILLEGAL_TRANSITION,
                        subject,
                        f"TransferRequested names transfer {event.transfer_id}",
                    )
                )
            elif not _allowed(transfer, event):
                report.violations.append(
                    Violation(
                        ILLEGAL_TRANSITION,
                        subject,
                        f"version {stored.version}: {stored.type} is not a legal next event"
                        f" after {_state_label(transfer)}",
                    )
                )
            if isinstance(event, ReversalReserved):
                entry.reversals[event.reversal_id] = (event.amount, None)
            elif isinstance(event, ReversalSettled) and event.reversal_id in entry.reversals:
                amount, _ = entry.reversals[event.reversal_id]
                entry.reversals[event.reversal_id] = (amount, event.completed)
            transfer.apply(event, stored.recorded_at)
        if entry.transfer.state is None:
            entry.broken = True
    report.transfers = len(audited)
    for entry in audited.values():
        report.states[_state_label(entry.transfer)] += 1
    return audited


def _state_label(transfer: Transfer) -> str:
    if transfer.state is None:
        return "UNREQUESTED"
    if transfer.undo is not None:
        return f"{transfer.state.name} (releasing)"
    return transfer.state.name


def _plan(t: Transfer) -> dict[str, dict[str, int]]:
    """Per effect type, the account each is due on and its amount."""
    *held, (last, credited) = t.targets
    sources = t.sources
    captured = t.post_amount if t.post_amount and t.post_amount != t.amount else 0
    return {
        RESERVE: dict(sources),
        CAPTURE: {a: captured or n for a, n in sources},
        RELEASE: dict(sources),
        CREDIT: {last: credited},
        HOLD: dict(held),
        CONFIRM: dict(held),
        CANCEL: dict(held),
    }


def check_reversals(transfers: dict[str, TransferAudit], report: AuditReport) -> None:
    """Each reversal was set aside on its original, ended as the original recorded, moved
    the original's legs back, and no original is reversed beyond what it moved."""
    for reversal_id, entry in transfers.items():
        r = entry.transfer
        if entry.broken or not r.reverses_transfer_id:
            continue
        subject = f"transfer {reversal_id}"
        original = transfers.get(r.reverses_transfer_id)
        if original is None or original.broken:
            report.violations.append(
                Violation(REVERSAL, subject, f"reverses unknown transfer {r.reverses_transfer_id}")
            )
            continue
        recorded = original.reversals.get(reversal_id)
        o = original.transfer
        problems = []
        if recorded is None:
            problems.append(f"nothing was set aside for it on {o.transfer_id}")
        else:
            amount, ended = recorded
            if amount != r.amount:
                problems.append(f"{o.transfer_id} set aside {amount}, it is for {r.amount}")
            if r.is_terminal and ended != (r.state is TransferState.COMPLETED):
                problems.append(f"it is {r.state.name}, but {o.transfer_id} recorded {ended}")
            if not r.is_terminal and ended is not None:
                problems.append(f"{o.transfer_id} recorded its end, but it is under way")
        back = {(leg.to_account_id, leg.from_account_id) for leg in o.legs}
        if {(leg.from_account_id, leg.to_account_id) for leg in r.legs} != back:
            problems.append(f"its legs are not those of {o.transfer_id}, turned back")
        for problem in problems:
            report.violations.append(Violation(REVERSAL, subject, problem))
    for transfer_id, entry in transfers.items():
        t = entry.transfer
        if entry.broken or not entry.reversals:
            continue
        taken = sum(amount for amount, ended in entry.reversals.values() if ended is not False)
        if taken > t.posted_amount:
            report.violations.append(
                Violation(
                    REVERSAL,
                    f"transfer {transfer_id}",
                    f"reversed (or being reversed) for {taken}, beyond the {t.posted_amount}"
                    " it moved",
                )
            )


def check_transfers(
    transfers: dict[str, TransferAudit],
    currencies: dict[str, str],
    effects: dict[str, list[Effect]],
    report: AuditReport,
) -> None:
    check_reversals(transfers, report)
    for transfer_id, entry in transfers.items():
        if entry.broken:
            continue
        t = entry.transfer
        subject = f"transfer {transfer_id}"
        plan = _plan(t)
        # (type, account) -> times applied.
        counts: Counter[tuple[str, str]] = Counter()
        in_transit: Counter[str] = Counter()
        for effect in effects.get(transfer_id, ()):
            due = plan[effect.type]
            if effect.account_id not in due:
                report.violations.append(
                    Violation(
                        WRONG_ACCOUNT,
                        subject,
                        f"{effect.describe()}, but no leg of the transfer has it there",
                    )
                )
                continue
            if effect.type != RELEASE and effect.amount != due[effect.account_id]:
                report.violations.append(
                    Violation(
                        AMOUNT_MISMATCH,
                        subject,
                        f"{effect.describe()}, but the transfer's is {due[effect.account_id]}",
                    )
                )
            counts[effect.type, effect.account_id] += 1
            if effect.type in (CREDIT, CONFIRM, CAPTURE):
                sign = -1 if effect.type == CAPTURE else 1
                in_transit[currencies.get(effect.account_id, "unknown")] += sign * effect.amount
        for problem in _effect_problems(t, plan, counts):
            kind, detail = problem
            report.violations.append(Violation(kind, subject, detail))
        _check_currency(t, currencies, counts, subject, report)
        if t.is_terminal:
            for currency, amount in in_transit.items():
                if amount:
                    report.violations.append(
                        Violation(
                            IN_TRANSIT,
                            subject,
                            f"{_state_label(t)} but {amount} {currency} credited and not captured",
                        )
                    )
        elif not t.at_rest:
            for currency, amount in in_transit.items():
                report.totals.of(currency).in_transit += amount
            applied = tuple(kind for kind in EFFECT_TYPES if any(k == kind for k, _ in counts))
            report.in_flight.append(
                InFlight(transfer_id, _state_label(t), applied, _progress(t, applied))
            )


def _effect_problems(
    t: Transfer, plan: dict[str, dict[str, int]], counts: Counter[tuple[str, str]]
) -> list[tuple[str, str]]:
    """What is missing or too much on the account side, for the transfer's state."""
    problems: list[tuple[str, str]] = []
    label = _state_label(t)

    def count(kind: str, account_id: str) -> int:
        return counts[kind, account_id]

    def expect(kind: str, account_id: str, allowed: Iterable[int]) -> None:
        allowed = tuple(allowed)
        found = count(kind, account_id)
        if found in allowed:
            return
        problems.append(
            (
                MISSING_EFFECT if found < min(allowed) else UNEXPECTED_EFFECT,
                f"{label} but {found} {kind} on account {account_id}"
                f" (expected {' or '.join(map(str, allowed))})",
            )
        )

    sources = list(plan[RESERVE])
    held = list(plan[HOLD])
    (last,) = plan[CREDIT]
    state = t.state
    if state is TransferState.COMPLETED:
        for a in sources:
            expect(RESERVE, a, (1,))
            expect(CAPTURE, a, (1,))
            expect(RELEASE, a, (0,))
        for a in held:
            expect(HOLD, a, (1,))
            expect(CONFIRM, a, (1,))
            expect(CANCEL, a, (0,))
        expect(CREDIT, last, (1,))
    elif t.is_terminal:  # nothing moved: what was placed was undone
        for a in sources:
            expect(CAPTURE, a, (0,))
            expect(RELEASE, a, (count(RESERVE, a),))
        for a in held:
            expect(CONFIRM, a, (0,))
            expect(CANCEL, a, (count(HOLD, a),))
        expect(CREDIT, last, (0,))
    elif t.at_rest:  # a pending hold: each debit held, nothing else
        for a in sources:
            expect(RESERVE, a, (1,))
            expect(CAPTURE, a, (0,))
            expect(RELEASE, a, (0,))
        for a in held:
            expect(HOLD, a, (0,))
        expect(CREDIT, last, (0,))
    else:  # under way: a consistent part of the protocol, the account side maybe ahead
        for kind, due in plan.items():
            # An undo is recorded before it starts: no release or cancel runs ahead of it.
            undoes = kind in (RELEASE, CANCEL)
            for a in due:
                expect(kind, a, (0, 1) if t.undo is not None or not undoes else (0,))
        all_held = all(count(RESERVE, a) for a in sources)
        credits = count(CREDIT, last) + sum(count(HOLD, a) for a in held)
        settles = sum(count(k, a) for k in (CAPTURE, CONFIRM) for a in plan[k])
        if credits and not all_held:
            problems.append((OUT_OF_ORDER, f"{label} with a credit before every debit is held"))
        if settles and not count(CREDIT, last):
            problems.append((OUT_OF_ORDER, f"{label} settled before its last credit"))
        for a in sources:
            if count(RESERVE, a) < count(CAPTURE, a) + count(RELEASE, a):
                problems.append((OUT_OF_ORDER, f"{label} settles a hold on {a} never placed"))
        for a in held:
            if count(HOLD, a) < count(CONFIRM, a) + count(CANCEL, a):
                problems.append((OUT_OF_ORDER, f"{label} settles a credit on {a} never held"))
    return problems


def _check_currency(
    t: Transfer,
    currencies: dict[str, str],
    counts: Counter[tuple[str, str]],
    subject: str,
    report: AuditReport,
) -> None:
    if not t.currency:
        return
    for (kind, account_id), times in counts.items():
        currency = currencies.get(account_id)
        if times and kind in (RESERVE, CREDIT, HOLD) and currency and currency != t.currency:
            report.violations.append(
                Violation(
                    CURRENCY_MISMATCH,
                    subject,
                    f"in {t.currency}, but {kind} on account {account_id}, which holds {currency}",
                )
            )


def _progress(t: Transfer, done: Iterable[str]) -> str:
    chain = t.next_steps()
    step = chain[0][1][0].action.value if chain and chain[0][1] else "none"
    legs = "; ".join(f"{leg.amount} {leg.from_account_id}->{leg.to_account_id}" for leg in t.legs)
    return f"{legs}; applied: {', '.join(done) or 'nothing'}; next step: {step}"
