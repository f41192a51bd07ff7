"""What the account and transfer commands share when they run: the connection, and one
human message and exit status for every error the services answer with (their options
and exit statuses are in ``bank_cli.options``).

The client is synchronous (``grpc`` channels, one call at a time). A refusal is read from
its gRPC code and the ``ErrorInfo`` reason and metadata the services attach; when the
metadata leaves something out (the currency of an amount, which account of a transfer was
refused), the account service is asked, on a best-effort basis, before the message is
written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from bank_cli.display import money
from bank_cli.options import (
    DEFAULT_ACCOUNTS,
    DEFAULT_TIMEOUT,
    DEFAULT_TRANSFERS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from grpc_common import auth, tls
from grpc_common.errors import error_info
from grpc_common.tls import SecurityConfigError
from shared_kernel.errors import InvalidArgument

LOOKUP_TIMEOUT = 5.0

_EXIT_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_REFUSED,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_REFUSED,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_REFUSED,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.CANCELLED: EXIT_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE,
    grpc.StatusCode.ABORTED: EXIT_UNAVAILABLE,
}


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    address: str


class CallFailed(Exception):
    """A call answered with an error status."""

    def __init__(self, error: grpc.RpcError, service: Service) -> None:
        super().__init__(f"{service.name}: {_code(error).name}")
        self.error = error
        self.service = service


class Missing:
    """What a look-up finds for an account that does not exist."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


