"""python -m transfer_service: serve TransferService."""

from __future__ import annotations

import sys

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
from transfer_service.server import (
    DEFAULT_ACCOUNTS,
    DEFAULT_DB,
    DEFAULT_LISTEN,
    SERVICE_NAME,
    run,
)


def main(argv: list[str] | None = None) -> int:
    keep_stop_signals()
    parser = common_parser(
        "transfer_service", "Serve bank.v1.TransferService.", DEFAULT_LISTEN, DEFAULT_DB
    )
    env_flag(
        parser,
        "--accounts",
        "BANK_ACCOUNTS",
        DEFAULT_ACCOUNTS,
        "account service address: HOST:PORT, or several, comma-separated (each account's"
        " steps go to one of them)",
    )
    env_flag(parser, "--call-deadline", "BANK_CALL_DEADLINE", "5", "seconds per call to accounts")
    add_security_flags(parser, accounts_client=True)
    add_observability_flags(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format, SERVICE_NAME)
    configure_security(parser, args)
    configure_observability(parser, args, SERVICE_NAME)
    grace, deadline = float(args.grace), float(args.call_deadline)
    run_async(run(args.listen, args.db, args.accounts, grace, deadline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
