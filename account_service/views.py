"""What the account service answers with: an account's state as of a command, and the
entries of its history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from account_service.domain import Account, AccountEvent, AccountStatus, Hold


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account's state as of one answered command."""

    account_id: str
    owner: str
    currency: str
    balance: int
    reserved: int
    status: AccountStatus
    version: int
    reservations: tuple[tuple[str, Hold], ...] = ()

    @property
    def available(self) -> int:
        return self.balance - self.reserved


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
        account_id=account.account_id,
        owner=account.owner,
        currency=account.currency,
        balance=account.balance,
        reserved=account.reserved,
        status=account.status,
        version=account.version,
        reservations=tuple(account.holds.items()) if with_reservations else (),
    )
