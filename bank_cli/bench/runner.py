"""``bank bench``'s runs: the load generator, each run's money checked afterwards, and a
group of runs on one bank."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2

from bank.experimental.v1 import naive_pb2
from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.bench.past import past_line, time_past_reads
from bank_cli.bench.plans import OPENING_BALANCE, RESERVATION, Plan, Scale, plans_for
from bank_cli.bench.report import first_touch_line, row
from bank_cli.bench.services import Bank, Databases, preload_accounts
from grpc_common.errors import error_info

SETUP_IN_FLIGHT = 200
# Per call. A naive transfer may wait 5 s for each of its two locks.
CALL_TIMEOUT = 120.0
# Answers that do not say whether the transfer happened.
AMBIGUOUS = frozenset(
    {"DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL", "TRANSFER_PENDING", "UNAVAILABLE"}
)


async def _pool(items: Sequence[Any], width: int, work: Callable[[Any], Awaitable[None]]) -> None:
    """Runs ``work`` on every item, at most ``width`` at a time."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(min(width, len(items)))))


def _outcome(error: grpc.aio.AioRpcError) -> str:
    info = error_info(error)
    if info is not None and info.reason:
        return info.reason
    return error.code().name


async def drive(
    call: Callable[..., Awaitable[Any]],
    requests: Sequence[Any],
    in_flight: int,
    succeeded: Callable[[Any], bool],
) -> tuple[list[float], list[str | None]]:
    """Sends every request, ``in_flight`` at a time; each one's latency and failure."""
    latencies = [0.0] * len(requests)
    failures: list[str | None] = [None] * len(requests)
    pending = iter(range(len(requests)))
    clock = time.perf_counter

    async def worker() -> None:
        for i in pending:
            started = clock()
            try:
                if not succeeded(await call(requests[i], timeout=CALL_TIMEOUT)):
                    failures[i] = "NOT_COMPLETED"
            except grpc.aio.AioRpcError as error:
                failures[i] = _outcome(error)
            latencies[i] = clock() - started

    await asyncio.gather(*(worker() for _ in range(min(in_flight, len(requests)))))
    return latencies, failures


async def open_accounts(bank: Bank, count: int, label: str) -> dict[str, int]:
    """Opens ``count`` accounts with the opening balance; their balances by id."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    balances: dict[str, int] = {}

    async def one(account_id: str) -> None:
        await bank.accounts.OpenAccount(
            apb.OpenAccountRequest(account_id=account_id, owner=label, currency="EUR"),
            timeout=CALL_TIMEOUT,
        )
        account = await bank.accounts.Deposit(
            apb.DepositRequest(account_id=account_id, amount=OPENING_BALANCE, request_id="opening"),
            timeout=CALL_TIMEOUT,
        )
        balances[account_id] = account.balance

    await _pool(ids, SETUP_IN_FLIGHT, one)
    return {account_id: balances[account_id] for account_id in ids}


def _pairs(plan: Plan, ids: Sequence[str]) -> list[tuple[str, str, int]]:
    """(source, target, amount) of every transfer of the run."""
    if plan.accounts == 2:
        a, b = ids
        return [((a, b) if n % 2 == 0 else (b, a)) + (1 + n % 97,) for n in range(plan.total)]
    rng = random.Random(20_240_601)
    pairs = []
    for n in range(plan.total):
        source = rng.randrange(len(ids))
        target = rng.randrange(len(ids) - 1)
        target += target >= source
        pairs.append((ids[source], ids[target], 1 + n % 97))
    return pairs


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def read_accounts(bank: Bank, ids: Sequence[str]) -> dict[str, apb.Account]:
    found: dict[str, apb.Account] = {}

    async def one(account_id: str) -> None:
        found[account_id] = await bank.accounts.GetAccount(
            apb.GetAccountRequest(account_id=account_id), timeout=CALL_TIMEOUT
        )

    await _pool(ids, SETUP_IN_FLIGHT, one)
    return found


async def first_touch(bank: Bank, ids: Sequence[str]) -> list[float]:
    """Milliseconds of one GetAccount per account, one after the other. The first call
    for an account loads it into the service's memory: its snapshot and later events."""
    times = []
    for account_id in ids:
        started = time.perf_counter()
        await bank.accounts.GetAccount(
            apb.GetAccountRequest(account_id=account_id), timeout=CALL_TIMEOUT
        )
        times.append((time.perf_counter() - started) * 1000)
    return times


