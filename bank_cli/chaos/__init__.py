"""``bank chaos``: thousands of transfers while the services are killed, then an audit.

Starts the account service and the transfer service as subprocesses on free loopback
ports (``--account-replicas``/``--transfer-replicas`` processes of each on the same
database, every transfer replica given all the account replicas' addresses), on fresh
databases (SQLite files in a temporary directory, or Postgres schemas of their own, dropped
afterwards), opens accounts with opening balances and keeps ``--in-flight`` transfers
going, each with a transfer id chosen here: a share between two hot accounts in
alternating directions, a few that must be refused (into a closed account, or more than
anyone holds), multi-leg transfers (``--legs-share``), pending holds then posted, partly
posted, voided or left to expire (``--hold-share``), the rest between random pairs; a
share of the single-leg ones goes in ``CreateTransfers`` batches (``--batch-share``); a
share of those that complete is reversed (``--reversal-share``): whole, a part then the
rest, or a part and the rest at once; and beside them, deposits, withdrawals and overdraft
limits on the same accounts (``--cash-share``). Each call goes to the replicas in turn and
is retried with the same id on ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` until it has a
terminal answer: ``COMPLETED`` (``VOIDED``, ``EXPIRED`` for holds), or a refusal such as
``INSUFFICIENT_FUNDS`` (``EXCEEDS_REVERSIBLE_AMOUNT`` for a reversal that found nothing left).

Meanwhile a replica of the account service, of the transfer service or of both is killed
with SIGKILL, ``--kills`` times in all, at random moments spread over the run (each
after a random transfer has started, then a random fraction of a second later), and
restarted on the same port and database; ``--freezes`` times a random replica is stopped
with SIGSTOP for 2 to 8 seconds (around the transfer lease) and continued. With
``--postgres-outage`` the services run on a private Postgres instance (initdb into a
temporary directory, on a free loopback port), which is stopped with ``pg_ctl stop -m
immediate`` mid-load, ``--outages`` times, each time kept down for ``--outage-seconds``
and started again (kills, if any are asked for as well, come between outages). Meanwhile
a read from each service must answer ``UNAVAILABLE`` (``STORE_UNAVAILABLE``), health
must say ``NOT_SERVING``, and the load may see nothing but ``UNAVAILABLE``, a deadline
or a decided outcome; afterwards the same processes must recover by themselves.

At the end every transfer must be terminal and stored as the client saw it; every balance
must be its opening balance plus the credits less the captures of the transfers the client
saw COMPLETED (a hold: what was posted; a reversal: what it moved back), plus the deposits
and less the withdrawals it saw done, with nothing reserved and no pending credit; every
reversed transfer's ``reversed_amount`` must be what its completed reversals moved; every
service must stop cleanly; and ``bank audit`` must pass on both stores. Exit status: 0
when all of this holds, 1 on any violation or when ``--max-seconds`` runs out, 2 when the
run could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bank_cli.chaos import checks
from bank_cli.chaos.config import MAX_AMOUNT, OPENING_BALANCE, ChaosConfig
from bank_cli.chaos.faults import Faults
from bank_cli.chaos.load import Load
from bank_cli.chaos.report import ChaosReport
from bank_cli.harness import (
    DEFAULT_POSTGRES_URL,
    PrivatePostgres,
    PrivatePostgresUnavailable,
    Schemas,
    SetupError,
)

__all__ = [
    "ChaosConfig",
    "ChaosReport",
    "PrivatePostgresUnavailable",
    "SetupError",
    "register",
    "run",
]

EXIT_OK, EXIT_VIOLATIONS, EXIT_SETUP = 0, 1, 2


async def _run(config: ChaosConfig, report: ChaosReport, seed: int) -> None:
    started = time.monotonic()
    load = Load(config, report, random.Random(seed))
    faults_rng = random.Random(seed + 1)
    workdir = config.workdir
    temporary = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="bank-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    postgres: PrivatePostgres | None = None
    schemas: Schemas | None = None
    set_up = False
    try:
        async with asyncio.timeout(config.max_seconds):
            if config.db == "sqlite":
                accounts_db = f"sqlite:///{workdir / 'accounts.db'}"
                transfers_db = f"sqlite:///{workdir / 'transfers.db'}"
            else:
                url = config.postgres_url
                if config.postgres_outage:
                    postgres = PrivatePostgres()
                    await asyncio.to_thread(postgres.init)
                    await asyncio.to_thread(postgres.start)
                    url = postgres.url
                    load.say(f"private Postgres on 127.0.0.1:{postgres.port} in {postgres.dir}")
                schemas = Schemas(url, prefix="chaos")
                accounts_db = await asyncio.to_thread(schemas.new, "accounts")
                transfers_db = await asyncio.to_thread(schemas.new, "transfers")
            await load.start_services(accounts_db, transfers_db, workdir)
            await load.open_accounts()
            set_up = True
            await load.run(Faults(load, faults_rng, postgres))
            await checks.check(load)
    except TimeoutError:
        report.aborted = f"not done within --max-seconds {config.max_seconds:g}"
        if set_up:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    report.aborted += "\n" + await checks.diagnose_stall(load)
    except SetupError as exc:
        if not set_up:
            raise
        report.aborted = str(exc)
    finally:
        if set_up and not report.load_seconds and load.load_started:
            report.load_seconds = time.monotonic() - load.load_started
        await load.close_channels()
        load.kill_all()
        try:
            if schemas is not None:
                with contextlib.suppress(SetupError):
                    await asyncio.to_thread(schemas.drop)
        finally:
            if postgres is not None:
                await asyncio.to_thread(postgres.close)
        report.seconds = time.monotonic() - started
        if temporary and report.ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            report.workdir = str(workdir)


def run(config: ChaosConfig) -> ChaosReport:
    """Runs the chaos experiment; the report says what happened and what was violated.

    Raises ``SetupError`` (``PrivatePostgresUnavailable`` for ``--postgres-outage``) when
    the run could not be set up, ``ValueError`` for a configuration that makes no sense.
    """
    config.check()
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    report = ChaosReport(
        config={
            "db": config.db,
            "transfers": config.transfers,
            "accounts": config.accounts,
            "hot_share": config.hot_share,
            "refused_share": config.refused_share,
            "opening": config.opening,
            "in_flight": config.in_flight,
            "kills": config.kills,
            "account_replicas": config.account_replicas,
            "transfer_replicas": config.transfer_replicas,
            "freezes": config.freezes,
            "legs_share": config.legs_share,
            "hold_share": config.hold_share,
            "batch_share": config.batch_share,
            "reversal_share": config.reversal_share,
            "cash_share": config.cash_share,
            "postgres_outage": config.postgres_outage,
            "outages": config.outages if config.postgres_outage else 0,
            "outage_seconds": config.outage_seconds if config.postgres_outage else 0,
            "max_seconds": config.max_seconds,
        },
        seed=seed,
    )
    asyncio.run(_run(config, report, seed))
    return report


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "chaos",
        help="run thousands of transfers while killing the services, then audit",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the services' databases: SQLite files, or Postgres schemas (default sqlite)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BANK_CHAOS_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="server for --db postgres; the run gets fresh schemas there, dropped afterwards"
        " ($BANK_CHAOS_POSTGRES_URL; default %(default)s)",
    )
    parser.add_argument(
        "--transfers", type=int, default=3000, metavar="N", help="(default %(default)s)"
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=50,
        metavar="M",
        help="open accounts, the hot pair among them, and one closed account besides"
        " (default %(default)s)",
    )
    parser.add_argument(
        "--hot-share",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="share of transfers between the hot pair (default %(default)s)",
    )
    parser.add_argument(
        "--refused-share",
        type=float,
        default=0.04,
        metavar="SHARE",
        help="share that must be refused: half into a closed account, half"
        " larger than any balance (default %(default)s)",
    )
    parser.add_argument(
        "--opening",
        type=int,
        default=OPENING_BALANCE,
        metavar="AMOUNT",
        help="each account's opening balance, in minor units; transfers are 1 to"
        f" {MAX_AMOUNT} (default %(default)s)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=64,
        metavar="K",
        help="CreateTransfer calls kept going at once (default %(default)s)",
    )
    parser.add_argument(
        "--kills",
        type=int,
        default=None,
        metavar="K",
        help="SIGKILLs in all, each of the account service, the transfer service or both"
        " (default 20; 0 with --postgres-outage)",
    )
    parser.add_argument(
        "--account-replicas",
        type=int,
        default=1,
        metavar="N",
        help="account service processes on the one accounts database (default %(default)s)",
    )
    parser.add_argument(
        "--transfer-replicas",
        type=int,
        default=1,
        metavar="N",
        help="transfer service processes on the one transfers database, each given every"
        " account replica's address; above 1 needs --db postgres (default %(default)s)",
    )
    parser.add_argument(
        "--freezes",
        type=int,
        default=0,
        metavar="N",
        help="SIGSTOPs of a random replica, each stopped 2 to 8 s (around the transfer"
        " lease) and then SIGCONT (default %(default)s)",
    )
    parser.add_argument(
        "--legs-share",
        type=float,
        default=0.1,
        metavar="SHARE",
        help="share of multi-leg transfers (2 or 3 legs, a few refused) (default %(default)s)",
    )
    parser.add_argument(
        "--hold-share",
        type=float,
        default=0.1,
        metavar="SHARE",
        help="share of pending holds, then posted, partly posted, voided or left to expire"
        " (default %(default)s)",
    )
    parser.add_argument(
        "--batch-share",
        type=float,
        default=0.2,
        metavar="SHARE",
        help="share of the single-leg immediate transfers sent in CreateTransfers batches"
        " of 2 to 16 (default %(default)s)",
    )
    parser.add_argument(
        "--reversal-share",
        type=float,
        default=0.1,
        metavar="SHARE",
        help="share of the transfers that can be reversed (neither refused on purpose nor"
        " voided nor expiring) reversed once COMPLETED: whole, a part then the rest, or a part"
        " and the rest at once (default %(default)s)",
    )
    parser.add_argument(
        "--cash-share",
        type=float,
        default=0.05,
        metavar="SHARE",
        help="for each transfer, the chance of a deposit, a withdrawal or an overdraft limit"
        " set beside it, on the same accounts, each retried with its request id (default"
        " %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the same seed plans the same transfers and the same kills, in the same order"
        " (timing still varies; default: a random seed, reported)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        metavar="T",
        help="give up, as a failure, after this long (default %(default)s)",
    )
    parser.add_argument(
        "--postgres-outage",
        action="store_true",
        help="run on a private Postgres instance (needs initdb and pg_ctl; as root, the"
        " postgres user and runuser) and stop it mid-load",
    )
    parser.add_argument(
        "--outages", type=int, default=1, metavar="N", help="with --postgres-outage (default 1)"
    )
    parser.add_argument(
        "--outage-seconds",
        type=float,
        default=5.0,
        metavar="S",
        help="how long Postgres stays down each time (default %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the services' logs (and SQLite files) here; by default they go to a"
        " temporary directory, removed after a clean run and kept after a failed one",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    kills = args.kills if args.kills is not None else (0 if args.postgres_outage else 20)
    config = ChaosConfig(
        db=args.db,
        postgres_url=args.postgres_url,
        transfers=args.transfers,
        accounts=args.accounts,
        hot_share=args.hot_share,
        refused_share=args.refused_share,
        opening=args.opening,
        in_flight=args.in_flight,
        kills=kills,
        account_replicas=args.account_replicas,
        transfer_replicas=args.transfer_replicas,
        freezes=args.freezes,
        legs_share=args.legs_share,
        hold_share=args.hold_share,
        batch_share=args.batch_share,
        reversal_share=args.reversal_share,
        cash_share=args.cash_share,
        seed=args.seed,
        max_seconds=args.max_seconds,
        postgres_outage=args.postgres_outage,
        outages=args.outages,
        outage_seconds=args.outage_seconds,
        workdir=args.workdir,
        progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
    )
    try:
        report = run(config)
    except ValueError as exc:
        print(f"bank chaos: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except SetupError as exc:
        print(f"bank chaos: could not set up the run: {exc}", file=sys.stderr)
        return EXIT_SETUP
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render())
    return EXIT_OK if report.ok else EXIT_VIOLATIONS
