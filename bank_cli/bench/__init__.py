"""``bank bench``: the seed experiment and a few more, against both services, as numbers.

Starts the account service (with the experimental naive strategy switched on) and the
transfer service as subprocesses on free loopback ports, each on a fresh database, and
drives them with one light asynchronous load generator (grpc.aio, one process, requests
built before the clock starts, one channel per service). Runs, in the seed's terms
(transfers requested, succeeded, failed, throughput, p50/p99 latency):

``seed``     50 transfers with 4 in flight and 800 with 100 in flight, alternating
             directions between two accounts: reservation protocol and naive strategy.
``sweep``    the same hot pair at 1, 4, 16, 64, 100 and 256 in flight, both strategies.
``uniform``  10,000 transfers, 100 in flight, between 10,000 accounts chosen uniformly
             (reservation protocol), three times on the same accounts.
``long``     the 800/100 hot-pair run again, after each account already holds 100,000
             events, written straight into the account store before the service starts,
             with the snapshot a running service would have left (reservation protocol).
             Each account is read once before the measured run: that first touch, which
             loads the account into the service's memory, is reported on its own
             ("first touch ms"). After the runs, reads of the past (GetAccount as of
             random versions and instants) on a long account are timed against the same
             on a fresh account with a short history ("reads of the past"): their cost
             does not grow with the history, so the ratio stays near 1 (at most 2).
``batch``    40,000 transfers sent with CreateTransfers in batches of ``--batch`` (100),
             8 batches in flight: on the hot pair, then between 10,000 accounts.
``replicas`` the 800/100 hot pair with 1, 2, 1 and 2 account-service replicas (each
             account's steps go to one replica), alternating; 1 is the control.

``--runs`` picks groups (a comma list); without it, all of them run.

``uniform`` and ``long`` are each measured against a control on the same services: a
hot-pair run of the same size on two fresh accounts, made before, between and after the
measured runs (control, measured, control, ...). The machine's speed drifts from minute to
minute, and other services would start from other databases; in one sitting, interleaved,
the two rates compare. Each group reports the ratio: the mean rate of its measured runs
over the mean rate of its controls.

After every run the accounts are read back: the sum of their balances must be unchanged,
nothing may stay reserved, and (when every call got a definite answer) each balance must
be exactly what the acknowledged transfers imply. A run that moves money wrongly is
marked FAILED and makes the command exit non-zero; it reports a failure, not a number.

Results go to ``<out>/bench-<db>.json`` and, when matplotlib is installed, a chart of
throughput and p99 latency against concurrency to ``<out>/bench-<db>.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bank_cli.bench.plans import FULL, GROUPS, QUICK, compare
from bank_cli.bench.report import HEADER, comparison_line, describe_machine, draw_chart, print_table
from bank_cli.bench.runner import run_group
from bank_cli.harness import DEFAULT_POSTGRES_URL
from grpc_common.settings import tune_gc


async def bench(args: argparse.Namespace, out: Path, log_dir: Path) -> int:
    scale = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    machine = describe_machine()
    print(
        f"bank bench: {args.db}, {'quick' if args.quick else 'full'} scale,"
        f" runs {', '.join(args.runs)}; {os.cpu_count()} CPUs;"
        f" naive lock timeout {scale.naive_lock_timeout:g} s;"
        f" CPU reference {machine['cpu_reference_ms']:g} ms",
        flush=True,
    )
    print(HEADER, flush=True)
    results: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    for group in args.runs:
        print(f"[{group}]", flush=True)
        ran = await run_group(group, scale, args.db, args.postgres_url, log_dir, args.batch)
        results += ran
        comparison = compare(ran)
        if comparison is not None:
            comparisons.append(comparison)
            print("  " + comparison_line(comparison), flush=True)

    failed = [r for r in results if r["status"] != "OK"]
    report = {
        "db": args.db,
        "quick": args.quick,
        "naive_lock_timeout_seconds": scale.naive_lock_timeout,
        "runs": list(args.runs),
        "started_at": started.isoformat(),
        "machine": machine,
        "ok": not failed,
        "results": results,
        "comparisons": comparisons,
    }
    json_path = out / f"bench-{args.db}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print_table(results)
    for comparison in comparisons:
        print(comparison_line(comparison))
    print()
    print(f"results: {json_path}")
    chart = out / f"bench-{args.db}.png"
    title = (
        f"{args.db}, {os.cpu_count()} CPUs: transfers alternating between two accounts"
        f" (naive lock timeout {scale.naive_lock_timeout:g} s)"
    )
    why_not = draw_chart(results, chart, title)
    print(f"chart: {why_not}" if why_not else f"chart: {chart}")
    if failed:
        names = ", ".join(f"{r['name']} ({r['strategy']})" for r in failed)
        print(f"FAILED: money moved wrongly in {names}", file=sys.stderr)
        return 1
    return 0


def _runs(value: str) -> list[str]:
    runs = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in runs if name not in GROUPS]
    if unknown or not runs:
        raise argparse.ArgumentTypeError(f"runs are a comma list of {', '.join(GROUPS)}")
    return runs


def command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / f"logs-{args.db}"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir()
    # The load generator makes many small calls, like the services: the same collector.
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(bench(args, out, log_dir))
    return uvloop.run(bench(args, out, log_dir))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="run the seed experiment and more: reservation protocol vs naive locking",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BANK_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="server for --db postgres; every run group gets fresh schemas there, dropped"
        f" afterwards ($BANK_BENCH_POSTGRES_URL; default {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--quick", action="store_true", help="small runs, for CI: seconds")
    parser.add_argument(
        "--batch",
        type=int,
        default=100,
        help="transfers per CreateTransfers call in the batch runs (default 100)",
    )
    parser.add_argument("--out", default="bench-results", help="directory for JSON and chart")
    parser.add_argument(
        "--runs",
        type=_runs,
        default=list(GROUPS),
        help=f"comma list of {', '.join(GROUPS)} (default: all)",
    )
    parser.set_defaults(func=command)
