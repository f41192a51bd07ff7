"""``bank audit``: read both services' event stores and check that they agree.

Reads every stored event of the account store and of the transfer store directly (never
through the services, never writing), runs the checks of ``bank_cli.audit_checks`` and
prints the report. Exit status: 0 when nothing is wrong, 1 when any check failed, 2 when a
store could not be read.

The transfer store is read before the account store. A transfer's outcome is recorded
only after the account service answered, so on a bank that is still running the account
side read second is never behind the transfer states read first. The report is exact for
a bank at rest; on a busy one, a transfer that moves on by several steps between the two
reads can be reported against its older state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bank_cli.audit_report import AuditReport
    from event_store import RecordedEvent

PAGE = 5000
EXIT_OK, EXIT_VIOLATIONS, EXIT_UNREADABLE = 0, 1, 2


class Unreadable(Exception):
    """A store that cannot be opened or read."""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "audit",
        help="check the account and transfer stores against each other",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--accounts-db", required=True, metavar="URL", help="the account service's database"
    )
    parser.add_argument(
        "--transfers-db", required=True, metavar="URL", help="the transfer service's database"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above: ``bank --help`` and ``bank audit --help`` need none of it.
    from bank_cli.audit_checks import audit

    try:
        transfer_events = read_events(args.transfers_db)
        account_events = read_events(args.accounts_db)
    except Unreadable as exc:
        print(f"bank audit: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    report = audit(account_events, transfer_events)
    print_report(report, args)
    return EXIT_OK if report.ok else EXIT_VIOLATIONS


def print_report(report: AuditReport, args: argparse.Namespace) -> None:
    from bank_cli.audit_report import summarize

    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    print(f"account store:  {_shown(args.accounts_db)}")
    print(f"transfer store: {_shown(args.transfers_db)}")
    print(report.render())
    if not report.ok:
        print(f"bank audit: {summarize(report.violations)}", file=sys.stderr)


def read_events(url: str) -> list[RecordedEvent]:
    """Every event of the store at ``url``, in position order."""
    from event_store import EventStoreError, open_store

    _require_existing_file(url)
    try:
        store = open_store(url)
    except (ValueError, EventStoreError) as exc:
        raise Unreadable(f"{_shown(url)}: {exc}") from exc
    try:
        events: list[RecordedEvent] = []
        position = 0
        while True:
            page = store.read_all(after_position=position, limit=PAGE)
            events.extend(page)
            if len(page) < PAGE:
                return events
            position = page[-1].position
    except EventStoreError as exc:
        raise Unreadable(f"{_shown(url)}: {exc}") from exc
    finally:
        store.close()


def _require_existing_file(url: str) -> None:
    # Opening a SQLite file that is not there would create an empty one.
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        if not Path(parsed.database).is_file():
            raise Unreadable(f"{_shown(url)}: no such database file")


def _shown(url: str) -> str:
    """The URL without its password, fit to print."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
