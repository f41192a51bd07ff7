"""The account's side of the reservation protocol: reserve, credit, capture and release,
one named test per rule and refusal."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from account_service.domain import (
    AccountIsClosed,
    BalanceOutOfRange,
    Credited,
    CurrencyMismatch,
    Hold,
    InsufficientFunds,
    ReferenceReused,
    ReservationCaptured,
    ReservationNotFound,
    ReservationReleased,
    ReservationSettled,
    Reserved,
    Settlement,
)
from shared_kernel.values import INT64_MAX
from tests.unit.account_builders import ACCOUNT_ID, closed, opened, run

# --------------------------------------------------------------------------- reserve


def test_reserve_emits_reserved_and_adds_hold():
    account = opened(100)
    assert run(account, account.reserve(40, "t1")) == [Reserved(40, "t1")]
    assert account.balance == 100
    assert account.reserved == 40
    assert account.available == 60
    assert account.holds == {"t1": Hold(40, None)}


def test_reserve_records_time_passed_to_apply():
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    account = opened(100)
    account.apply(Reserved(40, "t1"), at)
    assert account.holds["t1"] == Hold(40, at)


def test_holds_are_kept_in_reservation_order():
    account = opened(100)
    for reference in ["c", "a", "b"]:
        run(account, account.reserve(10, reference))
    assert list(account.holds) == ["c", "a", "b"]
    assert account.reserved == 30


def test_reserve_whole_available_balance_is_accepted():
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    run(account, account.reserve(40, "t2"))
    assert account.available == 0


def test_reserve_more_than_available_is_refused():
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    with pytest.raises(InsufficientFunds) as refused:
        account.reserve(41, "t2")
    assert refused.value.metadata["available"] == "40"
    assert refused.value.metadata["requested"] == "41"


def test_reserve_on_closed_account_is_refused():
    with pytest.raises(AccountIsClosed):
        closed().reserve(1, "new")


def test_reserve_repeat_while_held_is_idempotent():
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    # A new reservation of 60 would not fit, but this one is already held.
    assert account.reserve(60, "t1") == []


def test_reserve_repeat_after_capture_answers_reservation_settled():
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    run(account, account.capture("t1"))
    with pytest.raises(ReservationSettled) as refused:
        account.reserve(60, "t1")
    assert refused.value.metadata == {"reference": "t1", "outcome": "captured", "currency": "EUR"}
    assert refused.value.record == ()


def test_reserve_repeat_after_release_answers_reservation_settled():
    # A released hold is never placed again: a stale driver cannot revive it.
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    run(account, account.release("t1"))
    with pytest.raises(ReservationSettled) as refused:
        account.reserve(60, "t1")
    assert refused.value.metadata["outcome"] == "released"


def test_reserve_repeat_after_account_closed_answers_reservation_settled():
    with pytest.raises(ReservationSettled):
        closed().reserve(10, "held")


def test_reserve_reference_reused_with_other_amount_while_held_is_refused():
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    with pytest.raises(ReferenceReused) as refused:
        account.reserve(10, "t1")
    assert refused.value.metadata["reference"] == "t1"


def test_reserve_with_other_amount_after_settled_answers_reservation_settled():
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    run(account, account.release("t1"))
    with pytest.raises(ReservationSettled):
        account.reserve(10, "t1")


# --------------------------------------------------------------------------- credit


def test_credit_emits_credited_and_increases_balance():
    account = opened(100)
    assert run(account, account.credit(40, "t1", "EUR")) == [Credited(40, "t1")]
    assert (account.balance, account.available) == (140, 140)


def test_credit_in_other_currency_is_refused():
    with pytest.raises(CurrencyMismatch) as refused:
        opened(100).credit(40, "t1", "USD")
    assert refused.value.metadata["expected"] == "EUR"
    assert refused.value.metadata["actual"] == "USD"


def test_credit_on_closed_account_is_refused():
    with pytest.raises(AccountIsClosed):
        closed().credit(1, "new", "EUR")


def test_credit_on_closed_account_in_other_currency_is_refused_as_closed():
    with pytest.raises(AccountIsClosed):
        closed().credit(1, "new", "USD")


def test_credit_beyond_int64_max_is_refused():
    account = opened(INT64_MAX)
    with pytest.raises(BalanceOutOfRange):
        account.credit(1, "t1", "EUR")


def test_credit_up_to_int64_max_is_accepted():
    account = opened(1)
    run(account, account.credit(INT64_MAX - 1, "t1", "EUR"))
    assert account.balance == INT64_MAX


def test_credit_repeat_with_same_amount_and_currency_is_idempotent():
    account = opened()
    run(account, account.credit(40, "t1", "EUR"))
    assert account.credit(40, "t1", "EUR") == []


def test_credit_repeat_after_account_closed_is_idempotent():
    assert closed().credit(30, "cr", "EUR") == []


def test_credit_reference_reused_with_other_amount_is_refused():
    account = opened()
    run(account, account.credit(40, "t1", "EUR"))
    with pytest.raises(ReferenceReused) as refused:
        account.credit(41, "t1", "EUR")
    assert refused.value.metadata["reference"] == "t1"


def test_credit_reference_reused_with_other_currency_is_refused():
    account = opened()
    run(account, account.credit(40, "t1", "EUR"))
    with pytest.raises(ReferenceReused):
        account.credit(40, "t1", "USD")


def test_credit_and_deposit_references_are_separate():
    account = opened()
    run(account, account.deposit(40, "same"))
    assert account.credit(41, "same", "EUR") == [Credited(41, "same")]


# --------------------------------------------------------------------------- capture


def test_capture_removes_hold_and_withdraws_its_amount_in_one_event():
    account = opened(100)
    run(account, account.reserve(40, "t1"))
    assert run(account, account.capture("t1")) == [ReservationCaptured(40, "t1")]
    assert account.holds == {}
    assert (account.balance, account.reserved, account.available) == (60, 0, 60)


def test_capture_of_unknown_reference_is_refused():
    with pytest.raises(ReservationNotFound) as refused:
        opened(100).capture("nope")
    assert refused.value.metadata == {"account_id": ACCOUNT_ID, "reference": "nope"}


def test_capture_repeat_is_idempotent():
    account = opened(100)
    run(account, account.reserve(40, "t1"))
    run(account, account.capture("t1"))
    assert account.capture("t1") == []


def test_capture_repeat_after_account_closed_is_idempotent():
    assert closed().capture("held") == []


def test_capture_after_release_is_refused():
    account = opened(100)
    run(account, account.reserve(40, "t1"))
    run(account, account.release("t1"))
    with pytest.raises(ReservationSettled) as refused:
        account.capture("t1")
    assert refused.value.outcome is Settlement.RELEASED
    assert refused.value.metadata["reference"] == "t1"


def test_capture_leaves_other_holds_alone():
    account = opened(100)
    run(account, account.reserve(40, "t1"))
    run(account, account.reserve(30, "t2"))
    run(account, account.capture("t1"))
    assert account.holds == {"t2": Hold(30, None)}
    assert (account.balance, account.reserved, account.available) == (60, 30, 30)


# --------------------------------------------------------------------------- release


def test_release_removes_hold_and_keeps_the_money():
    account = opened(100)
    run(account, account.reserve(40, "t1"))
    assert run(account, account.release("t1")) == [ReservationReleased(40, "t1")]
    assert account.holds == {}
    assert (account.balance, account.reserved, account.available) == (100, 0, 100)


def test_release_of_unknown_reference_is_refused():
    with pytest.raises(ReservationNotFound):
        opened(100).release("nope")


def test_release_repeat_is_idempotent():
    account = opened(100)
    run(account, account.reserve(40, "t1"))
    run(account, account.release("t1"))
    assert account.release("t1") == []


def test_release_repeat_after_account_closed_is_idempotent():
    assert closed().release("freed") == []


def test_release_after_capture_is_refused():
    account = opened(100)
    run(account, account.reserve(40, "t1"))
    run(account, account.capture("t1"))
    with pytest.raises(ReservationSettled) as refused:
        account.release("t1")
    assert refused.value.outcome is Settlement.CAPTURED


def test_holds_together_never_pass_int64_even_with_a_huge_overdraft_limit():
    account = opened(10)
    run(account, account.set_overdraft_limit(INT64_MAX, "limit"))
    assert account.available == INT64_MAX + 10
    run(account, account.reserve(INT64_MAX - 5, "big"))
    with pytest.raises(BalanceOutOfRange) as refused:
        account.reserve(10, "more")
    assert refused.value.record  # refused for good: every repeat gets the same answer
    assert account.reserved == INT64_MAX - 5
    run(account, account.reserve(5, "last"))
    assert account.reserved == INT64_MAX
