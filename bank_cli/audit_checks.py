"""The checks behind ``bank audit``: both services' stored histories, judged against each other.

``audit(account_events, transfer_events)`` is pure: it takes the recorded events of the
account store and of the transfer store and returns an ``AuditReport``. It re-derives every
account from its events with the account aggregate (ignoring the running balances stored
with them, which it checks instead), re-derives every transfer with the transfer aggregate,
and then checks that the two sides tell the same story:

* per account: the stored running balances match the fold after every event; a debit
  (withdrawal, reservation) never takes ``available`` below zero; a reference is applied at
  most once per kind of event; a capture, release, confirmation or cancellation settles a
  hold that is open (a release, confirmation or cancellation for its amount, a capture for
  at most it); nothing but a step's stored refusal comes before the opening or after the
  closing; no hold or held credit stays open for a transfer that has ended.
* per transfer: its history is one the protocol allows, and the account events carrying
  its id are exactly those its state allows, on the right accounts (reservations and
  captures on its sources, credits and credit holds on its targets), for the right
  amounts. An ended transfer moved all of its legs (COMPLETED) or none (FAILED, VOIDED,
  EXPIRED, with every hold released and every held credit cancelled); a pending one holds
  each source's debit and nothing else. Transfers under way are listed as in flight; what
  they applied must be a consistent part of the protocol (no credit before every debit is
  held, no capture or confirmation before the last credit), since the account side may be
  ahead of the record.
* for the bank, in each currency on its own: the sum of balances equals deposits -
  withdrawals + credits - captures, and credits - captures (money that reached a target
  but has not left its source yet) equals what the in-flight transfers account for.

The report's types are in ``bank_cli.audit_report``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from account_service import codec as account_codec
from account_service.application import STREAM_PREFIX as ACCOUNT_PREFIX
from account_service.domain import (
    Account,
    AccountClosed,
    AccountOpened,
    CreditCancelled,
    CreditConfirmed,
    Credited,
    Deposited,
    ReservationCaptured,
    ReservationReleased,
    Reserved,
    StepRefused,
    Withdrawn,
)
from bank_cli.audit_report import (
    AMOUNT_MISMATCH,
    CONSERVATION,
    CURRENCY_MISMATCH,
    DUPLICATE_REFERENCE,
    HOLD_LEFT_OPEN,
    ILLEGAL_TRANSITION,
    IN_TRANSIT,
    MISSING_EFFECT,
    NEGATIVE_AVAILABLE,
    OUT_OF_ORDER,
    REVERSAL,
    RUNNING_BALANCE,
    SETTLED_WITHOUT_HOLD,
    UNEXPECTED_EFFECT,
    UNKNOWN_TRANSFER,
    UNREADABLE,
    WRONG_ACCOUNT,
    AuditReport,
    Violation,
)
from bank_cli.audit_transfers import (
    EFFECT_TYPES,
    Effect,
    TransferAudit,
    check_transfers,
    read_transfers,
)
from event_store import RecordedEvent
from transfer_service.repository import STREAM_PREFIX as TRANSFER_PREFIX

# The kinds of violation, for callers that name them.
__all__ = [
    "AMOUNT_MISMATCH",
    "CONSERVATION",
    "CURRENCY_MISMATCH",
    "DUPLICATE_REFERENCE",
    "HOLD_LEFT_OPEN",
    "ILLEGAL_TRANSITION",
    "IN_TRANSIT",
    "MISSING_EFFECT",
    "NEGATIVE_AVAILABLE",
    "OUT_OF_ORDER",
    "REVERSAL",
    "RUNNING_BALANCE",
    "SETTLED_WITHOUT_HOLD",
    "UNEXPECTED_EFFECT",
    "UNKNOWN_TRANSFER",
    "UNREADABLE",
    "WRONG_ACCOUNT",
    "AuditReport",
    "audit",
]

_RUNNING_FIELDS = ("balance_after", "reserved_after")

_DEBITS = (Withdrawn, Reserved)

# --- the audit -----------------------------------------------------------------------------


@dataclass
class _AccountAudit:
    account: Account
    currency: str = ""
    broken: bool = False  # an unreadable event: the fold after it proves nothing
    closed_at: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)
    last_balance: int = 0


def audit(
    account_events: Iterable[RecordedEvent], transfer_events: Iterable[RecordedEvent]
) -> AuditReport:
    """Checks the account store's events against the transfer store's; see the module doc."""
    report = AuditReport()
    transfers = read_transfers(_by_stream(transfer_events, report, "transfer"), report)
    effects: dict[str, list[Effect]] = defaultdict(list)
    accounts = _accounts(_by_stream(account_events, report, "account"), report, effects)
    currencies = {account_id: _currency(entry) for account_id, entry in accounts.items()}
    check_transfers(transfers, currencies, effects, report)
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


# --- accounts ---


def _accounts(
    streams: dict[str, list[RecordedEvent]],
    report: AuditReport,
    effects: dict[str, list[Effect]],
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


def _settles(account: Account, event: object) -> str | None:
    """Why a settling event does not fit the hold it settles; None when it does."""
    match event:
        case ReservationCaptured(amount, reference) | ReservationReleased(amount, reference):
            hold = account.holds.get(reference)
            if hold is None:
                return f"of {reference!r}, which holds nothing"
            too_much = amount > hold.amount
            if too_much or (isinstance(event, ReservationReleased) and amount != hold.amount):
                return f"{amount} of {reference!r}, which holds {hold.amount}"
        case CreditConfirmed(amount, reference) | CreditCancelled(amount, reference):
            held = account.credit_holds.get(reference)
            if held is None:
                return f"of {reference!r}, which holds no credit"
            if held != amount:
                return f"{amount} of {reference!r}, which holds a credit of {held}"
    return None


def _fold_account_event(
    entry: _AccountAudit,
    account_id: str,
    stored: RecordedEvent,
    report: AuditReport,
    effects: dict[str, list[Effect]],
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
    refusal = isinstance(event, StepRefused)
    opening = isinstance(event, AccountOpened)
    if (opening and account.exists) or not (account.exists or opening or refusal):
        violation(
            OUT_OF_ORDER,
            f"{stored.type} {'after' if account.exists else 'before'} the account was opened",
        )
    if entry.closed_at and not refusal:
        violation(OUT_OF_ORDER, f"{stored.type} after AccountClosed at version {entry.closed_at}")

    reference = getattr(event, "reference", None)
    amount = getattr(event, "amount", 0)
    if reference is not None:
        key = (f"{stored.type}:{event.step}" if refusal else stored.type, reference)
        if key in entry.seen:
            violation(DUPLICATE_REFERENCE, f"{stored.type} with reference {reference!r} again")
        entry.seen.add(key)
    wrong = _settles(account, event)
    if wrong is not None:
        kind = SETTLED_WITHOUT_HOLD if "holds no" in wrong or "nothing" in wrong else None
        violation(kind or AMOUNT_MISMATCH, f"{stored.type} {wrong}")

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
        case Credited() | CreditConfirmed():
            report.totals.of(_currency(entry)).credits += event.amount
        case ReservationCaptured():
            report.totals.of(_currency(entry)).captures += event.amount
    if stored.type in EFFECT_TYPES:
        assert reference is not None
        effects[reference].append(Effect(account_id, stored.type, amount, stored.version))

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
    if isinstance(event, _DEBITS) and account.available < 0:
        violation(
            NEGATIVE_AVAILABLE,
            f"available {account.available} (balance {account.balance},"
            f" reserved {account.reserved}, overdraft limit {account.overdraft_limit})"
            f" after {stored.type} {amount}",
        )
    return True


def _check_accounts(
    transfers: dict[str, TransferAudit],
    accounts: dict[str, _AccountAudit],
    effects: dict[str, list[Effect]],
    report: AuditReport,
) -> None:
    for account_id, entry in accounts.items():
        if not entry.account.exists and not entry.broken:
            continue  # refusals only, for an account never opened: no money
        money = report.totals.of(_currency(entry))
        money.balances += entry.last_balance
        money.reserved += entry.account.reserved
        money.pending_credits += entry.account.pending_credits
        money.open_holds += len(entry.account.holds) + len(entry.account.credit_holds)
        open_holds = [
            *((r, h.amount, "hold") for r, h in entry.account.holds.items()),
            *((r, n, "held credit") for r, n in entry.account.credit_holds.items()),
        ]
        for reference, amount, what in open_holds:
            known = transfers.get(reference)
            if known is not None and known.transfer.is_terminal:
                report.violations.append(
                    Violation(
                        HOLD_LEFT_OPEN,
                        f"account {account_id}",
                        f"{what} of {amount} still open for transfer {reference},"
                        f" which is {known.transfer.state.name}",  # type: ignore[union-attr]
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
