"""The Transfer aggregate: folding, the steps it asks for, what it decides from answers,
clients' decisions (post, void, expiry) and request validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared_kernel.errors import AlreadyExists, DomainError, InvalidArgument
from transfer_service.domain import (
    AccountStep,
    Action,
    Applied,
    ExceedsPendingAmount,
    ExceedsReversibleAmount,
    Fenced,
    HoldExpired,
    InvalidTransition,
    Leg,
    PartialPostOfLegs,
    PartialReversalOfLegs,
    Phase,
    PostRequested,
    Refused,
    ReversalReserved,
    ReversalSettled,
    Transfer,
    TransferAlreadyExists,
    TransferCompleted,
    TransferCredited,
    TransferExpired,
    TransferFailed,
    TransferNotCompleted,
    TransferNotFound,
    TransferNotPending,
    TransferRefused,
    TransferRequested,
    TransferReserved,
    TransferState,
    TransferVoided,
    Undecided,
    VoidRequested,
    requested,
)

TID = "11111111-1111-4111-8111-111111111111"
SRC = "22222222-2222-4222-8222-222222222222"
DST = "33333333-3333-4333-8333-333333333333"
FEE = "44444444-4444-4444-8444-444444444444"
SRC2 = "55555555-5555-4555-8555-555555555555"


def at(n: int) -> datetime:
    return datetime(2024, 1, 1, 0, 0, n, tzinfo=UTC)


def build(*events) -> Transfer:
    return Transfer.from_events(TID, [(e, at(i)) for i, e in enumerate(events)])


REQUESTED = (TransferRequested(TID, SRC, DST, 500),)
RESERVED = (*REQUESTED, TransferReserved("EUR"))
RELEASING = (*RESERVED, TransferRefused("ACCOUNT_CLOSED"))
CREDITED = (*RESERVED, TransferCredited())
COMPLETED = (*CREDITED, TransferCompleted())
FAILED_ON_RESERVE = (*REQUESTED, TransferFailed("INSUFFICIENT_FUNDS"))
FAILED_AFTER_RELEASE = (*RELEASING, TransferFailed("ACCOUNT_CLOSED"))
PENDING_REQUEST = (requested(TID, [Leg(SRC, DST, 500)], pending=True, expires_after=60_000_000),)
PENDING = (*PENDING_REQUEST, TransferReserved("EUR"))
POSTING = (*PENDING, PostRequested(200))
VOIDING = (*PENDING, VoidRequested())
FEE_REQUEST = (requested(TID, [Leg(SRC, DST, 500), Leg(SRC, FEE, 5)]),)

ALL = {
    "empty": (),
    "requested": REQUESTED,
    "reserved": RESERVED,
    "releasing": RELEASING,
    "credited": CREDITED,
    "completed": COMPLETED,
    "failed_on_reserve": FAILED_ON_RESERVE,
    "failed_after_release": FAILED_AFTER_RELEASE,
    "pending": PENDING,
    "posting": POSTING,
    "voiding": VOIDING,
    "voided": (*VOIDING, TransferVoided()),
    "expired": (*PENDING, HoldExpired(), TransferExpired()),
}


def actions(transfer: Transfer) -> list[tuple[str, str, int]]:
    return [
        (step.action.value, step.account_id, step.amount)
        for _, steps in transfer.next_steps()
        for step in steps
    ]


# --- folding ---


def test_empty_transfer_has_no_state_and_nothing_to_do():
    t = Transfer.empty(TID)
    assert (t.state, t.version, t.currency) == (None, 0, "")
    assert not t.is_terminal
    assert t.next_steps() == []


def test_from_events_folds_fields_version_and_times():
    t = build(*COMPLETED)
    assert (t.from_account_id, t.to_account_id, t.amount) == (SRC, DST, 500)
    assert t.legs == (Leg(SRC, DST, 500),)
    assert (t.currency, t.state, t.version) == ("EUR", TransferState.COMPLETED, 4)
    assert (t.created_at, t.updated_at) == (at(0), at(3))
    assert t.posted_amount == 500


def test_apply_rejects_non_events():
    with pytest.raises(TypeError):
        Transfer.empty(TID).apply("TransferCompleted")  # type: ignore[arg-type]


def test_a_refused_credit_keeps_the_transfer_reserved_while_it_releases():
    t = build(*RELEASING)
    assert (t.state, t.failure_reason) == (TransferState.RESERVED, "ACCOUNT_CLOSED")
    assert not t.is_terminal


def test_a_pending_transfer_rests_after_its_hold_and_knows_its_expiry():
    t = build(*PENDING)
    assert t.state is TransferState.PENDING and t.at_rest
    assert t.expires_at == at(0) + timedelta(seconds=60)
    assert t.next_steps() == []


@pytest.mark.parametrize("history", ["completed", "failed_on_reserve", "voided", "expired"])
def test_ended_transfers_are_terminal(history):
    assert build(*ALL[history]).is_terminal


# --- the steps asked for ---


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ("requested", [("reserve", SRC, 500), ("credit", DST, 500), ("capture", SRC, 0)]),
        ("reserved", [("credit", DST, 500), ("capture", SRC, 0)]),
        ("credited", [("capture", SRC, 0)]),
        ("releasing", [("release", SRC, 0)]),
        ("posting", [("credit", DST, 200), ("capture", SRC, 200)]),
        ("voiding", [("release", SRC, 0)]),
        ("completed", []),
        ("pending", []),
    ],
)
def test_next_steps_follow_the_protocol(history, expected):
    assert actions(build(*ALL[history])) == expected


def test_a_pending_request_asks_for_the_hold_only_with_its_expiry():
    (step,) = [s for _, steps in build(*PENDING_REQUEST).next_steps() for s in steps]
    assert step == AccountStep(Action.RESERVE, SRC, 500, 1_704_067_260_000_000)


def test_legs_hold_each_source_once_and_credit_the_last_target_directly():
    t = build(requested(TID, [Leg(SRC, DST, 100), Leg(SRC2, FEE, 7), Leg(SRC, FEE, 3)]))
    assert actions(t) == [
        ("reserve", SRC, 103),
        ("reserve", SRC2, 7),
        ("hold_credit", DST, 100),
        ("credit", FEE, 10),
        ("confirm_credit", DST, 0),
        ("capture", SRC, 0),
        ("capture", SRC2, 0),
    ]
    assert t.amount == 110 and t.from_account_id == ""


# --- deciding from answers ---


def test_all_applied_completes_in_one_record():
    t = build(*REQUESTED)
    events, held_up = t.decide(t.next_steps(), [Applied("EUR")] * 3)
    assert events == [TransferReserved("EUR"), TransferCredited(), TransferCompleted()]
    assert held_up is None


def test_a_refused_first_hold_fails_at_once():
    t = build(*REQUESTED)
    events, _ = t.decide(t.next_steps(), [Refused("INSUFFICIENT_FUNDS")])
    assert events == [TransferFailed("INSUFFICIENT_FUNDS")]


def test_a_refused_later_hold_undoes_those_placed():
    t = build(requested(TID, [Leg(SRC, DST, 1), Leg(SRC2, DST, 1)]))
    events, _ = t.decide(t.next_steps(), [Applied("EUR"), Refused("ACCOUNT_CLOSED")])
    assert events == [TransferRefused("ACCOUNT_CLOSED", "hold", 1)]
    t.apply(events[0])
    assert actions(t) == [("release", SRC, 0)]


def test_a_refused_credit_records_the_holds_then_the_refusal():
    t = build(*REQUESTED)
    events, _ = t.decide(t.next_steps(), [Applied("EUR"), Refused("CURRENCY_MISMATCH")])
    assert events == [TransferReserved("EUR"), TransferRefused("CURRENCY_MISMATCH", "credit", 0)]


def test_an_undecided_step_records_only_finished_phases():
    t = build(*REQUESTED)
    events, held_up = t.decide(t.next_steps(), [Applied("EUR"), Undecided("down")])
    assert events == [TransferReserved("EUR")]
    assert held_up == Undecided("down")


def test_a_fenced_step_holds_the_transfer_up():
    t = build(*REQUESTED)
    events, held_up = t.decide(t.next_steps(), [Fenced("epoch 3")])
    assert (events, held_up) == ([], Fenced("epoch 3"))


def test_a_refused_settlement_is_held_up_not_recorded():
    t = build(*CREDITED)
    refused = Refused("RESERVATION_NOT_FOUND")
    assert t.decide(t.next_steps(), [refused]) == ([], refused)


def test_a_reserve_found_captured_resumes_at_the_settle_phase():
    t = build(*REQUESTED)
    settled = Refused("RESERVATION_SETTLED", "", {"outcome": "captured", "currency": "EUR"})
    events, held_up = t.decide(t.next_steps(), [settled])
    assert events == [TransferReserved("EUR"), TransferCredited()]
    assert held_up is None


def test_a_reserve_found_released_is_held_up():
    t = build(*REQUESTED)
    settled = Refused("RESERVATION_SETTLED", "", {"outcome": "released"})
    assert t.decide(t.next_steps(), [settled]) == ([], settled)


def test_an_undo_ends_as_it_was_decided():
    for history, end in [
        ("releasing", TransferFailed("ACCOUNT_CLOSED")),
        ("voiding", TransferVoided()),
    ]:
        t = build(*ALL[history])
        assert t.decide(t.next_steps(), [Applied("EUR")]) == ([end], None)


def test_deciding_does_not_change_the_transfer():
    t = build(*REQUESTED)
    t.decide(t.next_steps(), [Applied("EUR")] * 3)
    assert t == build(*REQUESTED)


# --- post, void, expiry ---


def test_post_of_a_pending_transfer_records_the_amount():
    assert build(*PENDING).post(0) == [PostRequested(500)]
    assert build(*PENDING).post(200) == [PostRequested(200)]


def test_the_same_post_again_is_a_repeat():
    assert build(*POSTING).post(200) == []
    full = build(*PENDING, PostRequested(500))
    assert full.post(0) == [] and full.post(500) == []


def test_another_post_after_a_post_is_not_pending():
    with pytest.raises(TransferNotPending):
        build(*POSTING).post(300)


def test_a_post_beyond_the_hold_exceeds_the_pending_amount():
    with pytest.raises(ExceedsPendingAmount):
        build(*PENDING).post(501)


def test_a_partial_post_of_several_legs_is_invalid():
    t = build(
        requested(TID, [Leg(SRC, DST, 5), Leg(SRC, FEE, 1)], pending=True), TransferReserved("EUR")
    )
    with pytest.raises(PartialPostOfLegs):
        t.post(3)
    assert t.post(6) == [PostRequested(6)]


@pytest.mark.parametrize("history", ["requested", "completed", "voided", "expired", "reserved"])
def test_post_needs_a_pending_transfer(history):
    with pytest.raises(TransferNotPending):
        build(*ALL[history]).post(0)


@pytest.mark.parametrize("history", ["requested", "completed", "expired", "reserved"])
def test_void_needs_a_pending_transfer(history):
    with pytest.raises(TransferNotPending):
        build(*ALL[history]).void()


def test_void_is_repeatable():
    assert build(*PENDING).void() == [VoidRequested()]
    assert build(*VOIDING).void() == []
    assert build(*ALL["voided"]).void() == []


def test_void_after_a_post_is_not_pending():
    with pytest.raises(TransferNotPending):
        build(*POSTING).void()


def test_expiry_comes_only_once_its_time_has_passed():
    t = build(*PENDING)
    assert t.expire(at(59)) == []
    assert t.expire(at(0) + timedelta(seconds=60)) == [HoldExpired()]
    assert build(*POSTING).expire(at(0) + timedelta(days=1)) == []


# --- requests ---


def test_request_on_new_transfer_returns_the_request():
    event = requested(TID, [Leg(SRC, DST, 500)])
    assert event == TransferRequested(TID, SRC, DST, 500)
    assert Transfer.empty(TID).request(event) == [event]


def test_the_same_request_again_is_a_no_op_even_once_ended():
    event = requested(TID, [Leg(SRC, DST, 500)])
    assert build(*FAILED_ON_RESERVE).request(event) == []


@pytest.mark.parametrize(
    "other",
    [
        requested(TID, [Leg(SRC, DST, 501)]),
        requested(TID, [Leg(DST, SRC, 500)]),
        requested(TID, [Leg(SRC, DST, 500)], pending=True),
        requested(TID, [Leg(SRC, DST, 500)], metadata={"order": "7"}),
    ],
)
def test_a_request_with_other_contents_is_already_exists(other):
    with pytest.raises(TransferAlreadyExists) as info:
        build(*REQUESTED).request(other)
    assert isinstance(info.value, AlreadyExists)


@pytest.mark.parametrize(
    ("legs", "field"),
    [
        ([Leg(SRC, SRC, 5)], "to_account_id"),
        ([Leg(SRC, DST, 0)], "amount"),
        ([Leg(SRC, DST, 2**63)], "amount"),
        ([Leg(SRC, DST, 1), Leg(FEE, FEE, 1)], "legs"),
        ([Leg(SRC, DST, 2**62), Leg(SRC, FEE, 2**62)], "legs"),
        ([Leg(SRC, DST, 1)] * 17, "legs"),
        ([], "legs"),
    ],
)
def test_bad_legs_are_invalid(legs, field):
    with pytest.raises(InvalidArgument) as info:
        requested(TID, legs)
    assert info.value.field == field


def test_invalid_transition_is_not_a_domain_error():
    assert not issubclass(InvalidTransition, DomainError)


def test_transfer_not_found_carries_the_id():
    assert TransferNotFound(TID).metadata == {"transfer_id": TID}


def test_phases_name_the_refusal_record():
    assert {phase.value for phase in Phase} == {"hold", "credit", "settle", "undo"}


# --- reversals ---


def test_a_completed_transfer_sets_aside_what_a_reversal_takes_back():
    t = build(*COMPLETED)
    assert t.reversible == 500
    assert t.reserve_reversal("r1", 200) == [ReversalReserved("r1", 200)]
    assert t.reserve_reversal("r1", 0) == [ReversalReserved("r1", 500)]


def test_what_is_set_aside_or_reversed_is_not_reversible_again():
    t = build(*COMPLETED, ReversalReserved("r1", 200), ReversalReserved("r2", 100))
    assert t.reversible == 200
    assert t.reserve_reversal("r2", 100) == []  # set aside already: a repeat
    with pytest.raises(ExceedsReversibleAmount):
        t.reserve_reversal("r3", 201)
    t.apply(ReversalSettled("r1", True))
    t.apply(ReversalSettled("r2", False))
    assert (t.reversed_amount, t.reversible) == (200, 300)


def test_only_a_completed_transfer_is_reversed():
    with pytest.raises(TransferNotCompleted):
        build(*FAILED_ON_RESERVE).reserve_reversal("r1", 0)


def test_a_multi_leg_transfer_is_reversed_whole():
    t = build(*FEE_REQUEST, TransferReserved("EUR"), TransferCredited(), TransferCompleted())
    with pytest.raises(PartialReversalOfLegs):
        t.reserve_reversal("r1", 100)
    assert t.reserve_reversal("r1", 0) == [ReversalReserved("r1", 505)]
    back = t.reversal("r1", 505, "refund")
    assert back.legs == [[DST, SRC, 500], [FEE, SRC, 5]]
    assert (back.reverses_transfer_id, back.reason) == (TID, "refund")


def test_a_reversal_of_a_simple_transfer_goes_back_for_its_amount():
    back = build(*COMPLETED).reversal("r1", 120, "")
    assert (back.from_account_id, back.to_account_id, back.amount) == (DST, SRC, 120)


def test_a_reversal_settles_on_its_original_as_it_ended():
    original = build(*COMPLETED, ReversalReserved("r1", 100))
    done = Transfer.from_events("r1", [(original.reversal("r1", 100, ""), None)])
    done.state = TransferState.COMPLETED
    assert original.settle_reversal(done) == [ReversalSettled("r1", True)]
    done.state = TransferState.FAILED
    assert original.settle_reversal(done) == [ReversalSettled("r1", False)]
