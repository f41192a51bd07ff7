"""``bank bench-variants``: what each performance change buys, measured in one run.

The seed's hot-pair run (transfers alternating between two accounts) is repeated with the
services started under each variant's settings, from the baseline (one unary call per
protocol step, the standard asyncio loop) to the defaults, on fresh databases each time.
Every variant's money is checked like any benchmark run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bank_cli.bench import (
    DEFAULT_POSTGRES_URL,
    RESERVATION,
    Bank,
    Databases,
    Plan,
    cpu_reference_ms,
    open_accounts,
    run_plan,
    warm_up,
)
from grpc_common.settings import tune_gc

# (name, environment of both services); each adds one change to the one before.
_BEFORE = {
    "BANK_STORE_APPENDS": "core",
    "BANK_OVERLAP_RECORDS": "0",
    "BANK_FORWARD_CALLS": "0",
    "BANK_GC": "python",
}
VARIANTS: list[tuple[str, dict[str, str]]] = [
    (
        "unary steps, asyncio",
        {"BANK_ACCOUNTS_TRANSPORT": "unary", "BANK_EVENT_LOOP": "asyncio", **_BEFORE},
    ),
    ("+ uvloop", {"BANK_ACCOUNTS_TRANSPORT": "unary", **_BEFORE}),
    ("+ ExecuteSteps stream", dict(_BEFORE)),
    (
        "+ driver appends",
        {"BANK_OVERLAP_RECORDS": "0", "BANK_FORWARD_CALLS": "0", "BANK_GC": "python"},
    ),
    ("+ overlapped records", {"BANK_FORWARD_CALLS": "0", "BANK_GC": "python"}),
    ("+ forward sequence", {"BANK_GC": "python"}),
    ("+ tuned GC", {}),
]
POSTGRES_VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("4 store writers", {"BANK_STORE_WRITERS": "4"}),
    ("1 store writer", {}),
]


@contextlib.contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _measure(
    args: argparse.Namespace, name: str, env: dict[str, str], in_flight: int, log_dir: Path
) -> dict[str, Any]:
    databases = Databases(args.db, args.postgres_url)
    try:
        with _environment(env):
            bank = Bank(
                databases.new("accounts"),
                databases.new("transfers"),
                log_dir,
                f"{name.replace(' ', '_')}-{in_flight}",
                5.0,
            )
            async with bank:
                await warm_up(bank)
                before = await open_accounts(bank, 2, "variant")
                total = args.total if in_flight > 1 else min(args.total, 400)
                plan = Plan("variants", name, RESERVATION, total, in_flight)
                result, _ = await run_plan(bank, plan, before)
        result["variant_env"] = env
        return result
    finally:
        databases.close()


async def _run(args: argparse.Namespace, out: Path, log_dir: Path) -> int:
    variants = VARIANTS + (POSTGRES_VARIANTS if args.db == "postgres" else [])
    print(
        f"bank bench-variants: {args.db}, {args.total} transfers (400 at 1 in flight),"
        f" in flight {', '.join(map(str, args.in_flight))};"
        f" CPU reference {cpu_reference_ms():g} ms"
    )
    print(
        f"{'variant':<24} {'in flight':>9} {'transfers/s':>11} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'acct ms/t':>9} {'xfer ms/t':>9} {'money':>6}"
    )
    results = []
    for name, env in variants:
        for in_flight in args.in_flight:
            result = await _measure(args, name, env, in_flight, log_dir)
            results.append(result)
            per = result["seconds"] / result["requested"] * 1000
            cpu = result["cpu"]
            acct = (cpu.get("account_service") or 0) * per
            xfer = (cpu.get("transfer_service") or 0) * per
            print(
                f"{name:<24} {in_flight:>9} {result['succeeded_per_second']:>11.0f}"
                f" {result['latency_ms']['p50']:>8.1f} {result['latency_ms']['p99']:>8.1f}"
                f" {acct:>9.2f} {xfer:>9.2f} {result['status']:>6}",
                flush=True,
            )
    path = out / f"bench-variants-{args.db}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path}")
    return 0 if all(r["status"] == "OK" for r in results) else 1


def _counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma list of positive integers, e.g. 1,100")
    return counts


def command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / f"logs-variants-{args.db}"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir()
    tune_gc()  # the load generator's collector, as in ``bank bench``
    return asyncio.run(_run(args, out, log_dir))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench-variants",
        help="measure what each performance change buys, in one run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--total", type=int, default=2000, help="transfers per variant")
    parser.add_argument(
        "--in-flight",
        type=_counts,
        default=[1, 100],
        help="comma list of concurrencies, each run for every variant (default 1,100)",
    )
    parser.add_argument("--out", default="bench-results")
    parser.set_defaults(func=command)
