"""The words of ``bank``'s refusals: one message writer per ``ErrorInfo`` reason, from the
reason's metadata and what the command knew about its call (``Facts``), completed by
look-ups when the metadata leaves something out (see ``bank_cli.client``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bank.v1 import account_pb2 as apb
from bank_cli.display import money

__all__ = ["MESSAGES", "MISSING", "Context", "Facts", "Missing"]


class Missing:
    """What a look-up finds for an account that does not exist."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


@dataclass
class Facts:
    """What a command knows about its call, to complete what a refusal leaves out."""

    account_id: str | None = None
    currency: str | None = None
    # The amount asked for, in minor units.
    amount: int | None = None
    # (from, to) when the call was a transfer.
    transfer: tuple[str, str] | None = None
    transfer_id: str | None = None
    # Accounts looked up after a refusal: Account, or MISSING.
    accounts: dict[str, apb.Account | Missing] = field(default_factory=dict)
    # The option that repeats the call safely, e.g. "--request-id 3b9e…".
    retry: str | None = None


@dataclass(frozen=True)
class Context:
    facts: Facts
    metadata: Mapping[str, str]
    details: str

    def number(self, key: str) -> int | None:
        try:
            return int(self.metadata[key])
        except (KeyError, ValueError):
            return None

    def account(self, role: int) -> tuple[str, apb.Account | Missing | None]:
        """The source (0) or target (1) of the transfer, and what a look-up found."""
        assert self.facts.transfer is not None
        account_id = self.facts.transfer[role]
        return account_id, self.facts.accounts.get(account_id)

    @property
    def source_currency(self) -> str | None:
        if self.facts.currency:
            return self.facts.currency
        if self.facts.transfer is not None:
            _, source = self.account(0)
            if isinstance(source, apb.Account):
                return source.currency
        return None

    @property
    def transfer_failed(self) -> str:
        """The tail of a transfer's refusal; empty for other calls."""
        if self.facts.transfer is None:
            return ""
        transfer_id = self.metadata.get("transfer_id") or self.facts.transfer_id
        return f"; transfer {transfer_id} is recorded as FAILED, nothing moved"

    def subject(self) -> str:
        account_id = self.metadata.get("account_id") or self.facts.account_id
        return f"account {account_id}" if account_id else "the account"


def _insufficient_funds(c: Context) -> str:
    available, requested = c.number("available"), c.number("requested")
    if requested is None:
        requested = c.facts.amount
    if available is None and c.facts.transfer is not None:
        _, source = c.account(0)
        if isinstance(source, apb.Account):
            available = source.available
    currency = c.source_currency
    parts = []
    if available is not None:
        parts.append(f"available {money(available, currency)}")
    if requested is not None:
        parts.append(f"requested {money(requested, currency)}")
    shown = f" ({', '.join(parts)})" if parts else ""
    units = "" if currency or not parts else " [minor units]"
    return f"refused: insufficient funds{shown}{units}{c.transfer_failed}"


def _account_not_found(c: Context) -> str:
    if "account_id" in c.metadata or c.facts.transfer is None:
        return f"not found: {c.subject()} does not exist"
    missing = [
        f"{role} account {account_id}"
        for role, (account_id, found) in zip(
            ("source", "target"), (c.account(0), c.account(1)), strict=True
        )
        if found is MISSING
    ]
    who = " and ".join(missing) if missing else "the source or the target account"
    return f"not found: {who} does not exist{c.transfer_failed}"


def _account_closed(c: Context) -> str:
    if "account_id" in c.metadata or c.facts.transfer is None:
        return f"refused: {c.subject()} is closed"
    closed = [
        f"{role} account {account_id}"
        for role, (account_id, found) in zip(
            ("source", "target"), (c.account(0), c.account(1)), strict=True
        )
        if isinstance(found, apb.Account) and found.status == apb.ACCOUNT_STATUS_CLOSED
    ]
    who = " and ".join(closed) if closed else "the source or the target account"
    return f"refused: {who} is closed{c.transfer_failed}"


def _currency_mismatch(c: Context) -> str:
    expected, actual = c.metadata.get("expected"), c.metadata.get("actual")
    if (not expected or not actual) and c.facts.transfer is not None:
        (_, source), (_, target) = c.account(0), c.account(1)
        if isinstance(source, apb.Account) and isinstance(target, apb.Account):
            return (
                f"refused: currency mismatch: the source account holds {source.currency},"
                f" the target account {target.currency}{c.transfer_failed}"
            )
        return f"refused: currency mismatch between the two accounts{c.transfer_failed}"
    return f"refused: currency mismatch: {c.subject()} holds {expected}, not {actual}"


def _account_not_empty(c: Context) -> str:
    balance, reserved = c.number("balance"), c.number("reserved")
    currency = c.facts.currency
    held = []
    if balance is not None:
        held.append(f"balance {money(balance, currency)}")
    if reserved is not None:
        held.append(f"reserved {money(reserved, currency)}")
    shown = f" ({', '.join(held)})" if held else ""
    return (
        f"refused: {c.subject()} is not empty{shown}; withdraw or transfer the money out,"
        " and let open transfers finish, before closing it"
    )