class Client:
    """Stubs of both services over synchronous channels, with one deadline per call."""

    def __init__(
        self,
        accounts_channel: grpc.Channel,
        transfers_channel: grpc.Channel,
        *,
        accounts_address: str = DEFAULT_ACCOUNTS,
        transfers_address: str = DEFAULT_TRANSFERS,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.account_service = Service("account service", accounts_address)
        self._metadata = tuple(metadata)
        self.transfer_service = Service("transfer service", transfers_address)
        self.timeout = timeout
        self._channels = [accounts_channel, transfers_channel]
        self._accounts = account_pb2_grpc.AccountServiceStub(accounts_channel)
        self._transfers = transfer_pb2_grpc.TransferServiceStub(transfers_channel)

    @classmethod
    def connect(
        cls,
        accounts: str,
        transfers: str,
        timeout: float | None,
        *,
        ca: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        token_file: str | None = None,
    ) -> Client:
        """Channels to both services: TLS when ``ca`` is given (mutual with a client
        certificate), a bearer token on every call when ``token_file`` is given.

        Raises ``SecurityConfigError`` for files that cannot be used, naming the file
        and never the token."""
        if (client_cert or client_key) and not ca:
            raise SecurityConfigError("a client certificate is for TLS: give --ca as well")
        metadata = auth.bearer_metadata(auth.read_token(token_file)) if token_file else ()
        if ca:
            credentials = tls.channel_credentials(ca, client_cert, client_key)
            channels = [grpc.secure_channel(a, credentials) for a in (accounts, transfers)]
        else:
            channels = [grpc.insecure_channel(a) for a in (accounts, transfers)]
        return cls(
            *channels,
            accounts_address=accounts,
            transfers_address=transfers,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            metadata=metadata,
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Client:
        return cls.connect(
            args.accounts,
            args.transfers,
            args.timeout,
            ca=getattr(args, "ca", None),
            client_cert=getattr(args, "client_cert", None),
            client_key=getattr(args, "client_key", None),
            token_file=getattr(args, "token_file", None),
        )

    def account(self, method: str, request: Message) -> Any:
        """A unary call to AccountService; ``CallFailed`` on an error status."""
        return self._unary(self._accounts, method, request, self.account_service)

    def transfer(self, method: str, request: Message) -> Any:
        """A unary call to TransferService; ``CallFailed`` on an error status."""
        return self._unary(self._transfers, method, request, self.transfer_service)

    def watch(self, request: apb.WatchAccountRequest, timeout: float | None) -> Any:
        """The WatchAccount stream: iterate it, ``cancel()`` it; errors come as RpcError."""
        return self._accounts.WatchAccount(request, timeout=timeout, metadata=self._metadata)

    def _unary(self, stub: Any, method: str, request: Message, service: Service) -> Any:
        try:
            return getattr(stub, method)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise CallFailed(error, service) from None

    def lookup(self, account_id: str) -> apb.Account | Missing | None:
        """The account, ``MISSING`` if it does not exist, None if that cannot be told."""
        timeout = min(self.timeout or LOOKUP_TIMEOUT, LOOKUP_TIMEOUT)
        try:
            return self._accounts.GetAccount(
                apb.GetAccountRequest(account_id=account_id),
                timeout=timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            return MISSING if _code(error) == grpc.StatusCode.NOT_FOUND else None

    def transfer_currency(self, transfer_id: str) -> str | None:
        """The currency of a transfer, None if that cannot be told."""
        timeout = min(self.timeout or LOOKUP_TIMEOUT, LOOKUP_TIMEOUT)
        try:
            found = self._transfers.GetTransfer(
                tpb.GetTransferRequest(transfer_id=transfer_id),
                timeout=timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError:
            return None
        return found.currency or None

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


# --------------------------------------------------------------------------- errors


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
class Failure:
    """An error status, read for people (``message``) and for scripts (``to_dict``)."""

    exit_status: int
    message: str
    code: str
    reason: str
    details: str
    metadata: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
            "details": self.details,
            "metadata": dict(self.metadata),
            "exit_status": self.exit_status,
        }


# Reasons whose message is better with the account's currency or a transfer's accounts.
_NEEDS_CURRENCY = frozenset({"INSUFFICIENT_FUNDS", "ACCOUNT_NOT_EMPTY", "BALANCE_OUT_OF_RANGE"})
_NEEDS_TRANSFER_CURRENCY = frozenset({"EXCEEDS_PENDING_AMOUNT", "EXCEEDS_REVERSIBLE_AMOUNT"})
_NEEDS_ACCOUNTS = frozenset(
    {
        "INSUFFICIENT_FUNDS",
        "ACCOUNT_NOT_FOUND",
        "ACCOUNT_CLOSED",
        "CURRENCY_MISMATCH",
        "BALANCE_OUT_OF_RANGE",
    }
)


def complete(client: Client, facts: Facts, error: grpc.RpcError) -> Facts:
    """Looks up what the message for ``error`` needs and ``facts`` does not hold yet."""
    info = error_info(error)
    reason = info.reason if info is not None else ""
    if facts.transfer is not None and reason in _NEEDS_ACCOUNTS:
        for account_id in facts.transfer:
            if account_id not in facts.accounts:
                found = client.lookup(account_id)
                if found is not None:
                    facts.accounts[account_id] = found
    elif facts.transfer_id and not facts.currency and reason in _NEEDS_TRANSFER_CURRENCY:
        facts.currency = client.transfer_currency(facts.transfer_id)
    elif facts.account_id and not facts.currency and reason in _NEEDS_CURRENCY:
        found = client.lookup(facts.account_id)
        if isinstance(found, apb.Account):
            facts.currency = found.currency
    return facts


def describe(
    error: grpc.RpcError,
    facts: Facts | None = None,
    service: Service | None = None,
    timeout: float | None = None,
) -> Failure:
    """One line for people, and the exit status, for a failed call."""
    facts = facts or Facts()
    code = _code(error)
    details = _details(error)
    info = error_info(error)
    reason = info.reason if info is not None else ""
    metadata = dict(info.metadata) if info is not None else {}
    status = _EXIT_BY_CODE.get(code, EXIT_ERROR)
    writer = _MESSAGES.get(reason)
    message = writer(_Context(facts, metadata, details)) if writer else None
    if message is None:
        message = _by_code(code, details, facts, service, timeout)
    if status == EXIT_UNAVAILABLE and reason != "TRANSFER_PENDING":
        message += _retry_hint(facts)
    return Failure(status, message, code.name, reason, details, metadata)


@dataclass(frozen=True)
class _Context:
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


def _insufficient_funds(c: _Context) -> str:
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


def _account_not_found(c: _Context) -> str:
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


def _account_closed(c: _Context) -> str:
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


def _currency_mismatch(c: _Context) -> str:
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


def _account_not_empty(c: _Context) -> str:
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


def _balance_out_of_range(c: _Context) -> str:
    return (
        f"refused: the balance of {c.subject()} would exceed the largest amount an account"
        f" can hold{c.transfer_failed}"
    )


def _reference_reused(c: _Context) -> str:
    reference = c.metadata.get("reference") or "?"
    command = c.metadata.get("command") or "call"
    return (
        f"refused: request id {reference!r} was already used for a {command} with other"
        " contents; choose another --request-id"
    )


def _account_already_exists(c: _Context) -> str:
    return (
        f"refused: {c.subject()} already exists with another owner or currency;"
        " choose another --account-id"
    )


def _transfer_already_exists(c: _Context) -> str:
    transfer_id = c.metadata.get("transfer_id") or c.facts.transfer_id
    return (
        f"refused: transfer {transfer_id} already exists with other accounts or amount;"
        " choose another --transfer-id"
    )


def _transfer_not_found(c: _Context) -> str:
    transfer_id = c.metadata.get("transfer_id") or c.facts.transfer_id
    return f"not found: transfer {transfer_id} does not exist"


def _transfer_pending(c: _Context) -> str:
    transfer_id = c.metadata.get("transfer_id") or c.facts.transfer_id
    return (
        f"pending: transfer {transfer_id} is recorded and still running (a service is slow"
        " or down) and finishes by itself; run the same command with"
        f" --transfer-id {transfer_id} to get its outcome (it never moves money twice)"
    )


def _store_unavailable(c: _Context) -> str:
    return "unavailable: the service cannot reach its database"


def _contention(c: _Context) -> str:
    return f"unavailable: {c.subject()} kept changing under concurrent writers"


def _reservation_not_found(c: _Context) -> str:
    reference = c.metadata.get("reference") or "?"
    return f"refused: {c.subject()} has no reservation {reference!r}"


def _reservation_settled(c: _Context) -> str:
    reference = c.metadata.get("reference") or "?"
    outcome = c.metadata.get("outcome") or "settled"
    return f"refused: reservation {reference!r} was already {outcome}"


def _transfer_id(c: _Context) -> str:
    return c.metadata.get("transfer_id") or c.facts.transfer_id or "?"


def _transfer_not_pending(c: _Context) -> str:
    state = c.metadata.get("state") or "not pending"
    return (
        f"refused: transfer {_transfer_id(c)} is {state}, not PENDING: only a hold"
        " (bank hold, or bank transfer --pending) can be posted or voided"
    )


def _exceeds_pending_amount(c: _Context) -> str:
    held, requested = c.number("held"), c.number("requested")
    currency = c.facts.currency
    shown = f" (held {money(held, currency)})" if held is not None else ""
    asked = money(requested, currency) if requested is not None else "the amount"
    return (
        f"refused: cannot post {asked} of transfer {_transfer_id(c)}: more than it holds"
        f"{shown}; post at most that, or nothing for all of it"
    )


def _transfer_not_completed(c: _Context) -> str:
    state = c.metadata.get("state") or "not completed"
    return (
        f"refused: transfer {_transfer_id(c)} is {state}: only a COMPLETED transfer can be reversed"
    )


def _exceeds_reversible_amount(c: _Context) -> str:
    left, requested = c.number("reversible"), c.number("requested")
    currency = c.facts.currency
    asked = money(requested, currency) if requested else "all of it"
    left_shown = money(left, currency) if left is not None else "less"
    return (
        f"refused: transfer {_transfer_id(c)} has {left_shown} left to reverse,"
        f" {asked} requested; its reversals never add up to more than it moved"
    )


def _invalid_argument(c: _Context) -> str:
    return f"invalid argument: {c.details or c.metadata.get('field', '?')}"


_MESSAGES: dict[str, Callable[[_Context], str]] = {
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


def _by_code(
    code: grpc.StatusCode,
    details: str,
    facts: Facts,
    service: Service | None,
    timeout: float | None,
) -> str:
    """The message for a status without a reason this client knows."""
    who = f"the {service.name} at {service.address}" if service else "the service"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"unavailable: cannot reach {who} ({details or 'no answer'})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout:g}s" if timeout else ""
        if facts.transfer is not None:
            return (
                f"timed out: no answer from {who}{within} (--timeout); the transfer may still"
                " be running"
            )
        return (
            f"timed out: no answer from {who}{within} (--timeout); the call may have taken effect"
        )
    if code == grpc.StatusCode.CANCELLED:
        return f"cancelled: the call to {who} was cancelled"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return f"denied: {who} answered {code.name}: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return f"invalid argument: {details}"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"not found: {details}"
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE):
        return f"refused: {details}"
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return f"refused: already exists: {details}"
    return f"error: {who} answered {code.name}: {details}"


def _retry_hint(facts: Facts) -> str:
    if facts.transfer is not None and facts.retry:
        return f"; run the same command with {facts.retry} to retry or to get its outcome"
    if facts.retry:
        return f"; safe to retry with {facts.retry}"
    return "; safe to retry"


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    code = error.code() if hasattr(error, "code") else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details(error: grpc.RpcError) -> str:
    details = error.details() if hasattr(error, "details") else None
    return str(details or "")


# --------------------------------------------------------------------------- running


def to_dict(message: Message) -> dict[str, Any]:
    """A message as the proto3 JSON mapping, with the proto field names and every field."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class Cli:
    """One command's arguments, client and output."""

    def __init__(self, args: argparse.Namespace, client: Client) -> None:
        self.args = args
        self.client = client
        self.facts = Facts()

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def out(self, text: str = "") -> None:
        print(text, file=sys.stdout, flush=True)

    def emit(self, obj: Any) -> None:
        """One JSON value on one line of stdout."""
        print(json.dumps(obj), file=sys.stdout, flush=True)

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def refuse(self, error: InvalidArgument) -> int:
        """A bad argument found here, before any call: told as the service would tell it."""
        failure = Failure(
            EXIT_USAGE,
            f"invalid argument: {error.message}",
            grpc.StatusCode.INVALID_ARGUMENT.name,
            "INVALID_ARGUMENT",
            error.message,
            error.metadata,
        )
        if self.json:
            self.emit({"error": failure.to_dict()})
        self.note(f"bank {self.args.command}: {failure.message}")
        return failure.exit_status

    def fail(self, failed: CallFailed) -> int:
        facts = complete(self.client, self.facts, failed.error)
        failure = describe(failed.error, facts, failed.service, self.client.timeout)
        if self.json:
            self.emit({"error": failure.to_dict()})
        self.note(f"bank {self.args.command}: {failure.message}")
        return failure.exit_status


Handler = Callable[[Cli], int]


def execute(handler: Handler, args: argparse.Namespace, client: Client | None = None) -> int:
    """Runs ``handler`` with a client (a new one over ``args``' addresses unless given)."""
    own = client is None
    if client is None:
        try:
            client = Client.from_args(args)
        except SecurityConfigError as exc:
            print(f"bank {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    cli = Cli(args, client)
    try:
        return handler(cli)
    except CallFailed as failed:
        return cli.fail(failed)
    except KeyboardInterrupt:
        hint = ""
        if cli.facts.retry:
            hint = f"; the call may have taken effect: repeat it with {cli.facts.retry}"
        cli.note(f"bank {args.command}: interrupted{hint}")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``bank history … | head``): stop quietly.
        _silence_stdout()
        return EXIT_OK
    finally:
        if own:
            client.close()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