async def check_money(
    bank: Bank,
    before: dict[str, int],
    pairs: Sequence[tuple[str, str, int]],
    failures: Sequence[str | None],
) -> tuple[dict[str, Any], dict[str, int]]:
    """Conservation after a run: sums, holds, and balances against acknowledged transfers;
    and the balances read back."""
    ambiguous = sum(1 for failure in failures if failure in AMBIGUOUS)
    ids = list(before)
    # An unanswered transfer may still be running: give it time to end before judging.
    deadline = time.monotonic() + (60.0 if ambiguous else 0.0)
    while True:
        after = await read_accounts(bank, ids)
        reserved = sum(account.reserved for account in after.values())
        if reserved == 0 or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.5)
    expected = dict(before)
    for (source, target, amount), failure in zip(pairs, failures, strict=True):
        if failure is None:
            expected[source] -= amount
            expected[target] += amount
    sum_before = sum(before.values())
    sum_after = sum(account.balance for account in after.values())
    wrong = [a for a in ids if after[a].balance != expected[a]]
    problems = []
    if sum_after != sum_before:
        problems.append(f"sum of balances {sum_before} -> {sum_after}")
    if reserved:
        problems.append(f"{reserved} still reserved")
    if wrong and not ambiguous:
        problems.append(f"{len(wrong)} balances differ from the acknowledged transfers")
    report = {
        "ok": not problems,
        "problems": problems,
        "sum_before": sum_before,
        "sum_after": sum_after,
        "reserved_after": reserved,
        "accounts": len(ids),
        "balances_match_acknowledged": not wrong,
        "ambiguous_answers": ambiguous,
    }
    return report, {account_id: after[account_id].balance for account_id in ids}


async def run_plan(
    bank: Bank, plan: Plan, before: dict[str, int]
) -> tuple[dict[str, Any], dict[str, int]]:
    """One run: its result, and the balances read back after it (where the next run on the
    same accounts starts)."""
    ids = list(before)
    pairs = _pairs(plan, ids)
    if plan.strategy == RESERVATION:
        call = bank.transfers.CreateTransfer
        completed = tpb.TRANSFER_STATE_COMPLETED
        requests = [
            tpb.CreateTransferRequest(
                transfer_id=str(uuid.uuid4()),
                from_account_id=source,
                to_account_id=target,
                amount=amount,
            )
            for source, target, amount in pairs
        ]

        def succeeded(reply: Any) -> bool:
            return reply.state == completed
    else:
        call = bank.naive.Transfer
        requests = [
            naive_pb2.NaiveTransferRequest(
                transfer_id=str(uuid.uuid4()),
                from_account_id=source,
                to_account_id=target,
                amount=amount,
            )
            for source, target, amount in pairs
        ]

        def succeeded(reply: Any) -> bool:
            return True

    services_before = bank.cpu()
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    if plan.batch:
        latencies, failures = await drive_batches(bank, requests, plan.batch, plan.in_flight)
    else:
        latencies, failures = await drive(call, requests, plan.in_flight, succeeded)
    seconds = time.perf_counter() - wall_before
    client_cpu = time.process_time() - cpu_before
    services_after = bank.cpu()

    money, balances_after = await check_money(bank, before, pairs, failures)
    ordered = sorted(latencies)
    ok = sum(1 for failure in failures if failure is None)
    service_cpu = {
        name: (
            (services_after[name] - start) / seconds
            if start is not None and services_after[name] is not None
            else None
        )
        for name, start in services_before.items()
    }
    return {
        "group": plan.group,
        "name": plan.name,
        "strategy": plan.strategy,
        "in_flight": plan.in_flight,
        "accounts": plan.accounts,
        "preloaded_events": plan.preloaded_events,
        "control": plan.control,
        "requested": plan.total,
        "succeeded": ok,
        "failed": plan.total - ok,
        "failures": dict(Counter(failure for failure in failures if failure is not None)),
        "seconds": seconds,
        "requests_per_second": plan.total / seconds,
        "succeeded_per_second": ok / seconds,
        "latency_ms": {
            "p50": _percentile(ordered, 0.50) * 1000,
            "p90": _percentile(ordered, 0.90) * 1000,
            "p99": _percentile(ordered, 0.99) * 1000,
            "max": ordered[-1] * 1000,
        },
        # Fractions of one core over the run's wall time.
        "cpu": {"load_generator": client_cpu / seconds, **service_cpu},
        "money": money,
        "status": "OK" if money["ok"] else "FAILED",
    }, balances_after


async def drive_batches(
    bank: Bank, requests: Sequence[tpb.CreateTransferRequest], size: int, in_flight: int
) -> tuple[list[float], list[str | None]]:
    """Sends the transfers as CreateTransfers calls of ``size``, ``in_flight`` calls at a
    time; each call's latency, and each transfer's failure."""
    batches = [
        tpb.CreateTransfersRequest(transfers=requests[start : start + size])
        for start in range(0, len(requests), size)
    ]
    latencies = [0.0] * len(batches)
    failures: list[str | None] = [None] * len(requests)
    pending = iter(range(len(batches)))
    clock = time.perf_counter

    async def worker() -> None:
        for i in pending:
            started = clock()
            first = i * size
            try:
                answer = await bank.transfers.CreateTransfers(batches[i], timeout=CALL_TIMEOUT)
                for n, result in enumerate(answer.results):
                    failures[first + n] = _item_failure(result)
            except grpc.aio.AioRpcError as error:
                for n in range(len(batches[i].transfers)):
                    failures[first + n] = _outcome(error)
            latencies[i] = clock() - started

    await asyncio.gather(*(worker() for _ in range(min(in_flight, len(batches)))))
    return latencies, failures


