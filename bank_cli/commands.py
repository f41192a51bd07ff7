"""``bank open|deposit|withdraw|transfer|hold|post|void|reverse|show|history|watch|transfers|
close|overdraft|statement``: the bank for people, over the two services' public APIs. This
module holds their parsers; what each does when it runs is in ``bank_cli.handlers``,
imported only then.

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
MAX_BATCH = 1000

_AMOUNT_HELP = "minor units of the account's currency, a whole number: 2500 is 25.00 EUR"
_EXPIRES_HELP = "release the hold by itself after this long: 90s, 15m, 2h, 7d (default: never)"


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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_HOLD_SECONDS = 366 * 86400


def duration(text: str) -> int:
    """A DURATION argument: whole seconds, or a number with s, m, h or d (90s, 15m, 2h, 7d);
    1 s to 366 days, as the contract allows for a hold."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: seconds, or a number with s, m, h or d (15m, 2h, 7d)"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 1 <= seconds <= MAX_HOLD_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: a hold lasts 1 s to 366 days")
    return seconds


def leg(text: str) -> tuple[str, str, int]:
    """A --leg argument: FROM:TO:AMOUNT, AMOUNT in minor units."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0].strip() or not parts[1].strip():
        raise argparse.ArgumentTypeError(f"{text!r}: a leg is FROM:TO:AMOUNT")
    return parts[0].strip(), parts[1].strip(), minor_amount(parts[2])


def batch_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH}")
    return value


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
        "itself: run the same command with --transfer-id to get its outcome.\n\n"
        "Several movements that must all happen or none (a payment with a fee, a split):\n"
        "one --leg FROM:TO:AMOUNT each, instead of FROM TO AMOUNT; every account in one\n"
        "currency. --pending holds the money instead (see bank hold). --batch FILE sends\n"
        "the transfers of a file (JSON lines of CreateTransferRequest, or CSV\n"
        "from_account_id,to_account_id,amount[,transfer_id]) with CreateTransfers, up to\n"
        "--batch-size a call, and prints one result per line of the file; the ids of\n"
        "items without one are derived from the file, so running it again moves nothing\n"
        "twice.",
    )
    p.add_argument("source", metavar="FROM", nargs="?", help="the source account's id")
    p.add_argument("target", metavar="TO", nargs="?", help="the target account's id")
    p.add_argument("amount", metavar="AMOUNT", nargs="?", type=minor_amount, help=_AMOUNT_HELP)
    p.add_argument("--transfer-id", metavar="UUID", help="the transfer's id (idempotent)")
    p.add_argument(
        "--leg",
        dest="legs",
        metavar="FROM:TO:AMOUNT",
        action="append",
        type=leg,
        help="one leg of a multi-leg transfer (1 to 16; all or none move)",
    )
    p.add_argument("--pending", action="store_true", help="hold the money: bank post/void it")
    p.add_argument("--expires-after", metavar="DURATION", type=duration, help=_EXPIRES_HELP)
    p.add_argument("--batch", metavar="FILE", help="transfers from FILE (- for stdin)")
    p.add_argument(
        "--batch-size",
        metavar="N",
        type=batch_size,
        default=MAX_BATCH,
        help="transfers per CreateTransfers call, at most %(default)s (default %(default)s)",
    )

    p = add(
        "hold",
        "hold",
        "hold money for a transfer, to post or void later",
        "A pending transfer: hold AMOUNT on FROM for TO, and move nothing yet. Then\n"
        "bank post TRANSFER_ID [AMOUNT] moves all of it or less (the rest is released),\n"
        "bank void TRANSFER_ID releases it; with --expires-after it is released by\n"
        "itself when that time has passed (EXPIRED). Without --transfer-id a fresh one is\n"
        "chosen and printed: repeating the command with it never holds twice.",
    )
    p.add_argument("source", metavar="FROM", help="the account the money is held on")
    p.add_argument("target", metavar="TO", help="the account it is for")
    p.add_argument("amount", metavar="AMOUNT", type=minor_amount, help=_AMOUNT_HELP)
    p.add_argument("--transfer-id", metavar="UUID", help="the transfer's id (idempotent)")
    p.add_argument("--expires-after", metavar="DURATION", type=duration, help=_EXPIRES_HELP)

    p = add(
        "post",
        "post",
        "move the money of a hold, all of it or part",
        "Post a pending transfer (bank hold): credit TO with AMOUNT, take it from the\n"
        "hold on FROM and release the rest; without AMOUNT, all that is held. The\n"
        "transfer ends COMPLETED; if TO can no longer take it (closed), the hold is\n"
        "released and it ends FAILED. The same post again answers the same; a transfer\n"
        "that is not pending is refused (TRANSFER_NOT_PENDING), so is more than is held\n"
        "(EXCEEDS_PENDING_AMOUNT).",
    )
    p.add_argument("transfer_id", metavar="TRANSFER_ID", help="the pending transfer's id")
    p.add_argument(
        "amount",
        metavar="AMOUNT",
        nargs="?",
        type=minor_amount,
        help="minor units to move, at most what is held (default: all of it)",
    )

    p = add(
        "void",
        "void",
        "release a hold: nothing moves",
        "Void a pending transfer (bank hold): release the hold, move nothing; it ends\n"
        "VOIDED. Voiding it again answers the same; a transfer that is not pending is\n"
        "refused (TRANSFER_NOT_PENDING).",
    )
    p.add_argument("transfer_id", metavar="TRANSFER_ID", help="the pending transfer's id")

    p = add(
        "reverse",
        "reverse",
        "send the money of a completed transfer back",
        "Reverse a COMPLETED transfer: a new transfer from its target back to its source,\n"
        "of AMOUNT or, without it, all that is not reversed yet (a multi-leg transfer is\n"
        "reversed whole). The reversals of a transfer never add up to more than it moved\n"
        "(EXCEEDS_REVERSIBLE_AMOUNT); if the target has spent the money it is refused\n"
        "(INSUFFICIENT_FUNDS) and nothing is reversed. Without --reversal-id a fresh one\n"
        "is chosen and printed: repeating the command with it never reverses twice.",
    )
    p.add_argument("transfer_id", metavar="TRANSFER_ID", help="the completed transfer's id")
    p.add_argument(
        "amount",
        metavar="AMOUNT",
        nargs="?",
        type=minor_amount,
        help="minor units to send back (default: all that is not reversed yet)",
    )
    p.add_argument("--reversal-id", metavar="UUID", help="the reversal's id (idempotent)")
    p.add_argument("--reason", metavar="TEXT", help="why, stored on the reversal (200 chars)")

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
