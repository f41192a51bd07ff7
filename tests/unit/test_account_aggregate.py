"""Every account rule and refusal, one named test each."""

from __future__ import annotations

import copy

import pytest

from account_service.domain import (
    Account,
    AccountAlreadyExists,
    AccountClosed,
    AccountIsClosed,
    AccountNotEmpty,
    AccountNotFound,
    AccountOpened,
    AccountStatus,
    BalanceOutOfRange,
    Credited,
    CurrencyMismatch,
    Deposited,
    InsufficientFunds,
    ReferenceReused,
    ReservationCaptured,
    ReservationNotFound,
    ReservationReleased,
    ReservationSettled,
    Reserved,
    Settlement,
    Withdrawn,
)
from shared_kernel.errors import AlreadyExists, DomainError, InvalidArgument
from shared_kernel.values import INT64_MAX
from tests.unit.account_builders import ACCOUNT_ID, OWNER, closed, opened, run

# --------------------------------------------------------------------------- open


def test_new_account_does_not_exist():
    account = Account.empty(ACCOUNT_ID)
    assert not account.exists
    assert account.version == 0
    assert account.status is None
    assert (account.balance, account.reserved, account.available) == (0, 0, 0)


def test_open_new_account_emits_account_opened():
    account = Account.empty(ACCOUNT_ID)
    assert account.open(OWNER, "EUR") == [AccountOpened(ACCOUNT_ID, OWNER, "EUR")]


def test_opened_account_is_open_and_empty():
    account = Account.empty(ACCOUNT_ID)
    run(account, account.open(OWNER, "EUR"))
    assert account.exists
    assert account.status is AccountStatus.OPEN
    assert (account.owner, account.currency) == (OWNER, "EUR")
    assert (account.balance, account.reserved, account.available) == (0, 0, 0)
    assert account.version == 1


def test_open_again_with_same_owner_and_currency_is_idempotent():
    account = opened(500)
    assert account.open(OWNER, "EUR") == []


def test_open_again_on_closed_account_is_idempotent():
    assert closed().open(OWNER, "EUR") == []


def test_open_again_with_different_owner_is_refused():
    with pytest.raises(AccountAlreadyExists) as refused:
        opened().open("Someone Else", "EUR")
    assert refused.value.metadata["account_id"] == ACCOUNT_ID


def test_open_again_with_different_currency_is_refused():
    with pytest.raises(AccountAlreadyExists):
        opened().open(OWNER, "USD")


# --------------------------------------------------------------------------- missing account


@pytest.mark.parametrize(
    "command",
    [
        lambda a: a.deposit(1, "r"),
        lambda a: a.withdraw(1, "r"),
        lambda a: a.reserve(1, "r"),
        lambda a: a.credit(1, "r", "EUR"),
        lambda a: a.capture("r"),
        lambda a: a.release("r"),
        lambda a: a.close(),
    ],
    ids=["deposit", "withdraw", "reserve", "credit", "capture", "release", "close"],
)
def test_command_on_missing_account_raises_account_not_found(command):
    with pytest.raises(AccountNotFound) as refused:
        command(Account.empty(ACCOUNT_ID))
    assert refused.value.metadata == {"account_id": ACCOUNT_ID}


# --------------------------------------------------------------------------- amount guard


@pytest.mark.parametrize("amount", [0, -1, -(2**63), INT64_MAX + 1])
@pytest.mark.parametrize(
    "command",
    [
        lambda a, n: a.deposit(n, "r"),
        lambda a, n: a.withdraw(n, "r"),
        lambda a, n: a.reserve(n, "r"),
        lambda a, n: a.credit(n, "r", "EUR"),
    ],
    ids=["deposit", "withdraw", "reserve", "credit"],
)
def test_amount_outside_one_to_int64_max_is_invalid_argument(command, amount):
    with pytest.raises(InvalidArgument) as refused:
        command(opened(100), amount)
    assert refused.value.field == "amount"
    assert refused.value.metadata == {"field": "amount"}


# --------------------------------------------------------------------------- deposit


def test_deposit_emits_deposited_and_increases_balance():
    account = opened(100)
    assert run(account, account.deposit(25, "d1")) == [Deposited(25, "d1")]
    assert (account.balance, account.available) == (125, 125)


def test_deposit_repeat_with_same_amount_is_idempotent():
    account = opened()
    run(account, account.deposit(25, "d1"))
    assert account.deposit(25, "d1") == []


def test_deposit_repeat_after_account_closed_is_idempotent():
    # The repeat is answered before the closed check.
    assert closed().deposit(50, "dep") == []


