"""``bank bench``'s reads of the past: GetAccount as of random versions and instants on an
account with a long history, against the same on a fresh account with a short one.

A read of the past starts from the nearest checkpoint and folds fewer events than the
service's ``--checkpoint-every``, so it should cost the same however long the history:
the ratio of the two means is the figure (within 2 x is the bar). The reads are made one
at a time, a long one and a fresh one in turn, so that the machine's drift falls on both.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from bank.v1 import account_pb2 as apb
from bank_cli.bench.services import Bank

CALL_TIMEOUT = 60.0
FRESH_DEPOSITS = 20


async def _points(bank: Bank, account_id: str, count: int, rng: random.Random) -> list[Any]:
    """``count`` random versions of the account, and as many instants: the times at which
    other random versions were recorded."""
    current = await bank.accounts.GetAccount(
        apb.GetAccountRequest(account_id=account_id), timeout=CALL_TIMEOUT
    )
    versions = [rng.randint(1, current.version) for _ in range(count)]
    instants: list[Timestamp] = []
    for version in (rng.randint(1, current.version) for _ in range(count)):
        page = await bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(
                account_id=account_id, from_version=version - 1, page_size=1
            ),
            timeout=CALL_TIMEOUT,
        )
        instants.append(page.events[0].occurred_at)
    return [apb.GetAccountRequest(account_id=account_id, as_of_version=v) for v in versions] + [
        apb.GetAccountRequest(account_id=account_id, as_of_time=t) for t in instants
    ]


async def fresh_account(bank: Bank) -> str:
    """A new account with a short history: opened, then a few deposits."""
    account = await bank.accounts.OpenAccount(
        apb.OpenAccountRequest(owner="bench-fresh", currency="EUR"), timeout=CALL_TIMEOUT
    )
    for n in range(FRESH_DEPOSITS):
        await bank.accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=1 + n, request_id=f"d{n}"),
            timeout=CALL_TIMEOUT,
        )
    return account.account_id


def _summary(milliseconds: list[float]) -> dict[str, float]:
    ordered = sorted(milliseconds)
    return {
        "mean": statistics.fmean(ordered),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


async def time_past_reads(bank: Bank, long_id: str, reads: int) -> dict[str, Any]:
    """Milliseconds of ``reads`` as-of-version and ``reads`` as-of-time reads on the long
    account and on a fresh one; and the long ones' mean over the fresh ones'."""
    rng = random.Random(20_240_602)
    fresh_id = await fresh_account(bank)
    requests = {
        "long": await _points(bank, long_id, reads, rng),
        "fresh": await _points(bank, fresh_id, reads, rng),
    }
    timings: dict[str, dict[str, list[float]]] = {
        kind: {"version": [], "time": []} for kind in requests
    }
    for i in range(2 * reads):
        for kind in ("long", "fresh"):
            request = requests[kind][i]
            started = time.perf_counter()
            await bank.accounts.GetAccount(request, timeout=CALL_TIMEOUT)
            point = "time" if request.HasField("as_of_time") else "version"
            timings[kind][point].append((time.perf_counter() - started) * 1000)
    figures: dict[str, Any] = {
        kind: {point: _summary(ms) for point, ms in by_point.items()}
        for kind, by_point in timings.items()
    }
    figures["reads"] = reads
    figures["ratio"] = {
        point: figures["long"][point]["mean"] / figures["fresh"][point]["mean"]
        for point in ("version", "time")
    }
    return figures


def past_line(figures: dict[str, Any]) -> str:
    parts = []
    for point in ("version", "time"):
        long, fresh = figures["long"][point], figures["fresh"][point]
        parts.append(
            f"as of a {point}: long {long['mean']:.2f} ms (p99 {long['p99']:.2f}),"
            f" fresh {fresh['mean']:.2f} ms (p99 {fresh['p99']:.2f}),"
            f" {figures['ratio'][point]:.2f} x"
        )
    return f"reads of the past, {figures['reads']} each: " + "; ".join(parts)
