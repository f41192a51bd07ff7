"""An account's checkpoint form: its standing without the references it remembers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from account_service.domain import (
    Account,
    AccountClosed,
    AccountOpened,
    CreditHeld,
    Deposited,
    OverdraftLimitSet,
    Reserved,
    SnapshotUnusable,
    StepRefused,
    Withdrawn,
    from_checkpoint,
    to_checkpoint,
)
from event_store.port import decode_data, encode_data

ACCOUNT_ID = "acc-1"
T1 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
T2 = datetime(2024, 6, 2, 12, 0, tzinfo=UTC)


def busy_account() -> Account:
    account = Account(ACCOUNT_ID)
    account.apply(StepRefused("credit", 5, "t-0", "AccountNotFound", "no such account"), T1)
    for event in (
        AccountOpened(ACCOUNT_ID, "Ada", "EUR"),
        Deposited(500, "d-1"),
        OverdraftLimitSet(200, "limit-1"),
        Withdrawn(600, "w-1"),
        Reserved(40, "t-1", 1, 1_900_000_000_000_000),
        CreditHeld(25, "t-2"),
    ):
        account.apply(event, T1)
    return account


def test_a_checkpoint_rebuilds_the_accounts_standing() -> None:
    account = busy_account()
    rebuilt = from_checkpoint(ACCOUNT_ID, to_checkpoint(account), T2)
    standing = ("owner", "currency", "status", "balance", "overdraft_limit", "version")
    assert {n: getattr(rebuilt, n) for n in standing} == {n: getattr(account, n) for n in standing}
    assert (rebuilt.reserved, rebuilt.available, rebuilt.pending_credits) == (40, 60, 25)
    assert rebuilt.holds == account.holds
    assert rebuilt.credit_holds == {"t-2": 25}


def test_a_rebuilt_account_remembers_no_references() -> None:
    rebuilt = from_checkpoint(ACCOUNT_ID, to_checkpoint(busy_account()), T2)
    assert rebuilt.remembered == 2  # the open hold and the held credit, nothing else


def test_a_checkpoint_stays_small_however_much_the_account_remembers() -> None:
    account = busy_account()
    small = len(str(to_checkpoint(account)))
    for n in range(1_000):
        account.apply(Deposited(1, f"d-{n + 2}"), T1)
    assert len(str(to_checkpoint(account))) < small + 20
    assert len(str(account.to_snapshot())) > 10 * small


def test_a_hold_placed_by_the_checkpoints_own_append_takes_its_time() -> None:
    account = busy_account()
    account.apply(Reserved(10, "t-3"))  # applied before its append: no time yet
    rebuilt = from_checkpoint(ACCOUNT_ID, to_checkpoint(account), T2)
    assert rebuilt.holds["t-3"].reserved_at == T2
    assert rebuilt.holds["t-1"].reserved_at == T1


def test_a_closed_account_checkpoints_as_closed() -> None:
    account = Account(ACCOUNT_ID)
    account.apply(AccountOpened(ACCOUNT_ID, "Ada", "EUR"), T1)
    account.apply(AccountClosed(), T1)
    rebuilt = from_checkpoint(ACCOUNT_ID, to_checkpoint(account), T1)
    assert (rebuilt.status, rebuilt.version) == (account.status, 2)


def test_a_checkpoint_before_the_opening_is_of_an_account_that_does_not_exist() -> None:
    account = Account(ACCOUNT_ID)
    account.apply(StepRefused("reserve", 5, "t-0", "AccountNotFound", "no such account"), T1)
    rebuilt = from_checkpoint(ACCOUNT_ID, to_checkpoint(account), T1)
    assert not rebuilt.exists
    assert rebuilt.version == 1


@pytest.mark.parametrize(
    "change",
    [
        {"checkpoint": 99},
        {"checkpoint": True},
        {"checkpoint": 2.0},
        {"account_id": "acc-2"},
        {"balance": "500"},
        {"status": "frozen"},
        {"version": 0},
        {"holds": [["t-1", "40", None, None]]},
        {"holds": [["t-1", 40, 1717243200, ""]]},
        {"holds": [["t-1"]]},
        {"credit_holds": {"t-2": 25}},
    ],
)
def test_a_malformed_checkpoint_is_unusable(change: dict) -> None:
    data = {**to_checkpoint(busy_account()), **change}
    with pytest.raises(SnapshotUnusable):
        from_checkpoint(ACCOUNT_ID, data, T1)


def test_a_snapshot_is_not_a_checkpoint_nor_the_reverse() -> None:
    account = busy_account()
    with pytest.raises(SnapshotUnusable):
        from_checkpoint(ACCOUNT_ID, account.to_snapshot(), T1)
    with pytest.raises(SnapshotUnusable):
        Account.from_snapshot(ACCOUNT_ID, to_checkpoint(account))


def test_a_checkpoint_writes_no_null_for_the_times_a_hold_lacks() -> None:
    # A null sends the whole checkpoint through the store's exact, slower JSON encoder.
    account = busy_account()
    account.apply(Reserved(10, "t-3"))  # no time yet, and no expiry
    data = to_checkpoint(account)
    assert "null" not in encode_data(data)
    rebuilt = from_checkpoint(ACCOUNT_ID, decode_data(encode_data(data)), T2)
    assert rebuilt.holds["t-3"].reserved_at == T2
    assert rebuilt.holds["t-3"].expires_at is None
    assert rebuilt.holds["t-1"].expires_at == account.holds["t-1"].expires_at


def test_a_checkpoint_of_the_first_format_with_null_times_is_still_read() -> None:
    account = busy_account()
    account.apply(Reserved(10, "t-3"))
    first = to_checkpoint(account)
    first["checkpoint"] = 1
    first["holds"] = [[r, a, t or None, e or None] for r, a, t, e in first["holds"]]
    assert first["holds"][-1][2:] == [None, None]
    rebuilt = from_checkpoint(ACCOUNT_ID, decode_data(encode_data(first)), T2)
    assert rebuilt.holds == from_checkpoint(ACCOUNT_ID, to_checkpoint(account), T2).holds
    assert rebuilt.holds["t-3"].reserved_at == T2
