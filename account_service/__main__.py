"""python -m account_service: serve AccountService and ReservationService."""

from __future__ import annotations

import asyncio
import sys

from account_service.server import DEFAULT_DB, DEFAULT_LISTEN, run
from grpc_common.settings import common_parser, configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = common_parser(
        "account_service",
        "Serve bank.v1.AccountService and bank.v1.ReservationService.",
        DEFAULT_LISTEN,
        DEFAULT_DB,
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    asyncio.run(run(args.listen, args.db, float(args.grace)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
