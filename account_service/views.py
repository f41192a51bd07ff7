"""What the account service answers with: an account's state as of a command, and the
entries of its history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from account_service.domain import Account, AccountEvent, AccountStatus, Hold
from shared_kernel.values import INT64_MAX


class AccountView(NamedTuple):
    """An account's state as of one answered command.

    A NamedTuple, not a frozen dataclass: one is built for every step answered, and it
    builds in about a third of the time."""

    account_id: str
    owner: str
    currency: str
    balance: int
    reserved: int
    status: AccountStatus
    version: int
    reservations: tuple[tuple[str, Hold], ...] = ()
    pending_credits: int = 0
    overdraft_limit: int = 0

    @property
    def available(self) -> int:
        # An overdraft limit near the top of int64 must not carry it past what int64 holds.
        return min(self.balance - self.reserved + self.overdraft_limit, INT64_MAX)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One stored event of an account, with the balances right after it."""

    account_id: str
    version: int
    event: AccountEvent
    balance_after: int
    reserved_after: int
    occurred_at: datetime


def view(account: Account, with_reservations: bool = False) -> AccountView:
    """The state of ``account`` (which exists) as answered to its caller."""
    assert account.status is not None
    return AccountView(
        account.account_id,
        account.owner,
        account.currency,
        account.balance,
        account.reserved,
        account.status,
        account.version,
        tuple(account.holds.items()) if with_reservations else (),
        account.pending_credits,
        account.overdraft_limit,
    )