def _item_failure(result: tpb.CreateTransferResult) -> str | None:
    if result.HasField("transfer"):
        return None if result.transfer.state == tpb.TRANSFER_STATE_COMPLETED else "NOT_COMPLETED"
    for detail in result.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return str(result.error.code)


async def warm_up(bank: Bank) -> None:
    """A few unmeasured transfers of each kind on accounts of their own, so the first
    measured run does not pay for opening connections and files."""
    ids = list(await open_accounts(bank, 2, "warm-up"))
    for n in range(40):
        source, target = (ids[0], ids[1]) if n % 2 == 0 else (ids[1], ids[0])
        if n % 4 == 0:
            await bank.naive.Transfer(
                naive_pb2.NaiveTransferRequest(
                    from_account_id=source, to_account_id=target, amount=1
                ),
                timeout=CALL_TIMEOUT,
            )
        else:
            await bank.transfers.CreateTransfer(
                tpb.CreateTransferRequest(from_account_id=source, to_account_id=target, amount=1),
                timeout=CALL_TIMEOUT,
            )


async def run_group(
    group: str, scale: Scale, kind: str, postgres_url: str, log_dir: Path, batch: int = 100
) -> list[dict[str, Any]]:
    if group == "replicas":
        return await _run_replicas(scale, kind, postgres_url, log_dir)
    databases = Databases(kind, postgres_url)
    try:
        accounts_db, transfers_db = databases.new("accounts"), databases.new("transfers")
        plans = plans_for(group, scale, batch)
        preloaded: dict[str, int] = {}
        if group == "long":
            ids = [str(uuid.uuid4()), str(uuid.uuid4())]
            started = time.perf_counter()
            preloaded = preload_accounts(accounts_db, ids, scale.long_events)
            print(
                f"  wrote {scale.long_events:,} events into each of 2 accounts"
                f" in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
        results = []
        label = f"{kind}-{group}"
        async with Bank(
            accounts_db, transfers_db, log_dir, label, scale.naive_lock_timeout
        ) as bank:
            await warm_up(bank)
            # Before the measured run, so that it starts with the accounts in memory.
            touched = await first_touch(bank, list(preloaded)) if preloaded else None
            # Many accounts are opened once, before the first run (controls included), and
            # shared by the runs over them: opening 10,000 takes longer than a run.
            spread = {
                count: await open_accounts(bank, count, "bench")
                for count in sorted({plan.accounts for plan in plans if plan.accounts > 2})
            }
            for plan in plans:
                if plan.preloaded_events:
                    before = preloaded
                elif plan.accounts > 2:
                    before = spread[plan.accounts]
                else:
                    # Every hot-pair run on accounts of its own.
                    before = await open_accounts(bank, plan.accounts, "bench")
                result, after = await run_plan(bank, plan, before)
                if plan.preloaded_events:
                    preloaded = after
                    result["first_touch_ms"] = touched
                elif plan.accounts > 2:
                    spread[plan.accounts] = after
                results.append(result)
                print("  " + row(result), flush=True)
                if "first_touch_ms" in result:
                    print(f"  {'':<18} {first_touch_line(result)}", flush=True)
            if preloaded:
                # After the runs, on the services that ran them: the last long run carries it.
                past = await time_past_reads(bank, next(iter(preloaded)), scale.past_reads)
                next(r for r in reversed(results) if r["preloaded_events"])["past_ms"] = past
                print(f"  {'':<18} {past_line(past)}", flush=True)
        return results
    finally:
        databases.close()


async def _run_replicas(
    scale: Scale, kind: str, postgres_url: str, log_dir: Path
) -> list[dict[str, Any]]:
    """The hot pair with 1 and with 2 account replicas, each run on a bank of its own."""
    results = []
    for n, plan in enumerate(plans_for("replicas", scale)):
        databases = Databases(kind, postgres_url)
        try:
            accounts_db, transfers_db = databases.new("accounts"), databases.new("transfers")
            label = f"{kind}-replicas-{n}"
            async with Bank(
                accounts_db,
                transfers_db,
                log_dir,
                label,
                scale.naive_lock_timeout,
                account_replicas=plan.account_replicas,
            ) as bank:
                await warm_up(bank)
                before = await open_accounts(bank, plan.accounts, "bench")
                result, _ = await run_plan(bank, plan, before)
                result["account_replicas"] = plan.account_replicas
                results.append(result)
                print("  " + row(result), flush=True)
        finally:
            databases.close()
    return results
