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
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from bank_cli.messages import MESSAGES, MISSING, Context, Facts, Missing
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
    writer = MESSAGES.get(reason)
    message = writer(Context(facts, metadata, details)) if writer else None
    if message is None:
        message = _by_code(code, details, facts, service, timeout)
    if status == EXIT_UNAVAILABLE and reason != "TRANSFER_PENDING":
        message += _retry_hint(facts)
    return Failure(status, message, code.name, reason, details, metadata)


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
