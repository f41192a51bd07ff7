"""python -m account_service: serve AccountService and ReservationService."""

from __future__ import annotations

import argparse
import os
import sys

from account_service.server import DEFAULT_DB, DEFAULT_LISTEN, SERVICE_NAME, run
from account_service.streams import DEFAULT_CHECKPOINT_EVERY
from account_service.watchers import DEFAULT_MAX_PER_CALLER
from grpc_common.settings import (
    add_observability_flags,
    add_security_flags,
    common_parser,
    configure_logging,
    configure_observability,
    configure_security,
    env_flag,
    keep_stop_signals,
    run_async,
)


def main(argv: list[str] | None = None) -> int:
    keep_stop_signals()
    parser = common_parser(
        "account_service",
        "Serve bank.v1.AccountService and bank.v1.ReservationService.",
        DEFAULT_LISTEN,
        DEFAULT_DB,
    )
    parser.add_argument(
        "--experimental-naive-transfers",
        action="store_true",
        default=os.environ.get("BANK_EXPERIMENTAL_NAIVE_TRANSFERS") == "1",
        help="also serve bank.experimental.v1.NaiveTransferService, the lock-both-accounts"
        " strategy that deadlocks, for comparison only"
        " ($BANK_EXPERIMENTAL_NAIVE_TRANSFERS=1; default off)",
    )
    env_flag(
        parser,
        "--experimental-naive-lock-timeout",
        "BANK_EXPERIMENTAL_NAIVE_LOCK_TIMEOUT",
        "5",
        "seconds the naive strategy waits for each account's lock",
    )
    env_flag(
        parser,
        "--snapshot-every",
        "BANK_SNAPSHOT_EVERY",
        "1000",
        "events an account grows by between two snapshots of its state; 0: none",
    )
    env_flag(
        parser,
        "--checkpoint-every",
        "BANK_CHECKPOINT_EVERY",
        str(DEFAULT_CHECKPOINT_EVERY),
        "an account's checkpoint is kept at every version that is a multiple of this, for"
        " reads of its past; 0: none",
    )
    env_flag(
        parser,
        "--max-watchers-per-caller",
        "BANK_MAX_WATCHERS_PER_CALLER",
        str(DEFAULT_MAX_PER_CALLER),
        "WatchAccount streams one caller (a token, else a connection) may have open at once",
    )
    add_security_flags(parser, reservation=True)
    add_observability_flags(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format, SERVICE_NAME)
    configure_security(parser, args)
    configure_observability(parser, args, SERVICE_NAME)
    naive = args.experimental_naive_transfers
    lock_timeout = float(args.experimental_naive_lock_timeout)
    snapshot_every = _count(parser, "--snapshot-every", args.snapshot_every)
    checkpoint_every = _count(parser, "--checkpoint-every", args.checkpoint_every)
    max_watchers = _count(parser, "--max-watchers-per-caller", args.max_watchers_per_caller)
    run_async(
        run(
            args.listen,
            args.db,
            float(args.grace),
            naive_transfers=naive,
            naive_lock_timeout=lock_timeout,
            snapshot_every=snapshot_every,
            checkpoint_every=checkpoint_every,
            max_watchers_per_caller=max_watchers,
        )
    )
    return 0


def _count(parser: argparse.ArgumentParser, flag: str, value: str) -> int:
    try:
        count = int(value)
        if count < 0:
            raise ValueError
    except ValueError:
        parser.error(f"{flag}: expected a whole number >= 0, not {value!r}")
    return count


if __name__ == "__main__":
    sys.exit(main())