def test_deposit_reference_reused_with_other_amount_is_refused():
    account = opened()
    run(account, account.deposit(25, "d1"))
    with pytest.raises(ReferenceReused) as refused:
        account.deposit(26, "d1")
    assert refused.value.metadata["reference"] == "d1"


def test_deposit_reference_reused_on_closed_account_is_refused_as_reuse():
    with pytest.raises(ReferenceReused):
        closed().deposit(51, "dep")


def test_deposit_on_closed_account_is_refused():
    with pytest.raises(AccountIsClosed) as refused:
        closed().deposit(1, "new")
    assert refused.value.metadata == {"account_id": ACCOUNT_ID}


def test_deposit_up_to_int64_max_is_accepted():
    account = opened(100)
    run(account, account.deposit(INT64_MAX - 100, "big"))
    assert account.balance == INT64_MAX


def test_deposit_beyond_int64_max_is_refused():
    account = opened(100)
    with pytest.raises(BalanceOutOfRange) as refused:
        account.deposit(INT64_MAX - 99, "big")
    assert refused.value.metadata["balance"] == "100"
    assert refused.value.metadata["amount"] == str(INT64_MAX - 99)


# --------------------------------------------------------------------------- withdraw


def test_withdraw_emits_withdrawn_and_decreases_balance():
    account = opened(100)
    assert run(account, account.withdraw(30, "w1")) == [Withdrawn(30, "w1")]
    assert (account.balance, account.available) == (70, 70)


def test_withdraw_whole_available_balance_is_accepted():
    account = opened(100)
    run(account, account.withdraw(100, "w1"))
    assert account.balance == 0


def test_withdraw_more_than_available_is_refused():
    with pytest.raises(InsufficientFunds) as refused:
        opened(100).withdraw(101, "w1")
    assert refused.value.metadata["available"] == "100"
    assert refused.value.metadata["requested"] == "101"
    assert (refused.value.available, refused.value.requested) == (100, 101)


def test_withdraw_cannot_take_reserved_money():
    account = opened(100)
    run(account, account.reserve(60, "t1"))
    with pytest.raises(InsufficientFunds) as refused:
        account.withdraw(41, "w1")
    assert refused.value.available == 40


def test_withdraw_on_closed_account_is_refused():
    with pytest.raises(AccountIsClosed):
        closed().withdraw(1, "new")


def test_withdraw_repeat_with_same_amount_is_idempotent():
    account = opened(100)
    run(account, account.withdraw(30, "w1"))
    assert account.withdraw(30, "w1") == []


def test_withdraw_repeat_after_funds_moved_is_idempotent():
    account = opened(100)
    run(account, account.withdraw(30, "w1"))
    run(account, account.withdraw(70, "w2"))
    # Not enough money for a new withdrawal of 30, but this one already happened.
    assert account.withdraw(30, "w1") == []


def test_withdraw_repeat_after_account_closed_is_idempotent():
    assert closed().withdraw(150, "wd") == []


def test_withdraw_reference_reused_with_other_amount_is_refused():
    account = opened(100)
    run(account, account.withdraw(30, "w1"))
    with pytest.raises(ReferenceReused):
        account.withdraw(31, "w1")


def test_deposit_and_withdraw_references_are_separate():
    account = opened(100)
    run(account, account.deposit(10, "same"))
    assert account.withdraw(10, "same") == [Withdrawn(10, "same")]


# --------------------------------------------------------------------------- close


def test_close_empty_account_emits_account_closed():
    account = opened()
    assert run(account, account.close()) == [AccountClosed()]
    assert account.status is AccountStatus.CLOSED
    assert account.exists


def test_close_repeat_is_idempotent():
    assert closed().close() == []


def test_close_with_balance_is_refused():
    with pytest.raises(AccountNotEmpty) as refused:
        opened(1).close()
    assert refused.value.metadata["balance"] == "1"
    assert refused.value.metadata["reserved"] == "0"


def test_close_with_reservation_held_is_refused():
    account = opened(50)
    run(account, account.reserve(50, "t1"))
    with pytest.raises(AccountNotEmpty) as refused:
        account.close()
    assert refused.value.metadata["reserved"] == "50"


def test_close_after_money_left_is_accepted():
    account = opened(50)
    run(account, account.reserve(50, "t1"))
    run(account, account.capture("t1"))
    assert account.close() == [AccountClosed()]


# --------------------------------------------------------------------------- decisions are pure


