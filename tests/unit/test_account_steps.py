"""The reservation protocol's steps on one account: final outcomes, epochs, credit holds,
partial captures and overdraft limits."""

from __future__ import annotations

import pytest

from account_service.domain import (
    Account,
    AccountIsClosed,
    AccountNotEmpty,
    AccountNotFound,
    AccountOpened,
    CreditCancelled,
    CreditConfirmed,
    CreditHeld,
    CurrencyMismatch,
    Deposited,
    EpochFenced,
    ExceedsHold,
    InsufficientFunds,
    OverdraftLimitSet,
    ReferenceReused,
    ReservationCaptured,
    ReservationNotFound,
    ReservationSettled,
    StepRefused,
)
from shared_kernel.errors import DomainError, InvalidArgument
from shared_kernel.values import INT64_MAX

ACCOUNT_ID = "6f1c3a52-8d0e-4f57-9a35-1b2c3d4e5f60"


def run(account: Account, events: list) -> list:
    for event in events:
        account.apply(event)
    return events


def refused(account: Account, command) -> DomainError:
    """Runs a command that must be refused; stores what the refusal records, as the
    application does, and returns the refusal."""
    with pytest.raises(DomainError) as caught:
        command(account)
    run(account, list(caught.value.record))
    return caught.value


def opened(balance: int = 0, currency: str = "EUR") -> Account:
    events = [AccountOpened(ACCOUNT_ID, "Ada", currency)]
    if balance:
        events.append(Deposited(balance, "initial"))
    return Account.from_events(ACCOUNT_ID, events)


# --------------------------------------------------------------------------- final refusals


def test_a_refused_reserve_is_stored_and_refused_again_after_the_funds_arrive():
    account = opened(10)
    first = refused(account, lambda a: a.reserve(50, "t1", epoch=1))
    assert isinstance(first, InsufficientFunds)
    assert account.version == 3  # the refusal is an event of the account
    run(account, account.deposit(100, "more"))
    again = refused(account, lambda a: a.reserve(50, "t1", epoch=1))
    assert type(again) is InsufficientFunds
    assert (again.message, again.metadata) == (first.message, first.metadata)
    assert again.record == ()  # answered from memory: nothing more to store
    assert account.reserved == 0


def test_a_refused_credit_on_an_account_not_opened_stays_refused_after_it_opens():
    account = Account.empty(ACCOUNT_ID)
    first = refused(account, lambda a: a.credit(40, "t1", "EUR", epoch=1))
    assert isinstance(first, AccountNotFound)
    assert not account.exists and account.version == 1
    run(account, account.open("Ada", "EUR"))
    assert account.exists and account.version == 2
    again = refused(account, lambda a: a.credit(40, "t1", "EUR", epoch=1))
    assert type(again) is AccountNotFound
    assert account.balance == 0
    # Another reference is credited as usual.
    run(account, account.credit(40, "t2", "EUR", epoch=1))
    assert account.balance == 40


def test_a_refused_reserve_on_a_closed_account_is_remembered():
    account = opened()
    run(account, account.close())
    assert isinstance(refused(account, lambda a: a.reserve(5, "t1")), AccountIsClosed)
    assert isinstance(refused(account, lambda a: a.reserve(5, "t1")), AccountIsClosed)


def test_a_refused_step_is_remembered_per_step():
    # A refused reserve does not answer a credit of the same reference.
    account = opened(0)
    assert isinstance(refused(account, lambda a: a.reserve(5, "t1")), InsufficientFunds)
    run(account, account.credit(5, "t1", "EUR"))
    assert account.balance == 5


def test_the_stored_refusal_names_the_step_and_the_error():
    account = opened(10)
    error = refused(account, lambda a: a.reserve(50, "t1", epoch=2))
    (stored,) = error.record
    assert stored == StepRefused(
        "reserve", 50, "t1", "InsufficientFunds", error.message, error.metadata, 2
    )


def test_invalid_arguments_and_reuse_are_not_stored():
    account = opened(100)
    run(account, account.reserve(10, "t1"))
    with pytest.raises(ReferenceReused) as reuse:
        account.reserve(20, "t1")
    assert reuse.value.record == ()
    with pytest.raises(InvalidArgument) as bad:
        account.reserve(0, "t2")
    assert bad.value.record == ()


