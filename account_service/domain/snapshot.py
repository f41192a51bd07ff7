"""An account's whole state as one JSON object, and back; and its checkpoint form.

A snapshot only saves folding the stream again: a reader that meets an unknown format or
anything malformed refuses it (``SnapshotUnusable``) and the state is folded from the
events instead. Format 1 (written before credit holds, refusals, epochs and overdraft
limits existed) is still read: it holds none of them; so is format 2, which wrote an
absent hold time as null (format 3 writes ""; see ``_time``).

A checkpoint is what the past of an account needs, and no more: its standing (balance,
limit, status, open holds and credit holds) without the references it remembers to answer
repeats. A snapshot grows with every reference the account has seen; a checkpoint only
with what is open, so one is cheap to keep at every few versions and to read back. An
account rebuilt from one answers for its state as it was, never for commands.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from account_service.domain.account import (
    Account,
    AccountStatus,
    Hold,
    SettledReservation,
    Settlement,
)
from account_service.domain.events import StepRefused

SNAPSHOT_FORMAT = 3
_READABLE = (1, 2, 3)
CHECKPOINT_FORMAT = 2
_READABLE_CHECKPOINTS = (1, 2)


class SnapshotUnusable(ValueError):
    """A snapshot of an unknown format, or not a well-formed one of a known format."""


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if type(value) is not int:  # bool is not a count
        raise SnapshotUnusable(f"{key} must be an integer")
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if type(value) is not str:
        raise SnapshotUnusable(f"{key} must be a string")
    return value


def _memory_out(memory: Mapping[str, int]) -> list[list[Any]]:
    # Two parallel lists rather than an object: half the time to encode and to decode.
    return [list(memory), list(memory.values())]


# Keys format 1 did not have: absent there means empty.
_ADDED_IN_2 = frozenset({"credit_holds", "limits", "epochs", "confirmed", "cancelled"})


def _memory_in(data: Mapping[str, Any], key: str) -> dict[str, int]:
    """A reference -> amount memory from ``[references, amounts]``."""
    if data["format"] == 1 and key in _ADDED_IN_2:
        return {}
    value = data[key]
    if type(value) is not list or len(value) != 2:
        raise SnapshotUnusable(f"{key} must be [references, amounts]")
    references, amounts = value
    if type(references) is not list or type(amounts) is not list:
        raise SnapshotUnusable(f"{key} must be [references, amounts]")
    if not all(type(reference) is str for reference in references):
        raise SnapshotUnusable(f"{key} holds a reference that is not a string")
    if not all(type(amount) is int for amount in amounts):  # bool is not an amount
        raise SnapshotUnusable(f"{key} holds an amount that is not an integer")
    memory = dict(zip(references, amounts, strict=True))
    if len(memory) != len(references):
        raise SnapshotUnusable(f"{key} names a reference twice")
    return memory


@functools.lru_cache(maxsize=256)
def _time(value: datetime | None) -> str:
    # Cached: the holds placed in one append share its time, and a checkpoint of a busy
    # account writes hundreds of them. No time is "", not null: the store encodes data
    # holding a null by its exact, slower encoder (it cannot tell one from a NaN).
    return "" if value is None else value.isoformat()


def _time_in(value: object, default: datetime | None = None) -> datetime | None:
    """A hold's time as written: "" (null before format 3) is no time, ``default``."""
    if value is None or value == "":
        return default
    if type(value) is not str:
        raise SnapshotUnusable(f"a hold's time must be a string, not {value!r}")
    return datetime.fromisoformat(value)


def to_snapshot(account: Account) -> dict[str, Any]:
    settled: dict[Settlement, dict[str, int]] = {outcome: {} for outcome in Settlement}
    for memory in (account._settled, account._settled_credits):
        for reference, done in memory.items():
            settled[done.outcome][reference] = done.amount
    # Memories are [references, amounts]; holds [reference, amount, time, expiry] in order.
    return {
        "format": SNAPSHOT_FORMAT,
        "account_id": account.account_id,
        "version": account.version,
        "owner": account.owner,
        "currency": account.currency,
        "status": None if account.status is None else account.status.value,
        "balance": account.balance,
        "overdraft_limit": account.overdraft_limit,
        "holds": [
            [reference, hold.amount, _time(hold.reserved_at), _time(hold.expires_at)]
            for reference, hold in account.holds.items()
        ],
        "credit_holds": _memory_out(account.credit_holds),
        "deposits": _memory_out(account._deposits),
        "withdrawals": _memory_out(account._withdrawals),
        "credits": _memory_out(account._credits),
        "limits": _memory_out(account._limits),
        "epochs": _memory_out(account._epochs),
        **{outcome.value: _memory_out(settled[outcome]) for outcome in Settlement},
        "refusals": [
            [r.step, r.amount, r.reference, r.error, r.message, r.details, r.epoch]
            for r in account._refusals.values()
        ],
    }


def from_snapshot(account_id: str, data: Mapping[str, Any]) -> Account:
    if not isinstance(data, Mapping):
        raise SnapshotUnusable("a snapshot must be a JSON object")
    found = data.get("format")
    if type(found) is not int or found not in _READABLE:
        raise SnapshotUnusable(f"unknown snapshot format {found!r}")
    try:
        return _read(account_id, data)
    except SnapshotUnusable:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotUnusable(f"malformed snapshot: {exc!r}") from exc


