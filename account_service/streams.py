"""How an account is kept in the event store: its stream, and its events as stored, each
with the account's balances right after it, so a page of history needs no replay."""

from __future__ import annotations

from account_service import codec
from account_service.domain import Account, AccountEvent
from event_store import NewEvent, RecordedEvent

STREAM_PREFIX = "account-"
RUNNING_FIELDS = ("balance_after", "reserved_after")


def stream_id(account_id: str) -> str:
    return STREAM_PREFIX + account_id


def stored(account: Account, event: AccountEvent) -> NewEvent:
    """``event``, just applied to ``account``, as stored: with the balances after it."""
    kind, data = codec.encode(event)
    data["balance_after"] = account.balance
    data["reserved_after"] = account.reserved
    return NewEvent(kind, data)


def event_of(recorded: RecordedEvent) -> AccountEvent:
    """The account event a stored one holds, without the balances stored beside it."""
    data = {k: v for k, v in recorded.data.items() if k not in RUNNING_FIELDS}
    return codec.decode(recorded.type, data)