def test_a_reserve_in_another_currency_is_refused_for_good():
    account = opened(100, "EUR")
    assert isinstance(refused(account, lambda a: a.reserve(5, "t1", "USD")), CurrencyMismatch)
    assert isinstance(refused(account, lambda a: a.reserve(5, "t1", "EUR")), CurrencyMismatch)
    run(account, account.reserve(5, "t2", "EUR"))
    assert account.reserved == 5


# --------------------------------------------------------------------------- epochs


def test_a_step_older_than_the_newest_epoch_stored_for_the_reference_is_fenced():
    account = opened(100)
    run(account, account.reserve(10, "t1", epoch=1))
    run(account, account.capture("t1", epoch=3))
    with pytest.raises(EpochFenced) as fenced:
        account.release("t1", epoch=2)
    assert fenced.value.metadata == {"reference": "t1", "epoch": "2", "newest": "3"}
    with pytest.raises(EpochFenced):
        account.credit(10, "t1", "EUR", epoch=1)


def test_the_newest_epoch_and_steps_without_one_pass():
    account = opened(100)
    run(account, account.reserve(10, "t1", epoch=2))
    assert account.reserve(10, "t1", epoch=2) == []
    assert account.reserve(10, "t1") == []  # no epoch: a caller outside the protocol
    run(account, account.release("t1", epoch=5))
    assert account.release("t1", epoch=5) == []


def test_epochs_are_per_reference():
    account = opened(100)
    run(account, account.reserve(10, "t1", epoch=4))
    run(account, account.reserve(10, "t2", epoch=1))
    assert account.holds.keys() == {"t1", "t2"}


def test_a_refusal_carries_its_epoch_too():
    account = opened(0)
    refused(account, lambda a: a.reserve(10, "t1", epoch=3))
    with pytest.raises(EpochFenced):
        account.reserve(10, "t1", epoch=2)


# --------------------------------------------------------------------------- partial capture


def test_a_capture_of_part_of_the_hold_withdraws_that_and_releases_the_rest():
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    assert run(account, account.capture("t1", 25)) == [ReservationCaptured(25, "t1")]
    assert (account.balance, account.reserved, account.available) == (75, 0, 75)
    assert account.capture("t1", 25) == []


def test_a_capture_of_more_than_the_hold_is_refused():
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    with pytest.raises(ExceedsHold):
        account.capture("t1", 61)


def test_a_hold_keeps_its_expiry():
    account = opened(100)
    run(account, account.reserve(60, "t1", expires_at=1_767_225_600_000_000))
    assert account.holds["t1"].expires_at.isoformat() == "2026-01-01T00:00:00+00:00"


# --------------------------------------------------------------------------- credit holds


def test_a_held_credit_counts_as_pending_not_as_balance():
    account = opened(10)
    assert run(account, account.hold_credit(40, "t1", "EUR")) == [CreditHeld(40, "t1")]
    assert (account.balance, account.pending_credits, account.available) == (10, 40, 10)
    assert account.hold_credit(40, "t1", "EUR") == []


def test_a_confirmed_credit_joins_the_balance():
    account = opened(10)
    run(account, account.hold_credit(40, "t1", "EUR"))
    assert run(account, account.confirm_credit("t1")) == [CreditConfirmed(40, "t1")]
    assert (account.balance, account.pending_credits) == (50, 0)
    assert account.confirm_credit("t1") == []
    with pytest.raises(ReservationSettled):
        account.cancel_credit("t1")
    with pytest.raises(ReservationSettled):
        account.hold_credit(40, "t1", "EUR")


def test_a_cancelled_credit_leaves_the_balance_as_it_was():
    account = opened(10)
    run(account, account.hold_credit(40, "t1", "EUR"))
    assert run(account, account.cancel_credit("t1")) == [CreditCancelled(40, "t1")]
    assert (account.balance, account.pending_credits) == (10, 0)
    with pytest.raises(ReservationSettled):
        account.confirm_credit("t1")


def test_confirming_an_unknown_credit_hold_is_not_found():
    with pytest.raises(ReservationNotFound):
        opened().confirm_credit("nothing")


def test_an_account_with_pending_credits_cannot_close():
    account = opened(0)
    run(account, account.hold_credit(40, "t1", "EUR"))
    with pytest.raises(AccountNotEmpty) as refusal:
        account.close()
    assert refusal.value.metadata["pending_credits"] == "40"


