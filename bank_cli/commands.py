"""``bank open|deposit|withdraw|transfer|show|history|watch|transfers|close``: the bank
for people, over the two services' public APIs.

Amounts given on the command line are in minor units of the account's currency (2500 is
25.00 EUR); amounts printed are in major units with the currency. ``--json`` prints the
answer as one JSON object (JSON lines for ``watch``), with the proto field names; 64-bit
integers are strings, as in the proto3 JSON mapping.
"""

from __future__ import annotations

import argparse
import functools
import re
import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.client import (
    EXIT_OK,
    EXIT_STATUS_HELP,
    CallFailed,
    Cli,
    Facts,
    Handler,
    common_options,
    execute,
    to_dict,
)
from bank_cli.display import Progress, age, enum_name, fields, money, table, timestamp

INT64_MAX = 2**63 - 1
MAX_PAGE_SIZE = 1000

# Shown under ``bank --help``.
EPILOG = EXIT_STATUS_HELP

_AMOUNT_HELP = "minor units of the account's currency, a whole number: 2500 is 25.00 EUR"
_CREDIT = {apb.ACCOUNT_EVENT_TYPE_DEPOSITED, apb.ACCOUNT_EVENT_TYPE_CREDITED}
_DEBIT = {apb.ACCOUNT_EVENT_TYPE_WITHDRAWN, apb.ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED}
_NO_AMOUNT = {apb.ACCOUNT_EVENT_TYPE_OPENED, apb.ACCOUNT_EVENT_TYPE_CLOSED}


# --------------------------------------------------------------------------- arguments


