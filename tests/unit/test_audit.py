"""The audit's checks on synthetic histories: a clean bank passes, each kind of damage is named."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from account_service import codec as account_codec
from account_service.domain import (
    Account,
    AccountClosed,
    AccountEvent,
    AccountOpened,
    CreditCancelled,
    CreditConfirmed,
    Credited,
    CreditHeld,
    Deposited,
    OverdraftLimitSet,
    ReservationCaptured,
    ReservationReleased,
    Reserved,
    StepRefused,
    Withdrawn,
)
from bank_cli import audit_checks as checks
from bank_cli.audit_checks import AuditReport, audit
from event_store import RecordedEvent
from transfer_service import codec as transfer_codec
from transfer_service.domain import (
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

AT = datetime(2026, 1, 1, tzinfo=UTC)
ADA = "aaaaaaaa-0000-4000-8000-000000000001"
BOB = "bbbbbbbb-0000-4000-8000-000000000002"
CAROL = "cccccccc-0000-4000-8000-000000000003"
T1 = "11111111-0000-4000-8000-000000000001"  # completed, Ada -> Bob, 30
T2 = "22222222-0000-4000-8000-000000000002"  # credit refused (Carol closed), released, 20
T3 = "33333333-0000-4000-8000-000000000003"  # reserve refused, nothing moved
T4 = "44444444-0000-4000-8000-000000000004"  # in flight: credited, not yet captured, 5


class History:
    """Recorded events of both stores, with running balances computed like the service does."""

    def __init__(self) -> None:
        self.account_events: list[RecordedEvent] = []
        self.transfer_events: list[RecordedEvent] = []
        self._accounts: dict[str, Account] = {}
        self._versions: Counter[str] = Counter()
        self._position = 0

    def account(self, account_id: str, event: AccountEvent, **override: Any) -> History:
        account = self._accounts.setdefault(account_id, Account.empty(account_id))
        account.apply(event)
        kind, data = account_codec.encode(event)
        data.update(balance_after=account.balance, reserved_after=account.reserved)
        data.update(override)
        self._record(self.account_events, "account-" + account_id, kind, data)
        return self

    def transfer(self, transfer_id: str, *events: TransferEvent) -> History:
        for event in events:
            kind, data = transfer_codec.encode(event)
            self._record(self.transfer_events, "transfer-" + transfer_id, kind, data)
        return self

    def raw(self, store: str, stream_id: str, kind: str, data: dict[str, Any]) -> History:
        target = self.account_events if store == "account" else self.transfer_events
        self._record(target, stream_id, kind, data)
        return self

    def _record(self, into: list[RecordedEvent], stream: str, kind: str, data: dict) -> None:
        self._position += 1
        self._versions[stream] += 1
        into.append(RecordedEvent(self._position, stream, self._versions[stream], kind, data, AT))

    def audit(self) -> AuditReport:
        return audit(self.account_events, self.transfer_events)


def opened() -> History:
    """Ada with 100 EUR, Bob, and Carol (closed)."""
    return (
        History()
        .account(ADA, AccountOpened(ADA, "Ada", "EUR"))
        .account(ADA, Deposited(100, "opening"))
        .account(BOB, AccountOpened(BOB, "Bob", "EUR"))
        .account(CAROL, AccountOpened(CAROL, "Carol", "EUR"))
        .account(CAROL, AccountClosed())
    )


def completed(h: History, tid: str = T1, amount: int = 30, target: str = BOB) -> History:
    h.transfer(tid, TransferRequested(tid, ADA, target, amount))
    h.account(ADA, Reserved(amount, tid)).transfer(tid, TransferReserved("EUR"))
    h.account(target, Credited(amount, tid)).transfer(tid, TransferCredited())
    h.account(ADA, ReservationCaptured(amount, tid)).transfer(tid, TransferCompleted())
    return h


def compensated(h: History, tid: str = T2, amount: int = 20) -> History:
    h.transfer(tid, TransferRequested(tid, ADA, CAROL, amount))
    h.account(ADA, Reserved(amount, tid)).transfer(tid, TransferReserved("EUR"))
    h.transfer(tid, TransferRefused("ACCOUNT_CLOSED"))
    h.account(ADA, ReservationReleased(amount, tid))
    return h.transfer(tid, TransferFailed("ACCOUNT_CLOSED"))


def clean() -> History:
    h = compensated(completed(opened()))
    h.transfer(T3, TransferRequested(T3, BOB, ADA, 1000), TransferFailed("INSUFFICIENT_FUNDS"))
    h.transfer(T4, TransferRequested(T4, ADA, BOB, 5))
    h.account(ADA, Reserved(5, T4)).transfer(T4, TransferReserved("EUR"))
    h.account(BOB, Credited(5, T4)).transfer(T4, TransferCredited())
    return h


def kinds_of(report: AuditReport) -> set[str]:
    return report.kinds()


def test_a_clean_history_passes_and_reports_its_totals():
    report = clean().audit()
    assert report.ok, report.render()
    assert (report.accounts, report.transfers) == (3, 4)
    assert report.states == {"COMPLETED": 1, "FAILED": 2, "CREDITED": 1}
    assert list(report.totals.currencies) == ["EUR"]
    totals = report.totals.currencies["EUR"]
    assert (totals.deposits, totals.credits, totals.captures) == (100, 35, 30)
    assert totals.balances == totals.expected_balances == 105
    assert (totals.in_transit, totals.reserved, totals.open_holds) == (5, 5, 1)
    assert [(f.transfer_id, f.state) for f in report.in_flight] == [(T4, "CREDITED")]
    assert "OK" in report.render()
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


@pytest.mark.parametrize(
    ("state", "extra"),
    [
        ("REQUESTED", []),
        ("REQUESTED", [(ADA, Reserved(5, T4))]),  # reserve answered, not recorded yet
        ("RESERVED", [(ADA, Reserved(5, T4)), (BOB, Credited(5, T4))]),  # credit answered
        ("CREDITED", [(ADA, Reserved(5, T4)), (BOB, Credited(5, T4))]),
        (
            "CREDITED",
            [(ADA, Reserved(5, T4)), (BOB, Credited(5, T4)), (ADA, ReservationCaptured(5, T4))],
        ),
    ],
)
def test_in_flight_transfers_may_be_one_step_ahead_on_the_account_side(state, extra):
    h = opened().transfer(T4, TransferRequested(T4, ADA, BOB, 5))
    if state in ("RESERVED", "CREDITED"):
        h.transfer(T4, TransferReserved("EUR"))
    if state == "CREDITED":
        h.transfer(T4, TransferCredited())
    for account_id, event in extra:
        h.account(account_id, event)
    report = h.audit()
    assert report.ok, report.render()
    assert [f.state for f in report.in_flight] == [state]


def test_a_releasing_transfer_is_in_flight_with_or_without_its_release():
    h = opened().transfer(T2, TransferRequested(T2, ADA, CAROL, 20))
    h.account(ADA, Reserved(20, T2)).transfer(T2, TransferReserved("EUR"))
    h.transfer(T2, TransferRefused("ACCOUNT_CLOSED"))
    assert h.audit().ok
    h.account(ADA, ReservationReleased(20, T2))
    report = h.audit()
    assert report.ok, report.render()
    assert [f.state for f in report.in_flight] == ["RESERVED (releasing)"]


# --- one test per kind of violation ------------------------------------------------------


def test_a_stored_running_balance_that_disagrees_with_the_events():
    h = opened().account(ADA, Deposited(5, "tip"), balance_after=999)
    report = h.audit()
    assert checks.RUNNING_BALANCE in kinds_of(report)
    # The last stored balance is what the service serves: it no longer adds up either.
    assert checks.CONSERVATION in kinds_of(report)
    assert any(ADA in v.subject and "balance_after=999" in v.detail for v in report.violations)


def test_available_going_below_zero():
    report = opened().account(ADA, Withdrawn(150, "too-much")).audit()
    assert kinds_of(report) == {checks.NEGATIVE_AVAILABLE}
    assert "available -50" in report.violations[0].detail


def test_a_reference_applied_twice_for_the_same_kind():
    report = opened().account(ADA, Deposited(100, "opening")).audit()
    assert kinds_of(report) == {checks.DUPLICATE_REFERENCE}
    # Another kind of event may reuse the reference: a withdrawal is not a deposit.
    assert opened().account(ADA, Withdrawn(10, "opening")).audit().ok


def test_a_capture_with_no_open_hold():
    h = completed(opened())
    h.account(ADA, ReservationCaptured(30, T1))
    report = h.audit()
    assert checks.SETTLED_WITHOUT_HOLD in kinds_of(report)
    assert checks.DUPLICATE_REFERENCE in kinds_of(report)
    assert checks.UNEXPECTED_EFFECT in kinds_of(report)


def test_a_settlement_for_another_amount_than_the_hold():
    h = opened().transfer(T1, TransferRequested(T1, ADA, BOB, 30))
    h.account(ADA, Reserved(30, T1)).transfer(T1, TransferReserved("EUR"))
    h.account(BOB, Credited(30, T1)).transfer(T1, TransferCredited())
    h.account(ADA, ReservationCaptured(25, T1)).transfer(T1, TransferCompleted())
    assert checks.AMOUNT_MISMATCH in kinds_of(h.audit())


def test_a_hold_left_open_for_a_transfer_that_ended():
    h = opened().transfer(T3, TransferRequested(T3, ADA, BOB, 10), TransferFailed("X"))
    h.account(ADA, Reserved(10, T3))
    report = h.audit()
    assert checks.HOLD_LEFT_OPEN in kinds_of(report)
    assert any("still open for transfer " + T3 in v.detail for v in report.violations)


def test_an_account_event_for_a_transfer_that_was_never_recorded():
    report = opened().account(BOB, Credited(7, "99999999-0000-4000-8000-000000000009")).audit()
    assert checks.UNKNOWN_TRANSFER in kinds_of(report)
    # Money arrived that no transfer accounts for.
    assert checks.IN_TRANSIT in kinds_of(report)


def test_a_transfer_history_the_state_machine_rules_out():
    h = opened().transfer(T1, TransferRequested(T1, ADA, BOB, 30), TransferCompleted())
    report = h.audit()
    assert checks.ILLEGAL_TRANSITION in kinds_of(report)
    assert any("TransferCompleted is not a legal next event" in v.detail for v in report.violations)


def test_an_effect_on_the_wrong_account():
    h = opened().transfer(T1, TransferRequested(T1, ADA, BOB, 30))
    h.account(ADA, Reserved(30, T1)).transfer(T1, TransferReserved("EUR"))
    h.account(ADA, Credited(30, T1)).transfer(T1, TransferCredited())  # onto the source
    h.account(ADA, ReservationCaptured(30, T1)).transfer(T1, TransferCompleted())
    report = h.audit()
    assert {checks.WRONG_ACCOUNT, checks.MISSING_EFFECT} <= kinds_of(report)


def test_a_completed_transfer_missing_its_capture():
    h = opened().transfer(T1, TransferRequested(T1, ADA, BOB, 30))
    h.account(ADA, Reserved(30, T1)).transfer(T1, TransferReserved("EUR"))
    h.account(BOB, Credited(30, T1)).transfer(T1, TransferCredited(), TransferCompleted())
    report = h.audit()
    assert {checks.MISSING_EFFECT, checks.HOLD_LEFT_OPEN, checks.IN_TRANSIT} <= kinds_of(report)
    assert any("0 ReservationCaptured" in v.detail for v in report.violations)


def test_a_failed_transfer_whose_money_arrived_anyway():
    h = compensated(opened())
    h.account(CAROL, Credited(20, T2))
    report = h.audit()
    assert {checks.UNEXPECTED_EFFECT, checks.IN_TRANSIT} <= kinds_of(report)
    assert any("FAILED but 1 Credited" in v.detail for v in report.violations)


def test_an_effect_for_another_amount_than_the_transfer():
    h = opened().transfer(T1, TransferRequested(T1, ADA, BOB, 30))
    h.account(ADA, Reserved(31, T1)).transfer(T1, TransferReserved("EUR"))
    h.account(BOB, Credited(30, T1)).transfer(T1, TransferCredited())
    h.account(ADA, ReservationCaptured(31, T1)).transfer(T1, TransferCompleted())
    report = h.audit()
    assert checks.AMOUNT_MISMATCH in kinds_of(report)
    # 31 left the source, 30 reached the target: one unit vanished.
    assert any("= -1 in transit" in v.detail for v in report.violations)


def test_a_credit_into_an_account_of_another_currency():
    dollars = "dddddddd-0000-4000-8000-000000000004"
    h = opened().account(dollars, AccountOpened(dollars, "Dan", "USD"))
    report = completed(h, target=dollars).audit()
    # 30 EUR left Ada and 30 USD reached Dan: neither currency's credits match its captures.
    assert kinds_of(report) == {checks.CURRENCY_MISMATCH, checks.IN_TRANSIT}
    bank = [v for v in report.violations if v.kind == checks.IN_TRANSIT and v.subject == "bank"]
    assert sorted(v.detail[:4] for v in bank) == ["EUR:", "USD:"]
    # The transfer itself is named too: it ended with money credited and not captured.
    assert any(
        v.subject == f"transfer {T1}" and v.kind == checks.IN_TRANSIT for v in report.violations
    )


def test_money_that_is_not_conserved():
    # Every event adds up on its own, but the last stored balance was tampered with.
    h = opened().account(BOB, Deposited(1, "b"), balance_after=2)
    assert checks.CONSERVATION in kinds_of(h.audit())


DAN = "dddddddd-0000-4000-8000-000000000004"
EVE = "eeeeeeee-0000-4000-8000-000000000005"
T5 = "55555555-0000-4000-8000-000000000005"  # completed, Dan -> Eve, 700 USD


def in_two_currencies() -> History:
    """The clean EUR bank, and Dan with 1000 USD who paid Eve 700."""
    h = clean()
    h.account(DAN, AccountOpened(DAN, "Dan", "USD")).account(DAN, Deposited(1_000, "opening"))
    h.account(EVE, AccountOpened(EVE, "Eve", "USD"))
    h.transfer(T5, TransferRequested(T5, DAN, EVE, 700))
    h.account(DAN, Reserved(700, T5)).transfer(T5, TransferReserved("USD"))
    h.account(EVE, Credited(700, T5)).transfer(T5, TransferCredited())
    return h.account(DAN, ReservationCaptured(700, T5)).transfer(T5, TransferCompleted())


def test_money_is_totalled_per_currency():
    report = in_two_currencies().audit()
    assert report.ok, report.render()
    euros, dollars = report.totals.currencies["EUR"], report.totals.currencies["USD"]
    assert (euros.deposits, euros.credits, euros.captures, euros.balances) == (100, 35, 30, 105)
    assert (dollars.deposits, dollars.credits, dollars.captures) == (1_000, 700, 700)
    assert dollars.balances == dollars.expected_balances == 1_000
    assert (dollars.in_transit, dollars.reserved, dollars.open_holds) == (0, 0, 0)
    assert "money in EUR: deposits 100," in report.render()
    assert "money in USD: deposits 1000," in report.render()
    assert set(json.loads(json.dumps(report.to_dict()))["totals"]) == {"EUR", "USD"}


def test_money_missing_in_one_currency_is_not_hidden_by_money_extra_in_another():
    # Last stored balances tampered with: one euro cent more, one dollar cent less.
    h = in_two_currencies()
    h.account(BOB, Deposited(1, "b"), balance_after=37)
    h.account(EVE, Deposited(1, "e"), balance_after=700)
    report = h.audit()
    conservation = sorted(v.detail for v in report.violations if v.kind == checks.CONSERVATION)
    assert [detail[:4] for detail in conservation] == ["EUR:", "USD:"]
    assert "EUR: balances sum to 107, but" in conservation[0]
    assert "USD: balances sum to 1000, but" in conservation[1]


def test_credits_not_matched_by_captures_or_in_flight_transfers():
    h = completed(opened())
    h.account(BOB, Credited(30, T1))  # the same credit, stored twice
    report = h.audit()
    assert checks.IN_TRANSIT in kinds_of(report)
    assert any(v.subject == "bank" and "credits 60" in v.detail for v in report.violations)


def test_events_out_of_order():
    assert checks.OUT_OF_ORDER in kinds_of(opened().account(CAROL, Deposited(1, "late")).audit())
    never_opened = History().account(ADA, Deposited(1, "x"))
    assert checks.OUT_OF_ORDER in kinds_of(never_opened.audit())


def test_an_event_that_cannot_be_read():
    h = opened().raw("account", "account-" + BOB, "Deposited", {"amount": "ten"})
    h.raw("transfer", "transfer-" + T1, "TransferTeleported", {})
    h.raw("account", "snapshot-1", "Deposited", {"amount": 1, "reference": "r"})
    report = h.audit()
    unreadable = [v for v in report.violations if v.kind == checks.UNREADABLE]
    assert len(unreadable) == 3, report.render()
    assert any("TransferTeleported" in v.detail for v in unreadable)


def test_in_flight_a_forward_record_may_trail_the_next_call():
    # RESERVED is being written while the credit is already applied.
    h = opened().transfer(T1, TransferRequested(T1, ADA, BOB, 30))
    h.account(ADA, Reserved(30, T1)).account(BOB, Credited(30, T1))
    report = h.audit()
    assert report.ok, report.render()
    assert [(f.state, f.applied) for f in report.in_flight] == [
        ("REQUESTED", ("Reserved", "Credited"))
    ]
    # CREDITED is being written while the capture is already applied.
    h.transfer(T1, TransferReserved("EUR")).account(ADA, ReservationCaptured(30, T1))
    report = h.audit()
    assert report.ok, report.render()
    assert [f.state for f in report.in_flight] == ["RESERVED"]


def test_in_flight_effects_out_of_protocol_order():
    h = opened().transfer(T1, TransferRequested(T1, ADA, BOB, 30))
    h.account(BOB, Credited(30, T1))  # a credit with no reservation before it
    report = h.audit()
    assert checks.OUT_OF_ORDER in kinds_of(report)
    assert any("a credit before every debit is held" in v.detail for v in report.violations)


def test_in_flight_requested_may_carry_the_whole_forward_sequence():
    # Reserve, credit and capture answered; their one record not written yet.
    h = opened().transfer(T1, TransferRequested(T1, ADA, BOB, 30))
    h.account(ADA, Reserved(30, T1)).account(BOB, Credited(30, T1))
    h.account(ADA, ReservationCaptured(30, T1))
    report = h.audit()
    assert report.ok, report.render()
    assert [(f.state, f.applied) for f in report.in_flight] == [
        ("REQUESTED", ("Reserved", "Credited", "ReservationCaptured"))
    ]


def test_in_flight_requested_never_carries_a_release():
    # A release follows a stored CreditRefused, so REQUESTED cannot have one.
    h = opened().transfer(T1, TransferRequested(T1, ADA, BOB, 30))
    h.account(ADA, Reserved(30, T1)).account(ADA, ReservationReleased(30, T1))
    report = h.audit()
    assert checks.UNEXPECTED_EFFECT in kinds_of(report)
    assert any("REQUESTED but 1 ReservationReleased" in v.detail for v in report.violations)


# --- holds, legs, refusals and limits ---------------------------------------------------

FEE = "eeeeeeee-0000-4000-8000-000000000005"


def with_fee_account() -> History:
    return opened().account(FEE, AccountOpened(FEE, "Fees", "EUR"))


def test_a_payment_with_a_fee_completed_on_every_leg_passes():
    h = with_fee_account()
    h.transfer(T1, requested(T1, [Leg(ADA, BOB, 30), Leg(ADA, FEE, 2)]))
    h.account(ADA, Reserved(32, T1)).account(BOB, CreditHeld(30, T1))
    h.account(FEE, Credited(2, T1)).account(BOB, CreditConfirmed(30, T1))
    h.account(ADA, ReservationCaptured(32, T1))
    h.transfer(T1, TransferReserved("EUR"), TransferCredited(), TransferCompleted())
    report = h.audit()
    assert report.ok, report.render()
    assert report.totals.of("EUR").credits == 32


def test_a_completed_payment_missing_a_confirmation_is_named():
    h = with_fee_account()
    h.transfer(T1, requested(T1, [Leg(ADA, BOB, 30), Leg(ADA, FEE, 2)]))
    h.account(ADA, Reserved(32, T1)).account(BOB, CreditHeld(30, T1))
    h.account(FEE, Credited(2, T1)).account(ADA, ReservationCaptured(32, T1))
    h.transfer(T1, TransferReserved("EUR"), TransferCredited(), TransferCompleted())
    report = h.audit()
    assert checks.MISSING_EFFECT in kinds_of(report)
    assert checks.HOLD_LEFT_OPEN in kinds_of(report)


def test_a_failed_payment_whose_holds_were_all_undone_passes():
    h = with_fee_account()
    h.account(FEE, AccountClosed())
    h.transfer(T1, requested(T1, [Leg(ADA, BOB, 30), Leg(ADA, FEE, 2)]))
    h.account(ADA, Reserved(32, T1)).account(BOB, CreditHeld(30, T1))
    h.account(FEE, StepRefused("credit", 2, T1, "AccountIsClosed", "closed", {}, 1))
    h.transfer(T1, TransferReserved("EUR"), TransferRefused("ACCOUNT_CLOSED", "credit", 1))
    h.account(BOB, CreditCancelled(30, T1)).account(ADA, ReservationReleased(32, T1))
    h.transfer(T1, TransferFailed("ACCOUNT_CLOSED"))
    report = h.audit()
    assert report.ok, report.render()


def test_a_failed_payment_with_a_credit_left_held_is_named():
    h = with_fee_account()
    h.transfer(T1, requested(T1, [Leg(ADA, BOB, 30), Leg(ADA, FEE, 2)]))
    h.account(ADA, Reserved(32, T1)).account(BOB, CreditHeld(30, T1))
    h.transfer(T1, TransferReserved("EUR"), TransferRefused("ACCOUNT_CLOSED", "credit", 1))
    h.account(ADA, ReservationReleased(32, T1)).transfer(T1, TransferFailed("ACCOUNT_CLOSED"))
    report = h.audit()
    assert {checks.MISSING_EFFECT, checks.HOLD_LEFT_OPEN} <= kinds_of(report)


def pending(h: History, amount: int = 30) -> History:
    h.transfer(T1, requested(T1, [Leg(ADA, BOB, amount)], pending=True, expires_after=10**7))
    return h.account(ADA, Reserved(amount, T1)).transfer(T1, TransferReserved("EUR"))


def test_a_pending_hold_at_rest_passes_and_is_not_in_flight():
    report = pending(opened()).audit()
    assert report.ok, report.render()
    assert report.in_flight == []
    assert report.states["PENDING"] == 1
    assert report.totals.of("EUR").reserved == 30


def test_a_partial_post_captures_what_it_credits():
    h = pending(opened()).transfer(T1, PostRequested(12))
    h.account(BOB, Credited(12, T1)).account(ADA, ReservationCaptured(12, T1))
    h.transfer(T1, TransferCredited(), TransferCompleted())
    report = h.audit()
    assert report.ok, report.render()
    assert report.totals.of("EUR").balances == 100


def test_a_post_for_more_than_the_hold_is_an_illegal_history():
    h = pending(opened()).transfer(T1, PostRequested(31))
    assert checks.ILLEGAL_TRANSITION in kinds_of(h.audit())


@pytest.mark.parametrize(
    ("decided", "ended"), [(VoidRequested(), TransferVoided()), (HoldExpired(), TransferExpired())]
)
def test_a_voided_or_expired_hold_was_released(decided, ended):
    h = pending(opened()).transfer(T1, decided)
    h.account(ADA, ReservationReleased(30, T1)).transfer(T1, ended)
    assert h.audit().ok
    left_open = pending(opened()).transfer(T1, decided, ended)
    assert {checks.MISSING_EFFECT, checks.HOLD_LEFT_OPEN} <= kinds_of(left_open.audit())


def test_refusals_stored_before_an_account_is_opened_pass():
    dan = "dddddddd-0000-4000-8000-000000000004"
    h = opened().transfer(T1, TransferRequested(T1, ADA, dan, 30))
    h.account(ADA, Reserved(30, T1))
    h.account(dan, StepRefused("credit", 30, T1, "AccountNotFound", "no such account", {}, 1))
    h.transfer(T1, TransferReserved("EUR"), TransferRefused("ACCOUNT_NOT_FOUND", "credit", 0))
    h.account(ADA, ReservationReleased(30, T1)).transfer(T1, TransferFailed("ACCOUNT_NOT_FOUND"))
    h.account(dan, AccountOpened(dan, "Dan", "EUR")).account(dan, Deposited(5, "d"))
    report = h.audit()
    assert report.ok, report.render()
    assert report.totals.of("EUR").deposits == 105


def test_an_event_before_the_opening_other_than_a_refusal_is_out_of_order():
    dan = "dddddddd-0000-4000-8000-000000000004"
    h = opened().account(dan, Deposited(5, "d"), balance_after=5)
    assert checks.OUT_OF_ORDER in kinds_of(h.audit())


def test_an_overdraft_lets_the_balance_go_below_zero_without_a_violation():
    h = opened().account(BOB, OverdraftLimitSet(50, "limit")).account(BOB, Withdrawn(40, "w"))
    report = h.audit()
    assert report.ok, report.render()
    beyond = opened().account(BOB, OverdraftLimitSet(5, "limit")).account(BOB, Withdrawn(6, "w"))
    assert checks.NEGATIVE_AVAILABLE in kinds_of(beyond.audit())


def test_lowering_a_limit_below_what_is_used_is_no_violation():
    h = opened().account(BOB, OverdraftLimitSet(50, "a")).account(BOB, Withdrawn(40, "w"))
    h.account(BOB, OverdraftLimitSet(10, "b"))
    assert h.audit().ok


# --- reversals ---

R1 = "99999999-0000-4000-8000-000000000009"


def reversed_history(settled: bool = True, set_aside: int = 30) -> History:
    h = completed(opened())
    h.transfer(T1, ReversalReserved(R1, set_aside))
    h.transfer(R1, requested(R1, [Leg(BOB, ADA, 30)], reverses_transfer_id=T1))
    h.account(BOB, Reserved(30, R1)).account(ADA, Credited(30, R1))
    h.account(BOB, ReservationCaptured(30, R1))
    h.transfer(R1, TransferReserved("EUR"), TransferCredited(), TransferCompleted())
    if settled:
        h.transfer(T1, ReversalSettled(R1, True))
    return h


def test_a_reversal_set_aside_and_settled_on_its_original_passes():
    report = reversed_history().audit()
    assert report.ok, report.render()


def test_a_reversal_its_original_did_not_settle_is_named():
    report = reversed_history(settled=False).audit()
    assert checks.REVERSAL in kinds_of(report)


def test_a_reversal_for_another_amount_than_set_aside_is_named():
    report = reversed_history(set_aside=20).audit()
    assert checks.REVERSAL in kinds_of(report)


def test_setting_aside_more_than_moved_is_an_illegal_history():
    h = completed(opened()).transfer(T1, ReversalReserved(R1, 31))
    assert checks.ILLEGAL_TRANSITION in kinds_of(h.audit())
