"""How an account is kept in the event store: its stream, its events as stored, each
with the account's balances right after it, so a page of history needs no replay, and its
checkpoints (its standing at every ``checkpoint_every``-th version), from which its past
is rebuilt (``account_service.past``)."""

from __future__ import annotations

from account_service import codec
from account_service.domain import Account, AccountEvent, to_checkpoint
from event_store import NewCheckpoint, NewEvent, RecordedEvent

STREAM_PREFIX = "account-"
DEFAULT_CHECKPOINT_EVERY = 100
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


def checkpoint_due(account: Account, every: int) -> NewCheckpoint | None:
    """The account's checkpoint if one is kept at its version (a multiple of ``every``;
    none when it is 0). Taken as each event is applied, so the appends that store the
    events keep it with them."""
    if every and account.version % every == 0:
        return NewCheckpoint(account.version, to_checkpoint(account))
    return None
