"""Accounts in a known state for the unit tests of the aggregate."""

from __future__ import annotations

from account_service.domain import Account, AccountOpened, AccountStatus, Deposited

ACCOUNT_ID = "6f1c3a52-8d0e-4f57-9a35-1b2c3d4e5f60"
OWNER = "Ada Lovelace"


def run(account: Account, events: list) -> list:
    """Apply what a decision returned, as the application does after storing it."""
    for event in events:
        account.apply(event)
    return events


def opened(balance: int = 0, currency: str = "EUR") -> Account:
    events = [AccountOpened(ACCOUNT_ID, OWNER, currency)]
    if balance:
        events.append(Deposited(balance, "initial"))
    return Account.from_events(ACCOUNT_ID, events)


def closed() -> Account:
    account = opened(100)
    run(account, account.deposit(50, "dep"))
    run(account, account.withdraw(150, "wd"))
    run(account, account.credit(30, "cr", "EUR"))
    run(account, account.reserve(10, "held"))
    run(account, account.capture("held"))
    run(account, account.reserve(20, "freed"))
    run(account, account.release("freed"))
    run(account, account.withdraw(20, "wd2"))
    run(account, account.close())
    assert account.status is AccountStatus.CLOSED
    return account