def minor_amount(text: str) -> int:
    """An AMOUNT argument: a whole number of minor units, 1 to 2**63-1."""
    cleaned = text.strip().replace("_", "")
    if re.fullmatch(r"\d*[.,]\d*", cleaned) and any(ch.isdigit() for ch in cleaned):
        raise argparse.ArgumentTypeError(
            f"{text!r}: AMOUNT is in minor units, a whole number (write 2500 for 25.00)"
        )
    if not re.fullmatch(r"[+-]?\d+", cleaned):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of minor units")
    value = int(cleaned)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the amount must be greater than 0")
    if value > INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: the amount must be at most {INT64_MAX}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def page_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"at most {MAX_PAGE_SIZE}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    parent = common_options()

    def add(name: str, handler: Handler, summary: str, description: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=EXIT_STATUS_HELP,
            parents=[parent],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=functools.partial(execute, handler))
        return parser

    p = add(
        "open",
        open_account,
        "open an account",
        "Open an account. Without --account-id a fresh id is chosen here and printed, so that\n"
        "repeating the command with it after a lost answer opens nothing twice.",
    )
    p.add_argument("--owner", required=True, help="the account holder's name")
    p.add_argument(
        "--currency", required=True, type=str.upper, help="three letters, ISO 4217 (EUR)"
    )
    p.add_argument("--account-id", metavar="UUID", help="the new account's id (idempotent)")

    for name, handler, verb in (
        ("deposit", deposit, "Put money into"),
        ("withdraw", withdraw, "Take money out of"),
    ):
        p = add(
            name,
            handler,
            f"{verb.lower()} an account",
            f"{verb} an account. AMOUNT is in minor units of the account's currency,\n"
            "a whole number: 2500 is 25.00 EUR. Without --request-id a fresh one is chosen\n"
            "and printed: repeating the command with the same --request-id never applies it\n"
            "twice.",
        )
        p.add_argument("account", metavar="ACCOUNT", help="the account's id")
        p.add_argument("amount", metavar="AMOUNT", type=minor_amount, help=_AMOUNT_HELP)
        p.add_argument("--request-id", metavar="KEY", help="idempotency key (1-128 ASCII)")

    p = add(
        "transfer",
        transfer,
        "move money from one account to another",
        "Move AMOUNT (minor units of the source's currency, a whole number: 2500 is\n"
        "25.00 EUR) from FROM to TO with the reservation protocol, and wait for the\n"
        "outcome. Without --transfer-id a fresh one is chosen and printed. If the transfer\n"
        "cannot finish in time (a service is down) it stays recorded and finishes by\n"
        "itself: run the same command with --transfer-id to get its outcome.",
    )
    p.add_argument("source", metavar="FROM", help="the source account's id")
    p.add_argument("target", metavar="TO", help="the target account's id")
    p.add_argument("amount", metavar="AMOUNT", type=minor_amount, help=_AMOUNT_HELP)
    p.add_argument("--transfer-id", metavar="UUID", help="the transfer's id (idempotent)")

    p = add(
        "show",
        show,
        "show an account and its open reservations",
        "Balance, reserved, available, status and version of an account, and the\n"
        "reservations still open on it (transfers not finished yet), with their age.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account's id")

    p = add(
        "history",
        history,
        "list an account's events, oldest first",
        "An account's events, oldest first, read page by page.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account's id")
    p.add_argument("--limit", metavar="N", type=positive_int, help="the first N events only")
    p.add_argument(
        "--page-size",
        metavar="N",
        type=page_size,
        default=MAX_PAGE_SIZE,
        help="events per call (default %(default)s)",
    )

    p = add(
        "watch",
        watch,
        "print an account's events as they happen",
        "Print the account's events with a version above --from-version (0: the whole\n"
        "history), then every new one as it is stored, until Ctrl-C (exit status 0), or\n"
        "until --timeout seconds have passed (exit status 0).",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account's id")
    p.add_argument(
        "--from-version",
        metavar="N",
        type=non_negative_int,
        default=0,
        help="start after this version (default 0: from the first event)",
    )

    p = add(
        "transfers",
        transfers,
        "list an account's transfers, newest first",
        "Transfers where the account is the source or the target, newest first.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account's id")
    p.add_argument("--limit", metavar="N", type=positive_int, help="the newest N only")
    p.add_argument(
        "--page-size",
        metavar="N",
        type=page_size,
        default=MAX_PAGE_SIZE,
        help="transfers per call (default %(default)s)",
    )

    p = add(
        "close",
        close,
        "close an empty account",
        "Close an account. Only an account with a zero balance and nothing reserved closes.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account's id")


# --------------------------------------------------------------------------- commands


def open_account(cli: Cli) -> int:
    args = cli.args
    account_id = args.account_id or str(uuid.uuid4())
    cli.facts = Facts(account_id=account_id, retry=f"--account-id {account_id}")
    account = cli.client.account(
        "OpenAccount",
        apb.OpenAccountRequest(account_id=account_id, owner=args.owner, currency=args.currency),
    )
    if cli.json:
        cli.emit(to_dict(account))
    else:
        cli.out(f"opened account {account.account_id}")
        cli.out(account_fields(account))
    return EXIT_OK


def deposit(cli: Cli) -> int:
    return _move(cli, "Deposit", apb.DepositRequest, "deposited")


def withdraw(cli: Cli) -> int:
    return _move(cli, "Withdraw", apb.WithdrawRequest, "withdrew")


def _move(cli: Cli, method: str, request_type: Any, verb: str) -> int:
    args = cli.args
    request_id = args.request_id or str(uuid.uuid4())
    cli.facts = Facts(
        account_id=args.account, amount=args.amount, retry=f"--request-id {request_id}"
    )
    account = cli.client.account(
        method, request_type(account_id=args.account, amount=args.amount, request_id=request_id)
    )
    if cli.json:
        cli.emit({"request_id": request_id, "account": to_dict(account)})
    else:
        cli.out(f"{verb} {money(args.amount, account.currency)} (request id {request_id})")
        cli.out(account_fields(account))
    return EXIT_OK


def transfer(cli: Cli) -> int:
    args = cli.args
    transfer_id = args.transfer_id or str(uuid.uuid4())
    cli.facts = Facts(
        amount=args.amount,
        transfer=(args.source, args.target),
        transfer_id=transfer_id,
        retry=f"--transfer-id {transfer_id}",
    )
    result = cli.client.transfer(
        "CreateTransfer",
        tpb.CreateTransferRequest(
            transfer_id=transfer_id,
            from_account_id=args.source,
            to_account_id=args.target,
            amount=args.amount,
        ),
    )
    if cli.json:
        cli.emit(to_dict(result))
    else:
        shown = money(result.amount, result.currency)
        state = enum_name(tpb.TransferState.Name(result.state), "TRANSFER_STATE_")
        verb = "transferred" if result.state == tpb.TRANSFER_STATE_COMPLETED else state.lower()
        cli.out(f"{verb} {shown} from {result.from_account_id} to {result.to_account_id}")
        cli.out(transfer_fields(result))
    return EXIT_OK


def show(cli: Cli) -> int:
    account = _get_account(cli)
    if cli.json:
        cli.emit(to_dict(account))
        return EXIT_OK
    cli.out(account_fields(account))
    cli.out()
    if not account.reservations:
        cli.out("no open reservations")
        return EXIT_OK
    cli.out("open reservations:")
    rows = [
        [
            r.reference,
            money(r.amount, account.currency),
            timestamp(r.reserved_at),
            age(r.reserved_at),
        ]
        for r in account.reservations
    ]
    cli.out(table(["REFERENCE", "AMOUNT", "RESERVED AT", "AGE"], rows, right=[1, 3]))
    return EXIT_OK


def _read_pages(
    fetch: Callable[[int, str], Any],
    items_of: Callable[[Any], Sequence[Any]],
    limit: int | None,
    page_size: int,
    progress: Progress,
) -> tuple[list[Any], str]:
    """Pages through a listing until its end or ``limit`` items; the items and the token
    of the next page (empty at the end)."""
    items: list[Any] = []
    token = ""
    try:
        while True:
            wanted = page_size if limit is None else min(page_size, limit - len(items))
            page = fetch(wanted, token)
            items.extend(items_of(page))
            progress.update(len(items))
            token = page.next_page_token
            if not token or (limit is not None and len(items) >= limit):
                break
    finally:
        progress.done()
    return (items if limit is None else items[:limit]), token


def history(cli: Cli) -> int:
    args = cli.args
    account = _get_account(cli)
    limit = args.limit
    total = min(limit, account.version) if limit else account.version
    events, token = _read_pages(
        lambda size, token: cli.client.account(
            "ListAccountEvents",
            apb.ListAccountEventsRequest(account_id=args.account, page_size=size, page_token=token),
        ),
        lambda page: page.events,
        limit,
        args.page_size,
        Progress("reading events", total),
    )
    if cli.json:
        cli.emit(
            {
                "account_id": account.account_id,
                "currency": account.currency,
                "events": [to_dict(e) for e in events],
            }
        )
        return EXIT_OK
    rows = [event_row(e, account.currency) for e in events]
    cli.out(table(EVENT_HEADERS, rows, right=EVENT_RIGHT))
    if token:
        cli.note(f"(the first {len(events)} events; --limit to see more)")
    return EXIT_OK


def watch(cli: Cli) -> int:
    args = cli.args
    # Ctrl-C ends a watch even when the shell started this process with SIGINT ignored.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    account = _get_account(cli)
    call = cli.client.watch(
        apb.WatchAccountRequest(account_id=args.account, from_version=args.from_version),
        timeout=args.timeout,
    )
    if not cli.json:
        cli.out(_fixed(EVENT_HEADERS))
    try:
        for event in call:
            if cli.json:
                cli.emit(to_dict(event))
            else:
                cli.out(_fixed(event_row(event, account.currency)))
    except KeyboardInterrupt:
        call.cancel()
        return EXIT_OK
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and args.timeout is not None:
            return EXIT_OK
        raise CallFailed(error, cli.client.account_service) from None
    cli.note(f"bank watch: the account service ended the watch of {args.account}")
    return EXIT_OK


def transfers(cli: Cli) -> int:
    args = cli.args
    cli.facts = Facts(account_id=args.account)
    account: apb.Account | None
    try:
        account = cli.client.account("GetAccount", apb.GetAccountRequest(account_id=args.account))
    except CallFailed as failed:
        # Only for the currency: the listing itself needs the transfer service alone.
        if failed.error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise
        account = None
    limit = args.limit
    found, token = _read_pages(
        lambda size, token: cli.client.transfer(
            "ListTransfers",
            tpb.ListTransfersRequest(account_id=args.account, page_size=size, page_token=token),
        ),
        lambda page: page.transfers,
        limit,
        args.page_size,
        Progress("reading transfers"),
    )
    if cli.json:
        cli.emit({"account_id": args.account, "transfers": [to_dict(t) for t in found]})
        return EXIT_OK
    if not found:
        cli.out("no transfers")
        return EXIT_OK
    listed = account.account_id if account is not None else args.account.lower()
    rows = [_transfer_row(t, listed, account) for t in found]
    headers = ["CREATED", "TRANSFER", "DIRECTION", "COUNTERPARTY", "AMOUNT", "STATE", "REASON"]
    cli.out(table(headers, rows, right=[4]))
    if token:
        cli.note(f"(the newest {len(found)} transfers; --limit to see more)")
    return EXIT_OK


def close(cli: Cli) -> int:
    cli.facts = Facts(account_id=cli.args.account)
    account = cli.client.account(
        "CloseAccount", apb.CloseAccountRequest(account_id=cli.args.account)
    )
    if cli.json:
        cli.emit(to_dict(account))
    else:
        cli.out(f"closed account {account.account_id}")
        cli.out(account_fields(account))
    return EXIT_OK


def _get_account(cli: Cli) -> apb.Account:
    cli.facts = Facts(account_id=cli.args.account)
    return cli.client.account("GetAccount", apb.GetAccountRequest(account_id=cli.args.account))


# --------------------------------------------------------------------------- output


EVENT_HEADERS = ["VERSION", "TIME", "TYPE", "AMOUNT", "BALANCE", "RESERVED", "REFERENCE"]
EVENT_RIGHT = [0, 3, 4, 5]
# Column widths of watch, which cannot measure its rows before printing them.
_WATCH_WIDTHS = [7, 20, 20, 15, 15, 15]


def account_fields(account: apb.Account) -> str:
    amounts = [
        money(v, account.currency) for v in (account.balance, account.reserved, account.available)
    ]
    width = max(len(a) for a in amounts)
    balance, reserved, available = (a.rjust(width) for a in amounts)
    return fields(
        [
            ("account", account.account_id),
            ("owner", account.owner),
            ("status", enum_name(apb.AccountStatus.Name(account.status), "ACCOUNT_STATUS_")),
            ("balance", balance),
            ("reserved", reserved),
            ("available", available),
            ("version", str(account.version)),
        ]
    )


def transfer_fields(t: tpb.Transfer) -> str:
    pairs = [
        ("transfer", t.transfer_id),
        ("from", t.from_account_id),
        ("to", t.to_account_id),
        ("amount", money(t.amount, t.currency)),
        ("state", enum_name(tpb.TransferState.Name(t.state), "TRANSFER_STATE_")),
    ]
    if t.failure_reason:
        pairs.append(("reason", t.failure_reason))
    pairs += [("created", timestamp(t.created_at)), ("updated", timestamp(t.updated_at))]
    return fields(pairs)


def event_row(event: apb.AccountEvent, currency: str) -> list[str]:
    if event.type in _NO_AMOUNT:
        amount = ""
    else:
        sign = "+" if event.type in _CREDIT else "-" if event.type in _DEBIT else ""
        amount = sign + money(event.amount, currency)
    return [
        str(event.version),
        timestamp(event.occurred_at),
        enum_name(apb.AccountEventType.Name(event.type), "ACCOUNT_EVENT_TYPE_"),
        amount,
        money(event.balance_after, currency),
        money(event.reserved_after, currency),
        event.reference,
    ]


def _fixed(cells: Sequence[str]) -> str:
    parts = []
    for i, cell in enumerate(cells):
        if i < len(_WATCH_WIDTHS):
            width = _WATCH_WIDTHS[i]
            cell = cell.rjust(width) if i in EVENT_RIGHT else cell.ljust(width)
        parts.append(cell)
    return "  ".join(parts).rstrip()


def _transfer_row(t: tpb.Transfer, account_id: str, account: apb.Account | None) -> list[str]:
    outgoing = t.from_account_id == account_id
    currency = t.currency or (account.currency if outgoing and account is not None else "")
    return [
        timestamp(t.created_at),
        t.transfer_id,
        "out" if outgoing else "in",
        t.to_account_id if outgoing else t.from_account_id,
        money(t.amount, currency),
        enum_name(tpb.TransferState.Name(t.state), "TRANSFER_STATE_"),
        t.failure_reason,
    ]
