"""What ``bank open|deposit|withdraw|show|history|watch|transfers|close|overdraft|statement``
do when they run (``transfer|hold|post|void|reverse``: ``bank_cli.transfer_handlers``,
imported here): the calls to the two services' public APIs and the answers printed for
people (``--json``: the proto field names, 64-bit integers as strings, as in the proto3
JSON mapping). Their parsers are in ``bank_cli.commands``.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.client import EXIT_OK, CallFailed, Cli, Facts, to_dict
from bank_cli.commands import MAX_PAGE_SIZE
from bank_cli.display import Progress, age, enum_name, fields, money, table, timestamp
from bank_cli.transfer_handlers import hold, post, reverse, transfer, transfer_fields, void
from shared_kernel.errors import InvalidArgument
from shared_kernel.values import parse_currency

_CREDIT = {
    apb.ACCOUNT_EVENT_TYPE_DEPOSITED,
    apb.ACCOUNT_EVENT_TYPE_CREDITED,
    apb.ACCOUNT_EVENT_TYPE_CREDIT_CONFIRMED,
}
_DEBIT = {apb.ACCOUNT_EVENT_TYPE_WITHDRAWN, apb.ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED}
_NO_AMOUNT = {apb.ACCOUNT_EVENT_TYPE_OPENED, apb.ACCOUNT_EVENT_TYPE_CLOSED}
# The transfer commands, found here by ``bank_cli.commands.run``.
TRANSFER_COMMANDS = (hold, post, reverse, transfer, transfer_fields, void)


# --------------------------------------------------------------------------- commands


def open_account(cli: Cli) -> int:
    args = cli.args
    account_id = args.account_id or str(uuid.uuid4())
    cli.facts = Facts(account_id=account_id, retry=f"--account-id {account_id}")
    try:
        currency = parse_currency(args.currency)
    except InvalidArgument as exc:
        return cli.refuse(exc)
    account = cli.client.account(
        "OpenAccount",
        apb.OpenAccountRequest(account_id=account_id, owner=args.owner, currency=currency),
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
            timestamp(r.expires_at) or "never",
            age(r.reserved_at),
        ]
        for r in account.reservations
    ]
    headers = ["REFERENCE", "AMOUNT", "RESERVED AT", "EXPIRES", "AGE"]
    cli.out(table(headers, rows, right=[1, 4]))
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


def overdraft(cli: Cli) -> int:
    args = cli.args
    request_id = args.request_id or str(uuid.uuid4())
    cli.facts = Facts(account_id=args.account, retry=f"--request-id {request_id}")
    account = cli.client.account(
        "SetOverdraftLimit",
        apb.SetOverdraftLimitRequest(
            account_id=args.account, overdraft_limit=args.limit, request_id=request_id
        ),
    )
    if cli.json:
        cli.emit({"request_id": request_id, "account": to_dict(account)})
    else:
        limit = money(account.overdraft_limit, account.currency)
        cli.out(f"overdraft limit set to {limit} (request id {request_id})")
        cli.out(account_fields(account))
    return EXIT_OK


def statement(cli: Cli) -> int:
    """Opening and closing balances from reads of the past; the movements between them
    from the account's events after the opening version (see ``bank_cli.commands``)."""
    args = cli.args
    cli.facts = Facts(account_id=args.account)
    if args.start and args.end and args.start > args.end:
        return cli.refuse(InvalidArgument("--from", "must not be after --to"))
    closing = cli.client.account("GetAccount", _as_of(args.account, args.end))
    opening_balance, opening_version = 0, 0
    if args.start is not None:
        try:
            opening = cli.client.account("GetAccount", _as_of(args.account, args.start))
            opening_balance, opening_version = opening.balance, opening.version
        except CallFailed as failed:
            # NOT_FOUND: not opened yet at --from, so it held nothing then.
            if failed.error.code() != grpc.StatusCode.NOT_FOUND:
                raise
    events = _events_between(cli, args.account, opening_version, closing.version)
    moves = [e for e in events if e.type in _CREDIT | _DEBIT]
    currency = closing.currency
    if cli.json:
        cli.emit(
            {
                "account_id": closing.account_id,
                "currency": currency,
                "from": _iso(args.start),
                "to": _iso(args.end),
                "opening_balance": str(opening_balance),
                "closing_balance": str(closing.balance),
                "opening_version": str(opening_version),
                "closing_version": str(closing.version),
                "movements": [
                    {
                        "version": str(e.version),
                        "occurred_at": to_dict(e)["occurred_at"],
                        "type": apb.AccountEventType.Name(e.type),
                        "amount": str(_signed(e)),
                        "balance_after": str(e.balance_after),
                        "reference": e.reference,
                    }
                    for e in moves
                ],
            }
        )
        return EXIT_OK
    cli.out(f"statement of account {closing.account_id} ({closing.owner}), {currency}")
    cli.out(fields([("from", _shown(args.start, "the opening")), ("to", _shown(args.end, "now"))]))
    cli.out()
    rows = [
        ["", "", "opening balance", "", money(opening_balance, currency), ""],
        *(
            [
                str(e.version),
                timestamp(e.occurred_at),
                enum_name(apb.AccountEventType.Name(e.type), "ACCOUNT_EVENT_TYPE_"),
                ("+" if e.type in _CREDIT else "-") + money(e.amount, currency),
                money(e.balance_after, currency),
                e.reference,
            ]
            for e in moves
        ),
        ["", "", "closing balance", "", money(closing.balance, currency), ""],
    ]
    headers = ["VERSION", "TIME", "MOVEMENT", "AMOUNT", "BALANCE", "REFERENCE"]
    cli.out(table(headers, rows, right=[0, 3, 4]))
    return EXIT_OK