def _balance_out_of_range(c: Context) -> str:
    return (
        f"refused: the balance of {c.subject()} would exceed the largest amount an account"
        f" can hold{c.transfer_failed}"
    )


def _reference_reused(c: Context) -> str:
    reference = c.metadata.get("reference") or "?"
    command = c.metadata.get("command") or "call"
    return (
        f"refused: request id {reference!r} was already used for a {command} with other"
        " contents; choose another --request-id"
    )


def _account_already_exists(c: Context) -> str:
    return (
        f"refused: {c.subject()} already exists with another owner or currency;"
        " choose another --account-id"
    )


def _transfer_already_exists(c: Context) -> str:
    transfer_id = c.metadata.get("transfer_id") or c.facts.transfer_id
    return (
        f"refused: transfer {transfer_id} already exists with other accounts or amount;"
        " choose another --transfer-id"
    )


def _transfer_not_found(c: Context) -> str:
    transfer_id = c.metadata.get("transfer_id") or c.facts.transfer_id
    return f"not found: transfer {transfer_id} does not exist"


def _transfer_pending(c: Context) -> str:
    transfer_id = c.metadata.get("transfer_id") or c.facts.transfer_id
    return (
        f"pending: transfer {transfer_id} is recorded and still running (a service is slow"
        " or down) and finishes by itself; run the same command with"
        f" --transfer-id {transfer_id} to get its outcome (it never moves money twice)"
    )


def _store_unavailable(c: Context) -> str:
    return "unavailable: the service cannot reach its database"


def _contention(c: Context) -> str:
    return f"unavailable: {c.subject()} kept changing under concurrent writers"


def _reservation_not_found(c: Context) -> str:
    reference = c.metadata.get("reference") or "?"
    return f"refused: {c.subject()} has no reservation {reference!r}"


def _reservation_settled(c: Context) -> str:
    reference = c.metadata.get("reference") or "?"
    outcome = c.metadata.get("outcome") or "settled"
    return f"refused: reservation {reference!r} was already {outcome}"


def _transfer_id(c: Context) -> str:
    return c.metadata.get("transfer_id") or c.facts.transfer_id or "?"


def _transfer_not_pending(c: Context) -> str:
    state = c.metadata.get("state") or "not pending"
    return (
        f"refused: transfer {_transfer_id(c)} is {state}, not PENDING: only a hold"
        " (bank hold, or bank transfer --pending) can be posted or voided"
    )


def _exceeds_pending_amount(c: Context) -> str:
    held, requested = c.number("held"), c.number("requested")
    currency = c.facts.currency
    shown = f" (held {money(held, currency)})" if held is not None else ""
    asked = money(requested, currency) if requested is not None else "the amount"
    return (
        f"refused: cannot post {asked} of transfer {_transfer_id(c)}: more than it holds"
        f"{shown}; post at most that, or nothing for all of it"
    )


def _transfer_not_completed(c: Context) -> str:
    state = c.metadata.get("state") or "not completed"
    return (
        f"refused: transfer {_transfer_id(c)} is {state}: only a COMPLETED transfer can be reversed"
    )


def _exceeds_reversible_amount(c: Context) -> str:
    left, requested = c.number("reversible"), c.number("requested")
    currency = c.facts.currency
    asked = money(requested, currency) if requested else "all of it"
    left_shown = money(left, currency) if left is not None else "less"
    return (
        f"refused: transfer {_transfer_id(c)} has {left_shown} left to reverse,"
        f" {asked} requested; its reversals never add up to more than it moved"
    )


def _invalid_argument(c: Context) -> str:
    return f"invalid argument: {c.details or c.metadata.get('field', '?')}"


MESSAGES: dict[str, Callable[[Context], str]] = {
    "INVALID_ARGUMENT": _invalid_argument,
    "ACCOUNT_NOT_FOUND": _account_not_found,
    "TRANSFER_NOT_FOUND": _transfer_not_found,
    "ACCOUNT_ALREADY_EXISTS": _account_already_exists,
    "TRANSFER_ALREADY_EXISTS": _transfer_already_exists,
    "REFERENCE_REUSED": _reference_reused,
    "INSUFFICIENT_FUNDS": _insufficient_funds,
    "ACCOUNT_CLOSED": _account_closed,
    "CURRENCY_MISMATCH": _currency_mismatch,
    "ACCOUNT_NOT_EMPTY": _account_not_empty,
    "RESERVATION_NOT_FOUND": _reservation_not_found,
    "RESERVATION_SETTLED": _reservation_settled,
    "BALANCE_OUT_OF_RANGE": _balance_out_of_range,
    "TRANSFER_PENDING": _transfer_pending,
    "TRANSFER_NOT_PENDING": _transfer_not_pending,
    "EXCEEDS_PENDING_AMOUNT": _exceeds_pending_amount,
    "TRANSFER_NOT_COMPLETED": _transfer_not_completed,
    "EXCEEDS_REVERSIBLE_AMOUNT": _exceeds_reversible_amount,
    "STORE_UNAVAILABLE": _store_unavailable,
    "CONTENTION": _contention,
}
