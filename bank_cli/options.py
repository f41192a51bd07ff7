"""What every account and transfer command's parser shares: the connection and output
options, the default addresses, and the exit statuses. Only ``argparse``: a command's
``--help`` is answered without loading gRPC.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_ACCOUNTS = "127.0.0.1:50051"
DEFAULT_TRANSFERS = "127.0.0.1:50052"
DEFAULT_TIMEOUT = 30.0

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_ERROR = 5
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = """\
exit status of open, deposit, withdraw, transfer, show, history, watch, transfers, close,
overdraft, statement:
  0    done
  1    refused: a business rule (insufficient funds, account closed or not empty,
       currency mismatch, balance out of range), or an id or request id reused with
       other contents
  2    usage: a bad argument, rejected here or by the service (INVALID_ARGUMENT)
  3    not found: no such account or transfer
  4    unavailable: a service is down, busy or slower than --timeout, or the transfer
       is still running; safe to retry with the same --request-id, --transfer-id or
       --account-id (the one printed)
  5    any other error (permission denied, internal error)
  130  interrupted by Ctrl-C (watch exits 0)

AMOUNT is always in minor units of the account's currency: 2500 is 25.00 EUR.
Amounts are printed in major units with the currency. `bank audit` and `bank bench`
describe their own exit status."""


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


# (option, environment variable, help) of the files that reach secured services.
_SECURITY_OPTIONS = (
    ("--ca", "BANK_CA", "call both services over TLS, trusting this CA (default plaintext)"),
    ("--client-cert", "BANK_CLIENT_CERT", "with --ca: present this certificate (mutual TLS)"),
    ("--client-key", "BANK_CLIENT_KEY", "the key of --client-cert"),
    ("--token-file", "BANK_TOKEN_FILE", "send the bearer token this file holds on every call"),
)


def common_options() -> argparse.ArgumentParser:
    """The options every account and transfer command takes (a parent parser)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection and output")
    group.add_argument(
        "--accounts",
        metavar="ADDR",
        default=os.environ.get("BANK_ACCOUNTS", DEFAULT_ACCOUNTS),
        help="the account service (env BANK_ACCOUNTS; default %(default)s)",
    )
    group.add_argument(
        "--transfers",
        metavar="ADDR",
        default=os.environ.get("BANK_TRANSFERS", DEFAULT_TRANSFERS),
        help="the transfer service (env BANK_TRANSFERS; default %(default)s)",
    )
    for flag, env, help_text in _SECURITY_OPTIONS:
        group.add_argument(
            flag,
            metavar="FILE",
            default=os.environ.get(env) or None,
            help=f"{help_text} (env {env})",
        )
    group.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (JSON lines for watch), fields named as in the protos",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_float,
        default=None,
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g}); for watch, how long to watch",
    )
    return options