def test_a_credit_hold_is_refused_for_good_like_a_credit():
    account = opened(0, "EUR")
    assert isinstance(refused(account, lambda a: a.hold_credit(5, "t1", "USD")), CurrencyMismatch)
    assert isinstance(refused(account, lambda a: a.hold_credit(5, "t1", "EUR")), CurrencyMismatch)


def test_pending_credits_count_against_the_room_of_the_balance():
    account = opened(0)
    run(account, account.hold_credit(INT64_MAX, "t1", "EUR"))
    with pytest.raises(DomainError) as refusal:
        account.deposit(1, "d")
    assert type(refusal.value).__name__ == "BalanceOutOfRange"


# --------------------------------------------------------------------------- overdraft


def test_an_overdraft_limit_lets_debits_go_below_zero_down_to_it():
    account = opened(10)
    assert run(account, account.set_overdraft_limit(50, "lim-1")) == [
        OverdraftLimitSet(50, "lim-1")
    ]
    assert account.available == 60
    run(account, account.withdraw(40, "w1"))
    run(account, account.reserve(20, "t1"))
    assert (account.balance, account.reserved, account.available) == (-30, 20, 0)
    with pytest.raises(InsufficientFunds):
        account.withdraw(1, "w2")


def test_lowering_the_limit_below_what_is_used_only_blocks_further_debits():
    account = opened(0)
    run(account, account.set_overdraft_limit(100, "lim-1"))
    run(account, account.withdraw(80, "w1"))
    run(account, account.set_overdraft_limit(10, "lim-2"))
    assert (account.balance, account.available) == (-80, -70)
    assert isinstance(refused(account, lambda a: a.reserve(1, "t1")), InsufficientFunds)
    run(account, account.deposit(100, "d1"))
    assert account.available == 30


def test_setting_the_limit_is_idempotent_by_request_id():
    account = opened(0)
    run(account, account.set_overdraft_limit(100, "lim-1"))
    assert account.set_overdraft_limit(100, "lim-1") == []
    with pytest.raises(ReferenceReused):
        account.set_overdraft_limit(5, "lim-1")


def test_a_negative_limit_is_invalid():
    with pytest.raises(InvalidArgument) as bad:
        opened().set_overdraft_limit(-1, "lim")
    assert bad.value.field == "overdraft_limit"


def test_an_overdrawn_account_cannot_close():
    account = opened(0)
    run(account, account.set_overdraft_limit(100, "lim-1"))
    run(account, account.withdraw(5, "w1"))
    with pytest.raises(AccountNotEmpty):
        account.close()


def test_snapshots_keep_every_new_memory():
    account = opened(100)
    run(account, account.set_overdraft_limit(20, "lim"))
    run(account, account.reserve(10, "t1", epoch=3, expires_at=1_767_225_600_000_000))
    run(account, account.hold_credit(7, "t2", "EUR", epoch=2))
    run(account, account.hold_credit(8, "t3", "EUR"))
    run(account, account.confirm_credit("t3"))
    refused(account, lambda a: a.credit(1, "t4", "USD", epoch=2))
    restored = Account.from_snapshot(ACCOUNT_ID, account.to_snapshot())
    assert restored == account
    assert isinstance(refused(restored, lambda a: a.credit(1, "t4", "EUR")), CurrencyMismatch)
    with pytest.raises(EpochFenced):
        restored.release("t1", epoch=2)


def test_a_format_1_snapshot_still_loads():
    account = opened(100)
    run(account, account.reserve(10, "t1"))
    data = account.to_snapshot()
    old = {
        k: v
        for k, v in data.items()
        if k
        not in (
            "overdraft_limit",
            "credit_holds",
            "limits",
            "epochs",
            "confirmed",
            "cancelled",
            "refusals",
        )
    }
    old["format"] = 1
    old["holds"] = [entry[:3] for entry in old["holds"]]
    assert Account.from_snapshot(ACCOUNT_ID, old) == account


def test_reserved_events_of_an_unopened_account_are_not_a_reason_to_exist():
    account = Account.empty(ACCOUNT_ID)
    refused(account, lambda a: a.reserve(5, "t1"))
    assert not account.exists
    with pytest.raises(AccountNotFound):
        account.deposit(5, "d")
