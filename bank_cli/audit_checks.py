"""The checks behind ``bank audit``: both services' stored histories, judged against each other.

``audit(account_events, transfer_events)`` is pure: it takes the recorded events of the
account store and of the transfer store and returns an ``AuditReport``. It re-derives every
account from its events with the account aggregate (ignoring the running balances stored
with them, which it checks instead), re-derives every transfer with the transfer aggregate,
and then checks that the two sides tell the same story:

* per account: the stored running balances match the fold after every event; available
  never goes below zero; a reference is applied at most once per kind of event; a capture
  or release settles a hold that is open, for its amount; no event follows the closing;
  no hold stays open for a transfer that has ended.
* per transfer: the reservation, credit, capture and release carrying its id are exactly
  those its state allows, on the right accounts, for its amount. Transfers that have not
  ended are listed as in flight; their effects must still fit their state (a step may have
  been answered without its outcome being recorded yet, so one step ahead is allowed, and
  on the forward path two: the credit or the capture goes out while the previous step's
  record is being written), and effects must follow the protocol's order (no credit
  without the reservation, no capture without the credit).
* for the bank, in each currency on its own: the sum of balances equals deposits -
  withdrawals + credits - captures, and credits - captures (money that reached a target
  but has not left its source yet) equals what the in-flight transfers account for.

The report's types are in ``bank_cli.audit_report``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from account_service import codec as account_codec
from account_service.application import STREAM_PREFIX as ACCOUNT_PREFIX
from account_service.domain import (
    Account,
    AccountClosed,
    AccountOpened,
    Credited,
    Deposited,
    ReservationCaptured,
    ReservationReleased,
    Reserved,
    Withdrawn,
)
from bank_cli.audit_report import AuditReport, InFlight, Violation
from event_store import RecordedEvent
from shared_kernel.errors import DomainError
from transfer_service import codec as transfer_codec
from transfer_service.domain import (
    CreditRefused,
    InvalidTransition,
    Transfer,
    TransferCompleted,
    TransferCredited,
    TransferEvent,
    TransferFailed,
    TransferRequested,
    TransferReserved,
    TransferState,
)
from transfer_service.repository import STREAM_PREFIX as TRANSFER_PREFIX

# --- violation kinds -----------------------------------------------------------------------

UNREADABLE = "unreadable-event"
OUT_OF_ORDER = "out-of-order"
RUNNING_BALANCE = "running-balance-mismatch"
NEGATIVE_AVAILABLE = "negative-available"
DUPLICATE_REFERENCE = "duplicate-reference"
SETTLED_WITHOUT_HOLD = "settled-without-hold"
HOLD_LEFT_OPEN = "hold-left-open"
UNKNOWN_TRANSFER = "unknown-transfer"
ILLEGAL_TRANSITION = "illegal-transition"
WRONG_ACCOUNT = "wrong-account"
MISSING_EFFECT = "missing-effect"
UNEXPECTED_EFFECT = "unexpected-effect"
AMOUNT_MISMATCH = "amount-mismatch"
CURRENCY_MISMATCH = "currency-mismatch"
CONSERVATION = "conservation"
IN_TRANSIT = "in-transit-mismatch"

_RUNNING_FIELDS = ("balance_after", "reserved_after")

# The account events a transfer causes, by the part each plays.
_RESERVE, _CAPTURE, _RELEASE, _CREDIT = (
    Reserved.__name__,
    ReservationCaptured.__name__,
    ReservationReleased.__name__,
    Credited.__name__,
)
_EFFECT_TYPES = (_RESERVE, _CREDIT, _CAPTURE, _RELEASE)
_ON_SOURCE = frozenset({_RESERVE, _CAPTURE, _RELEASE})


# --- the audit -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Effect:
    """An account event a transfer caused (its reference is the transfer id)."""

    account_id: str
    type: str
    amount: int
    version: int

    def describe(self) -> str:
        return f"{self.type} {self.amount} on account {self.account_id} (version {self.version})"


@dataclass
class _AccountAudit:
    account: Account
    currency: str = ""
    broken: bool = False  # an unreadable event: the fold after it proves nothing
    closed_at: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)
    last_balance: int = 0


@dataclass
class _TransferAudit:
    transfer: Transfer
    broken: bool = False


def audit(
    account_events: Iterable[RecordedEvent], transfer_events: Iterable[RecordedEvent]
) -> AuditReport:
    """Checks the account store's events against the transfer store's; see the module doc."""
    report = AuditReport()
    transfers = _transfers(_by_stream(transfer_events, report, "transfer"), report)
    effects: dict[str, list[_Effect]] = defaultdict(list)
    accounts = _accounts(_by_stream(account_events, report, "account"), report, effects)
    _check_transfers(transfers, accounts, effects, report)
    _check_accounts(transfers, accounts, effects, report)
    _check_bank(report)
    return report


def _by_stream(
    events: Iterable[RecordedEvent], report: AuditReport, kind: str
) -> dict[str, list[RecordedEvent]]:
    prefix = ACCOUNT_PREFIX if kind == "account" else TRANSFER_PREFIX
    streams: dict[str, list[RecordedEvent]] = defaultdict(list)
    for event in events:
        if kind == "account":
            report.account_events += 1
        else:
            report.transfer_events += 1
        if not event.stream_id.startswith(prefix):
            report.violations.append(
                Violation(
                    UNREADABLE,
                    f"stream {event.stream_id}",
                    f"not a {kind} stream, in the {kind} store (position {event.position})",
                )
            )
            continue
        streams[event.stream_id.removeprefix(prefix)].append(event)
    for stream in streams.values():
        stream.sort(key=lambda e: e.version)
    return streams


# --- transfers ---


def _legal(transfer: Transfer, event: TransferEvent) -> bool:
    """Whether the aggregate, in this state, would have decided exactly this event."""
    try:
        match event:
            case TransferRequested():
                decided = transfer.request(event.from_account_id, event.to_account_id, event.amount)
            case TransferReserved():
                decided = transfer.reserved(event.currency)
            case TransferCredited():
                decided = transfer.credited()
            case CreditRefused():
                decided = transfer.credit_refused(event.reason)
            case TransferCompleted():
                decided = transfer.completed()
            case TransferFailed():
                decided = transfer.failed(event.reason)
            case _:
                return False
    except (InvalidTransition, DomainError):
        return False
    return decided == [event]


def _transfers(
    streams: dict[str, list[RecordedEvent]], report: AuditReport
) -> dict[str, _TransferAudit]:
    audited: dict[str, _TransferAudit] = {}
    for transfer_id, recorded in streams.items():
        entry = audited[transfer_id] = _TransferAudit(Transfer.empty(transfer_id))
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
            elif not _legal(transfer, event):
                report.violations.append(
                    Violation(
                        ILLEGAL_TRANSITION,
                        subject,
                        f"version {stored.version}: {stored.type} is not a legal next event"
                        f" after {_state_label(transfer)}",
                    )
                )
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
    if transfer.state is TransferState.RESERVED and transfer.credit_was_refused:
        return "RESERVED (releasing)"
    return transfer.state.name


# Per state: for each effect, the counts that state allows. A non-terminal state allows the
# effect of its next step as well, because that step may be answered and not yet recorded.
# REQUESTED allows all three forward effects (reserve, credit, capture are made back to back
# and recorded together), RESERVED the capture as well (CREDITED is written while the
# capture is on its way); see ``transfer_service.process``.
_ALLOWED: dict[str, dict[str, tuple[int, ...]]] = {
    "REQUESTED": {_RESERVE: (0, 1), _CREDIT: (0, 1), _CAPTURE: (0, 1), _RELEASE: (0,)},
    "RESERVED": {_RESERVE: (1,), _CREDIT: (0, 1), _CAPTURE: (0, 1), _RELEASE: (0,)},
    "RESERVED (releasing)": {_RESERVE: (1,), _CREDIT: (0,), _CAPTURE: (0,), _RELEASE: (0, 1)},
    "CREDITED": {_RESERVE: (1,), _CREDIT: (1,), _CAPTURE: (0, 1), _RELEASE: (0,)},
    "COMPLETED": {_RESERVE: (1,), _CREDIT: (1,), _CAPTURE: (1,), _RELEASE: (0,)},
    "FAILED (reserved)": {_RESERVE: (1,), _CREDIT: (0,), _CAPTURE: (0,), _RELEASE: (1,)},
    "FAILED": {_RESERVE: (0,), _CREDIT: (0,), _CAPTURE: (0,), _RELEASE: (0,)},
}

# The effect each effect presupposes, in the protocol's order.
_REQUIRES = {_CREDIT: _RESERVE, _CAPTURE: _CREDIT, _RELEASE: _RESERVE}


def _check_transfers(
    transfers: dict[str, _TransferAudit],
    accounts: dict[str, _AccountAudit],
    effects: dict[str, list[_Effect]],
    report: AuditReport,
) -> None:
    for transfer_id, entry in transfers.items():
        if entry.broken:
            continue
        t = entry.transfer
        subject = f"transfer {transfer_id}"
        label = _state_label(t)
        rule = label
        if t.state is TransferState.FAILED and t.was_reserved:
            rule = "FAILED (reserved)"
        counts: Counter[str] = Counter()
        # Credited minus captured, per currency of the account it happened on.
        in_transit: Counter[str] = Counter()
        for effect in effects.get(transfer_id, ()):
            right = t.from_account_id if effect.type in _ON_SOURCE else t.to_account_id
            role = "source" if effect.type in _ON_SOURCE else "target"
            if effect.account_id != right:
                report.violations.append(
                    Violation(
                        WRONG_ACCOUNT,
                        subject,
                        f"{effect.describe()}, but its {role} is account {right}",
                    )
                )
                continue
            if effect.amount != t.amount:
                report.violations.append(
                    Violation(
                        AMOUNT_MISMATCH,
                        subject,
                        f"{effect.describe()}, but the transfer is for {t.amount}",
                    )
                )
            counts[effect.type] += 1
            if effect.type in (_CREDIT, _CAPTURE):
                sign = 1 if effect.type == _CREDIT else -1
                in_transit[_currency_of(accounts, effect.account_id)] += sign * effect.amount
        for effect_type, allowed in _ALLOWED[rule].items():
            found = counts[effect_type]
            if found in allowed:
                continue
            account = t.from_account_id if effect_type in _ON_SOURCE else t.to_account_id
            kind = MISSING_EFFECT if found < min(allowed) else UNEXPECTED_EFFECT
            report.violations.append(
                Violation(
                    kind,
                    subject,
                    f"{label} but {found} {effect_type} on account {account}"
                    f" (expected {' or '.join(map(str, allowed))})",
                )
            )
        for effect_type, before in _REQUIRES.items():
            if counts[effect_type] and not counts[before]:
                report.violations.append(
                    Violation(
                        OUT_OF_ORDER,
                        subject,
                        f"{label} with {effect_type} but no {before}",
                    )
                )
        _check_currency(t, accounts, counts, subject, report)
        if not t.is_terminal:
            for currency, amount in in_transit.items():
                report.totals.of(currency).in_transit += amount
            applied_types = tuple(name for name in _EFFECT_TYPES if counts[name])
            report.in_flight.append(
                InFlight(transfer_id, label, applied_types, _progress(t, applied_types))
            )


def _check_currency(
    t: Transfer,
    accounts: dict[str, _AccountAudit],
    counts: Counter[str],
    subject: str,
    report: AuditReport,
) -> None:
    if not t.currency:
        return
    checks = [("source", t.from_account_id, counts[_RESERVE])]
    checks.append(("target", t.to_account_id, counts[_CREDIT]))
    for role, account_id, touched in checks:
        account = accounts.get(account_id)
        if touched and account is not None and account.currency != t.currency:
            report.violations.append(
                Violation(
                    CURRENCY_MISMATCH,
                    subject,
                    f"reserved in {t.currency}, but its {role} account {account_id}"
                    f" holds {account.currency}",
                )
            )


def _progress(t: Transfer, done: Sequence[str]) -> str:
    step = t.next_step.value if t.next_step is not None else "none"
    return (
        f"{t.amount} from {t.from_account_id} to {t.to_account_id};"
        f" applied: {', '.join(done) or 'nothing'}; next step: {step}"
    )


# --- accounts ---


def _accounts(
    streams: dict[str, list[RecordedEvent]],
    report: AuditReport,
    effects: dict[str, list[_Effect]],
) -> dict[str, _AccountAudit]:
    audited: dict[str, _AccountAudit] = {}
    for account_id, recorded in streams.items():
        entry = audited[account_id] = _AccountAudit(Account.empty(account_id))
        for stored in recorded:
            if not _fold_account_event(entry, account_id, stored, report, effects):
                entry.broken = True
                break
    report.accounts = len(audited)
    return audited


def _fold_account_event(
    entry: _AccountAudit,
    account_id: str,
    stored: RecordedEvent,
    report: AuditReport,
    effects: dict[str, list[_Effect]],
) -> bool:
    """Checks and folds one event; False if it cannot be read (the fold stops there)."""
    account = entry.account
    subject = f"account {account_id}"
    at = f"version {stored.version}"

    def violation(kind: str, detail: str) -> None:
        report.violations.append(Violation(kind, subject, f"{at}: {detail}"))

    if stored.version != account.version + 1:
        violation(OUT_OF_ORDER, f"follows version {account.version}")
    data = {k: v for k, v in stored.data.items() if k not in _RUNNING_FIELDS}
    try:
        event = account_codec.decode(stored.type, data)
    except ValueError as exc:
        violation(UNREADABLE, str(exc))
        return False
    if isinstance(event, AccountOpened) != (account.version == 0):
        violation(
            OUT_OF_ORDER,
            f"{stored.type} {'before' if account.version == 0 else 'after'} the account was opened",
        )
    if entry.closed_at:
        violation(OUT_OF_ORDER, f"{stored.type} after AccountClosed at version {entry.closed_at}")

    reference = getattr(event, "reference", None)
    amount = getattr(event, "amount", 0)
    if reference is not None:
        key = (stored.type, reference)
        if key in entry.seen:
            violation(DUPLICATE_REFERENCE, f"{stored.type} with reference {reference!r} again")
        entry.seen.add(key)
    if isinstance(event, ReservationCaptured | ReservationReleased):
        hold = account.holds.get(event.reference)
        if hold is None:
            violation(SETTLED_WITHOUT_HOLD, f"{stored.type} of {reference!r}, which holds nothing")
        elif hold.amount != event.amount:
            violation(
                AMOUNT_MISMATCH,
                f"{stored.type} {event.amount} of {reference!r}, which holds {hold.amount}",
            )

    account.apply(event, stored.recorded_at)

    match event:
        case AccountOpened():
            entry.currency = event.currency
        case AccountClosed():
            entry.closed_at = stored.version
        case Deposited():
            report.totals.of(_currency(entry)).deposits += event.amount
        case Withdrawn():
            report.totals.of(_currency(entry)).withdrawals += event.amount
        case Credited():
            report.totals.of(_currency(entry)).credits += event.amount
        case ReservationCaptured():
            report.totals.of(_currency(entry)).captures += event.amount
    if stored.type in _EFFECT_TYPES:
        assert reference is not None
        effects[reference].append(_Effect(account_id, stored.type, amount, stored.version))

    stored_balance = stored.data.get("balance_after")
    stored_reserved = stored.data.get("reserved_after")
    if stored_balance != account.balance or stored_reserved != account.reserved:
        violation(
            RUNNING_BALANCE,
            f"stored balance_after={stored_balance} reserved_after={stored_reserved},"
            f" the events add up to balance {account.balance} reserved {account.reserved}",
        )
    if isinstance(stored_balance, int):
        entry.last_balance = stored_balance
    if account.available < 0:
        violation(
            NEGATIVE_AVAILABLE,
            f"available {account.available} (balance {account.balance},"
            f" reserved {account.reserved}) after {stored.type} {amount}",
        )
    return True


def _check_accounts(
    transfers: dict[str, _TransferAudit],
    accounts: dict[str, _AccountAudit],
    effects: dict[str, list[_Effect]],
    report: AuditReport,
) -> None:
    for account_id, entry in accounts.items():
        money = report.totals.of(_currency(entry))
        money.balances += entry.last_balance
        money.reserved += entry.account.reserved
        money.open_holds += len(entry.account.holds)
        for reference, hold in entry.account.holds.items():
            known = transfers.get(reference)
            if known is not None and known.transfer.is_terminal:
                report.violations.append(
                    Violation(
                        HOLD_LEFT_OPEN,
                        f"account {account_id}",
                        f"hold of {hold.amount} still open for transfer {reference},"
                        f" which is {known.transfer.state.name}",
                    )
                )
    for reference, caused in effects.items():
        if reference in transfers:
            continue
        for effect in caused:
            report.violations.append(
                Violation(
                    UNKNOWN_TRANSFER,
                    f"account {effect.account_id}",
                    f"{effect.describe()} with reference {reference!r},"
                    " which is no recorded transfer",
                )
            )


# --- the bank ---


def _check_bank(report: AuditReport) -> None:
    for currency, t in sorted(report.totals.currencies.items()):
        if t.balances != t.expected_balances:
            report.violations.append(
                Violation(
                    CONSERVATION,
                    "bank",
                    f"{currency}: balances sum to {t.balances}, but deposits {t.deposits}"
                    f" - withdrawals {t.withdrawals} + credits {t.credits} - captures"
                    f" {t.captures} = {t.expected_balances}",
                )
            )
        if t.credits != t.captures + t.in_transit:
            report.violations.append(
                Violation(
                    IN_TRANSIT,
                    "bank",
                    f"{currency}: credits {t.credits} - captures {t.captures}"
                    f" = {t.credits - t.captures} in transit, but in-flight transfers"
                    f" account for {t.in_transit}",
                )
            )


# An account whose opening could not be read: its money is counted apart.
_UNKNOWN_CURRENCY = "unknown"


def _currency(entry: _AccountAudit) -> str:
    return entry.currency or _UNKNOWN_CURRENCY


def _currency_of(accounts: dict[str, _AccountAudit], account_id: str) -> str:
    entry = accounts.get(account_id)
    return _currency(entry) if entry is not None else _UNKNOWN_CURRENCY