def _read(account_id: str, data: Mapping[str, Any]) -> Account:
    if data["account_id"] != account_id:
        raise SnapshotUnusable(f"snapshot of account {data['account_id']!r}")
    account = Account(account_id)
    account.version = _int(data, "version")
    if account.version < 0:
        raise SnapshotUnusable("negative version")
    account.owner = _str(data, "owner")
    account.currency = _str(data, "currency")
    status = data["status"]
    account.status = None if status is None else AccountStatus(status)
    account.balance = _int(data, "balance")
    account.overdraft_limit = data["overdraft_limit"] if data["format"] > 1 else 0
    if type(account.overdraft_limit) is not int or account.overdraft_limit < 0:
        raise SnapshotUnusable("overdraft_limit must be an integer >= 0")
    for entry in data["holds"]:
        if data["format"] == 1:
            entry = [*entry, None]
        reference, amount, reserved_at, expires_at = entry
        if type(reference) is not str or type(amount) is not int:
            raise SnapshotUnusable(f"malformed hold {entry!r}")
        if reference in account.holds:
            raise SnapshotUnusable(f"hold {reference!r} listed twice")
        account.holds[reference] = Hold(amount, _time_in(reserved_at), _time_in(expires_at))
        account._reserved += amount
    account.credit_holds = _memory_in(data, "credit_holds")
    account._pending_credits = sum(account.credit_holds.values())
    account._deposits = _memory_in(data, "deposits")
    account._withdrawals = _memory_in(data, "withdrawals")
    account._credits = _memory_in(data, "credits")
    account._limits = _memory_in(data, "limits")
    account._epochs = _memory_in(data, "epochs")
    memories = {outcome: _memory_in(data, outcome.value) for outcome in Settlement}
    _read_settled(account, memories)
    for entry in data["refusals"] if data["format"] > 1 else ():
        step, amount, reference, error, message, details, epoch = entry
        if not all(type(v) is str for v in (step, reference, error, message)):
            raise SnapshotUnusable(f"malformed refusal {entry!r}")
        if type(amount) is not int or type(epoch) is not int or type(details) is not dict:
            raise SnapshotUnusable(f"malformed refusal {entry!r}")
        refused = StepRefused(step, amount, reference, error, message, details, epoch)
        account._refusals[step, reference] = refused
    if account.status is not None and account.version == 0:
        raise SnapshotUnusable("an opened account at version 0")
    return account


def _read_settled(account: Account, memories: dict[Settlement, dict[str, int]]) -> None:
    for kinds, target in (
        ((Settlement.CAPTURED, Settlement.RELEASED), account._settled),
        ((Settlement.CONFIRMED, Settlement.CANCELLED), account._settled_credits),
    ):
        first, second = (memories[kind] for kind in kinds)
        if not first.keys().isdisjoint(second):
            raise SnapshotUnusable(f"a reference both {kinds[0].value} and {kinds[1].value}")
        # Immutable, so one instance serves every hold settled alike: most accounts see
        # the same few amounts again and again.
        shared: dict[tuple[Settlement, int], SettledReservation] = {}
        for outcome, memory in zip(kinds, (first, second), strict=True):
            for reference, amount in memory.items():
                settled = shared.get((outcome, amount))
                if settled is None:
                    settled = shared[outcome, amount] = SettledReservation(outcome, amount)
                target[reference] = settled


def to_checkpoint(account: Account) -> dict[str, Any]:
    """The account's standing; holds as [reference, amount, time, expiry], in order."""
    return {
        "checkpoint": CHECKPOINT_FORMAT,
        "account_id": account.account_id,
        "version": account.version,
        "owner": account.owner,
        "currency": account.currency,
        "status": None if account.status is None else account.status.value,
        "balance": account.balance,
        "overdraft_limit": account.overdraft_limit,
        "holds": [
            [reference, hold.amount, _time(hold.reserved_at), _time(hold.expires_at)]
            for reference, hold in account.holds.items()
        ],
        "credit_holds": _memory_out(account.credit_holds),
    }


def from_checkpoint(account_id: str, data: Mapping[str, Any], recorded_at: datetime) -> Account:
    """The account as of the checkpoint, remembering no references.

    ``recorded_at``: when the checkpoint's version was recorded. A hold without a time was
    placed by the append that wrote the checkpoint (its time was not known yet): it was
    recorded then.
    """
    found = data.get("checkpoint") if isinstance(data, Mapping) else None
    if type(found) is not int or found not in _READABLE_CHECKPOINTS:
        raise SnapshotUnusable("not a checkpoint of a known format")
    try:
        if data["account_id"] != account_id:
            raise SnapshotUnusable(f"checkpoint of account {data['account_id']!r}")
        account = Account(account_id)
        account.version = _int(data, "version")
        account.owner = _str(data, "owner")
        account.currency = _str(data, "currency")
        status = data["status"]
        account.status = None if status is None else AccountStatus(status)
        account.balance = _int(data, "balance")
        account.overdraft_limit = _int(data, "overdraft_limit")
        for reference, amount, reserved_at, expires_at in data["holds"]:
            if type(reference) is not str or type(amount) is not int:
                raise SnapshotUnusable(f"malformed hold {reference!r}")
            account.holds[reference] = Hold(
                amount, _time_in(reserved_at, recorded_at), _time_in(expires_at)
            )
            account._reserved += amount
        account.credit_holds = _memory_in({"format": 2, **data}, "credit_holds")
        account._pending_credits = sum(account.credit_holds.values())
    except SnapshotUnusable:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotUnusable(f"malformed checkpoint: {exc!r}") from exc
    if account.version < 1:
        raise SnapshotUnusable("a checkpoint is of a version >= 1")
    return account