def _events_between(cli: Cli, account_id: str, after: int, upto: int) -> list[apb.AccountEvent]:
    """The account's events with a version above ``after``, up to ``upto``."""
    if upto <= after:
        return []
    events, _ = _read_pages(
        lambda size, token: cli.client.account(
            "ListAccountEvents",
            apb.ListAccountEventsRequest(
                account_id=account_id, page_size=size, page_token=token, from_version=after
            ),
        ),
        lambda page: page.events,
        upto - after,
        MAX_PAGE_SIZE,
        Progress("reading events", upto - after),
    )
    return events


def _as_of(account_id: str, at: datetime | None) -> apb.GetAccountRequest:
    request = apb.GetAccountRequest(account_id=account_id)
    if at is not None:
        request.as_of_time.FromDatetime(at)
    return request


def _signed(event: apb.AccountEvent) -> int:
    return event.amount if event.type in _CREDIT else -event.amount


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _shown(at: datetime | None, otherwise: str) -> str:
    return otherwise if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%fZ")


def _get_account(cli: Cli) -> apb.Account:
    cli.facts = Facts(account_id=cli.args.account)
    return cli.client.account("GetAccount", apb.GetAccountRequest(account_id=cli.args.account))


# --------------------------------------------------------------------------- output


EVENT_HEADERS = ["VERSION", "TIME", "TYPE", "AMOUNT", "BALANCE", "RESERVED", "REFERENCE"]
EVENT_RIGHT = [0, 3, 4, 5]
# Column widths of watch, which cannot measure its rows before printing them.
_WATCH_WIDTHS = [7, 20, 20, 15, 15, 15]


def account_fields(account: apb.Account) -> str:
    values = (account.balance, account.reserved, account.available, account.overdraft_limit)
    amounts = [money(v, account.currency) for v in values]
    width = max(len(a) for a in amounts)
    balance, reserved, available, limit = (a.rjust(width) for a in amounts)
    return fields(
        [
            ("account", account.account_id),
            ("owner", account.owner),
            ("status", enum_name(apb.AccountStatus.Name(account.status), "ACCOUNT_STATUS_")),
            ("balance", balance),
            ("reserved", reserved),
            ("available", available),
            ("overdraft limit", limit),
            *(
                [("pending credits", money(account.pending_credits, account.currency))]
                if account.pending_credits
                else []
            ),
            ("version", str(account.version)),
        ]
    )


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
