"""``bank open|deposit|withdraw|transfer|show|history|watch|transfers|close|overdraft|
statement``: the bank for people, over the two services' public APIs. This module holds
their parsers; what each does when it runs is in ``bank_cli.handlers``, imported only then.

Amounts given on the command line are in minor units of the account's currency (2500 is
25.00 EUR); amounts printed are in major units with the currency. ``--json`` prints the
answer as one JSON object (JSON lines for ``watch``), with the proto field names; 64-bit
integers are strings, as in the proto3 JSON mapping.
"""

from __future__ import annotations

import argparse
import functools
import re
from datetime import UTC, datetime
from typing import Any

from bank_cli.options import EXIT_STATUS_HELP, common_options

INT64_MAX = 2**63 - 1
MAX_PAGE_SIZE = 1000

_AMOUNT_HELP = "minor units of the account's currency, a whole number: 2500 is 25.00 EUR"


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


def non_negative_amount(text: str) -> int:
    """A LIMIT argument: a whole number of minor units, 0 to 2**63-1."""
    if text.strip().replace("_", "") in ("0", "+0", "-0"):
        return 0
    return minor_amount(text)


def instant(text: str) -> datetime:
    """An ISO 8601 date or time (2024-06-01, 2024-06-01T12:00:00+02:00); UTC unless it
    says otherwise."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2024-06-01 or 2024-06-01T12:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def register(commands: argparse._SubParsersAction) -> None:
    parent = common_options()

    def add(name: str, handler: str, summary: str, description: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=EXIT_STATUS_HELP,
            parents=[parent],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=functools.partial(run, handler))
        return parser

    p = add(
        "open",
        "open_account",
        "open an account",
        "Open an account. Without --account-id a fresh id is chosen here and printed, so that\n"
        "repeating the command with it after a lost answer opens nothing twice.",
    )
    p.add_argument("--owner", required=True, help="the account holder's name")
    p.add_argument(
        "--currency",
        required=True,
        type=str.upper,
        help="an ISO 4217 currency code: EUR, USD, JPY, ...",
    )
    p.add_argument("--account-id", metavar="UUID", help="the new account's id (idempotent)")

    for name, handler, verb in (
        ("deposit", "deposit", "Put money into"),
        ("withdraw", "withdraw", "Take money out of"),
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
        "transfer",
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
        "show",
        "show an account and its open reservations",
        "Balance, reserved, available, status and version of an account, and the\n"
        "reservations still open on it (transfers not finished yet), with their age.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account's id")

    p = add(
        "history",
        "history",
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
        "watch",
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
        "transfers",
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
        "close",
        "close an empty account",
        "Close an account. Only an account with a zero balance and nothing reserved closes.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account's id")

    p = add(
        "overdraft",
        "overdraft",
        "set how far below zero an account may go",
        "Set the account's overdraft limit: withdrawals and transfers out may take its\n"
        "balance down to -LIMIT, not beyond. LIMIT is in minor units of the account's\n"
        "currency (50000 is 500.00 EUR); 0 allows no overdraft. Lowering it below what is in\n"
        "use only refuses further debits. Without --request-id a fresh one is chosen and\n"
        "printed: repeating the command with it never applies it twice.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account's id")
    p.add_argument(
        "limit",
        metavar="LIMIT",
        type=non_negative_amount,
        help="minor units of the account's currency, a whole number >= 0",
    )
    p.add_argument("--request-id", metavar="KEY", help="idempotency key (1-128 ASCII)")

    p = add(
        "statement",
        "statement",
        "an account's movements between two instants, with its balances",
        "The account's balance at --from (the opening balance), every movement after it up\n"
        "to --to (deposits, withdrawals, transfers in and out), and its balance at --to\n"
        "(the closing balance). Times are ISO 8601 (2024-06-01, 2024-06-01T12:00Z); UTC\n"
        "unless they say otherwise. Without --from: since the account was opened; without\n"
        "--to: until now.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account's id")
    p.add_argument("--from", dest="start", metavar="TIME", type=instant, help="opening instant")
    p.add_argument("--to", dest="end", metavar="TIME", type=instant, help="closing instant")


def run(handler: str, args: argparse.Namespace, client: Any = None) -> int:
    """Runs the handler named ``handler`` (in ``bank_cli.handlers``) with a client over
    ``args``' addresses, or ``client`` if given."""
    from bank_cli import handlers
    from bank_cli.client import execute

    return execute(getattr(handlers, handler), args, client)