@pytest.mark.parametrize(
    "command",
    [
        lambda a: a.open(OWNER, "EUR"),
        lambda a: a.open("Other", "EUR"),
        lambda a: a.deposit(5, "new"),
        lambda a: a.deposit(INT64_MAX, "huge"),
        lambda a: a.withdraw(5, "new"),
        lambda a: a.withdraw(10**6, "too-much"),
        lambda a: a.reserve(5, "new"),
        lambda a: a.reserve(10**6, "too-much"),
        lambda a: a.credit(5, "new", "EUR"),
        lambda a: a.credit(5, "new", "USD"),
        lambda a: a.capture("held"),
        lambda a: a.release("held"),
        lambda a: a.capture("nope"),
        lambda a: a.close(),
    ],
)
def test_decisions_never_change_the_account(command):
    account = opened(100)
    run(account, account.reserve(10, "held"))
    before = copy.deepcopy(account)
    try:
        command(account)
    except DomainError:
        pass
    assert account == before


# --------------------------------------------------------------------------- folding


def test_apply_counts_every_event_as_a_version():
    account = Account.empty(ACCOUNT_ID)
    events = [
        AccountOpened(ACCOUNT_ID, OWNER, "EUR"),
        Deposited(100, "d"),
        Reserved(40, "t"),
        ReservationCaptured(40, "t"),
        Credited(5, "c"),
        Withdrawn(65, "w"),
        AccountClosed(),
    ]
    for version, event in enumerate(events, start=1):
        account.apply(event)
        assert account.version == version
    assert account.balance == 0


def test_apply_does_not_check_rules():
    # History is the truth: a stored deposit after closing still counts.
    account = Account.from_events(
        ACCOUNT_ID, [AccountOpened(ACCOUNT_ID, OWNER, "EUR"), AccountClosed(), Deposited(7, "d")]
    )
    assert account.balance == 7
    assert account.version == 3


def test_apply_rejects_objects_that_are_not_account_events():
    with pytest.raises(TypeError):
        Account.empty(ACCOUNT_ID).apply(object())  # type: ignore[arg-type]


def test_from_events_equals_applying_step_by_step():
    events = [
        AccountOpened(ACCOUNT_ID, OWNER, "EUR"),
        Deposited(100, "d"),
        Reserved(40, "t1"),
        Reserved(30, "t2"),
        ReservationReleased(30, "t2"),
        Credited(5, "c"),
    ]
    stepwise = Account.empty(ACCOUNT_ID)
    for event in events:
        stepwise.apply(event)
    assert Account.from_events(ACCOUNT_ID, events) == stepwise
    assert (stepwise.balance, stepwise.reserved, stepwise.version) == (105, 40, 6)


def test_from_no_events_is_the_empty_account():
    assert Account.from_events(ACCOUNT_ID, []) == Account.empty(ACCOUNT_ID)


def test_accounts_with_different_history_are_not_equal():
    a = Account.from_events(
        ACCOUNT_ID, [AccountOpened(ACCOUNT_ID, OWNER, "EUR"), Deposited(5, "x")]
    )
    b = Account.from_events(
        ACCOUNT_ID, [AccountOpened(ACCOUNT_ID, OWNER, "EUR"), Deposited(5, "y")]
    )
    assert a != b


def test_reserved_equals_sum_of_holds_after_settlements():
    account = opened(1000)
    for i in range(10):
        run(account, account.reserve(i + 1, f"t{i}"))
    for i in range(0, 10, 3):
        run(account, account.capture(f"t{i}"))
    for i in range(1, 10, 3):
        run(account, account.release(f"t{i}"))
    assert account.reserved == sum(hold.amount for hold in account.holds.values())
    assert account.available == account.balance - account.reserved


def test_events_are_immutable():
    event = Deposited(5, "x")
    with pytest.raises(AttributeError):
        event.amount = 6  # type: ignore[misc]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("error", "base"),
    [
        (AccountNotFound(ACCOUNT_ID), DomainError),
        (AccountAlreadyExists(ACCOUNT_ID), AlreadyExists),
        (ReferenceReused("r", "deposit"), AlreadyExists),
        (InsufficientFunds(ACCOUNT_ID, 1, 2), DomainError),
        (AccountIsClosed(ACCOUNT_ID), DomainError),
        (CurrencyMismatch(ACCOUNT_ID, "EUR", "USD"), DomainError),
        (AccountNotEmpty(ACCOUNT_ID, 1, 0), DomainError),
        (ReservationNotFound(ACCOUNT_ID, "r"), DomainError),
        (ReservationSettled("r", Settlement.CAPTURED), DomainError),
        (BalanceOutOfRange(ACCOUNT_ID, 1, INT64_MAX), DomainError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_errors_are_domain_errors_with_a_message(error, base):
    assert isinstance(error, base)
    assert error.message
    assert str(error) == error.message
    assert all(isinstance(value, str) for value in error.metadata.values())
