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
             ("first touch ms").

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
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bank.experimental.v1 import naive_pb2, naive_pb2_grpc
from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from grpc_common.errors import error_info
from grpc_common.settings import tune_gc

GROUPS = ("seed", "sweep", "uniform", "long")
RESERVATION = "reservation"
NAIVE = "naive"
OPENING_BALANCE = 1_000_000
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
START_TIMEOUT = 60.0
SETUP_IN_FLIGHT = 200
# Per call. A naive transfer may wait 5 s for each of its two locks.
CALL_TIMEOUT = 120.0
# Answers that do not say whether the transfer happened.
AMBIGUOUS = frozenset(
    {"DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL", "TRANSFER_PENDING", "UNAVAILABLE"}
)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Scale:
    seed: tuple[tuple[int, int], ...]
    sweep: tuple[int, ...]
    uniform_transfers: int
    uniform_accounts: int
    long_events: int
    long_run: tuple[int, int]
    # Measured runs of the uniform and long groups, each between two controls.
    uniform_rounds: int
    long_rounds: int
    # How long the naive strategy waits for each lock: the seed's 5 s, or less to keep
    # the quick runs quick (the share of transfers that fail is much the same).
    naive_lock_timeout: float

    # Transfers per sweep point, per strategy: (at least, per slot in flight). The naive
    # strategy gets fewer, because each of its deadlocks costs a lock timeout.
    sweep_reservation: tuple[int, int]
    sweep_naive: tuple[int, int]

    def sweep_total(self, strategy: str, in_flight: int) -> int:
        minimum, per_slot = self.sweep_reservation if strategy == RESERVATION else self.sweep_naive
        return max(minimum, per_slot * in_flight)


FULL = Scale(
    seed=((50, 4), (800, 100)),
    sweep=(1, 4, 16, 64, 100, 256),
    sweep_reservation=(400, 8),
    sweep_naive=(50, 4),
    uniform_transfers=10_000,
    uniform_accounts=10_000,
    long_events=100_000,
    long_run=(800, 100),
    # Three: one uniform run against its two controls moved by ±10 % from one full run to
    # the next on the same code (0.81 and 0.88 on SQLite).
    uniform_rounds=3,
    long_rounds=2,
    naive_lock_timeout=5.0,
)
QUICK = Scale(
    seed=((50, 4), (200, 50)),
    sweep=(1, 16),
    sweep_reservation=(100, 4),
    sweep_naive=(20, 4),
    uniform_transfers=500,
    uniform_accounts=500,
    long_events=2_000,
    long_run=(200, 50),
    uniform_rounds=1,
    long_rounds=1,
    naive_lock_timeout=0.5,
)


@dataclass(frozen=True)
class Plan:
    group: str
    name: str
    strategy: str
    total: int
    in_flight: int
    accounts: int = 2
    preloaded_events: int = 0
    # A hot-pair run on fresh accounts that the group's measured runs are compared with.
    control: bool = False


def _with_controls(measured: Plan, rounds: int) -> list[Plan]:
    """control, measured, control, ... , control: ``rounds`` measured runs, each between
    two hot-pair runs of the same size on fresh accounts."""
    control = Plan(
        measured.group,
        f"control {measured.total}/{measured.in_flight}",
        RESERVATION,
        measured.total,
        measured.in_flight,
        control=True,
    )
    return [control] + [measured, control] * rounds


def plans_for(group: str, scale: Scale) -> list[Plan]:
    if group == "seed":
        return [
            Plan(group, f"seed {total}/{width}", strategy, total, width)
            for total, width in scale.seed
            for strategy in (RESERVATION, NAIVE)
        ]
    if group == "sweep":
        return [
            Plan(group, f"sweep {width}", strategy, scale.sweep_total(strategy, width), width)
            for width in scale.sweep
            for strategy in (RESERVATION, NAIVE)
        ]
    if group == "uniform":
        total, accounts = scale.uniform_transfers, scale.uniform_accounts
        uniform = Plan(group, f"uniform {total}/100", RESERVATION, total, 100, accounts)
        return _with_controls(uniform, scale.uniform_rounds)
    if group == "long":
        total, width = scale.long_run
        name = f"long {total}/{width}"
        long = Plan(group, name, RESERVATION, total, width, 2, scale.long_events)
        return _with_controls(long, scale.long_rounds)
    raise ValueError(f"unknown run group {group!r}")


# --------------------------------------------------------------------------- databases


def _libpq(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Databases:
    """Fresh databases for one group of runs: SQLite files in a temporary directory, or
    Postgres schemas of their own. ``close`` removes them all."""

    def __init__(self, kind: str, postgres_url: str) -> None:
        self.kind = kind
        self.postgres_url = postgres_url
        self._tmp = tempfile.TemporaryDirectory(prefix="bank-bench-")
        self._schemas: list[str] = []

    def new(self, name: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{Path(self._tmp.name) / name}.db"
        import psycopg
        from psycopg import sql

        schema = f"bench_{name}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(_libpq(self.postgres_url), autocommit=True, connect_timeout=5) as c:
            c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        self._schemas.append(schema)
        separator = "&" if "?" in self.postgres_url else "?"
        return f"{self.postgres_url}{separator}options=-csearch_path%3D{schema}"

    def close(self) -> None:
        if self._schemas:
            import psycopg
            from psycopg import sql

            with psycopg.connect(_libpq(self.postgres_url), autocommit=True) as c:
                for schema in self._schemas:
                    c.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )
            self._schemas.clear()
        self._tmp.cleanup()


def preload_accounts(db: str, account_ids: Sequence[str], events: int) -> dict[str, int]:
    """Writes ``events`` events per account straight into a fresh account store.

    Each stream is what the account service itself would have stored: opened, an opening
    deposit, then alternating deposits and withdrawals of 1, every event carrying its
    running ``balance_after``/``reserved_after``; and, as the service would have left
    it, a snapshot of the account at its last event. Returns each account's balance.
    """
    from account_service import codec
    from account_service.application import stream_id
    from account_service.domain import Account, AccountOpened, Deposited, Withdrawn
    from event_store import NewEvent, open_store

    store = open_store(db)
    balances = {}
    try:
        store.migrate()
        for n, account_id in enumerate(account_ids):
            account = Account.empty(account_id)
            stored = 0
            batch: list[NewEvent] = []

            def add(event: Any, account: Account = account, batch: list = batch) -> None:
                account.apply(event)
                kind, data = codec.encode(event)
                data["balance_after"] = account.balance
                data["reserved_after"] = account.reserved
                batch.append(NewEvent(kind, data))

            add(AccountOpened(account_id, f"bench-long-{n}", "EUR"))
            add(Deposited(OPENING_BALANCE, "opening"))
            for i in range(events - 2):
                add(Deposited(1, f"load-{i}") if i % 2 == 0 else Withdrawn(1, f"load-{i}"))
                if len(batch) >= 5000:
                    store.append(stream_id(account_id), stored, batch)
                    stored += len(batch)
                    batch.clear()
            if batch:
                store.append(stream_id(account_id), stored, batch)
            store.save_snapshot(stream_id(account_id), account.version, account.to_snapshot())
            balances[account_id] = account.balance
    finally:
        store.close()
    return balances


# --------------------------------------------------------------------------- services


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServiceProcess:
    module: str
    db: str
    log_path: Path
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", self.module, "--listen", self.address, "--db", self.db]
        command += ["--log-level", "WARNING", "--grace", "5", *self.extra]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    async def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.module} exited early; see {self.log_path}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.05)
        raise TimeoutError(
            f"{self.module} not SERVING after {START_TIMEOUT:g}s; see {self.log_path}"
        )

    def cpu(self) -> float | None:
        return _cpu_seconds(self.process.pid) if self.process is not None else None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class Bank:
    """Both services, started on the given databases, and the load generator's stubs."""

    def __init__(
        self,
        accounts_db: str,
        transfers_db: str,
        log_dir: Path,
        label: str,
        naive_lock_timeout: float,
    ) -> None:
        self.account = ServiceProcess(
            "account_service",
            accounts_db,
            log_dir / f"{label}-account_service.log",
            [
                "--experimental-naive-transfers",
                "--experimental-naive-lock-timeout",
                str(naive_lock_timeout),
            ],
        )
        self.transfer = ServiceProcess(
            "transfer_service", transfers_db, log_dir / f"{label}-transfer_service.log"
        )
        self._channels: list[grpc.aio.Channel] = []

    async def __aenter__(self) -> Bank:
        try:
            self.account.start()
            await self.account.wait_serving()
            self.transfer.extra = ["--accounts", self.account.address]
            self.transfer.start()
            await self.transfer.wait_serving()
        except BaseException:
            self.stop()
            raise
        account_channel = grpc.aio.insecure_channel(self.account.address)
        transfer_channel = grpc.aio.insecure_channel(self.transfer.address)
        self._channels = [account_channel, transfer_channel]
        self.accounts = account_pb2_grpc.AccountServiceStub(account_channel)
        self.naive = naive_pb2_grpc.NaiveTransferServiceStub(account_channel)
        self.transfers = transfer_pb2_grpc.TransferServiceStub(transfer_channel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for channel in self._channels:
            await channel.close()
        self.stop()

    def stop(self) -> None:
        for service in (self.transfer, self.account):
            service.stop()

    def cpu(self) -> dict[str, float | None]:
        return {"account_service": self.account.cpu(), "transfer_service": self.transfer.cpu()}


# --------------------------------------------------------------------------- load


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
    group: str, scale: Scale, kind: str, postgres_url: str, log_dir: Path
) -> list[dict[str, Any]]:
    databases = Databases(kind, postgres_url)
    try:
        accounts_db, transfers_db = databases.new("accounts"), databases.new("transfers")
        plans = plans_for(group, scale)
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
                print("  " + _row(result), flush=True)
                if "first_touch_ms" in result:
                    print(f"  {'':<18} {_first_touch(result)}", flush=True)
        return results
    finally:
        databases.close()


def compare(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A group's measured runs against its controls (see the module), or None if it has
    no controls."""
    controls = [r for r in results if r.get("control")]
    measured = [r for r in results if not r.get("control")]
    if not controls or not measured:
        return None
    control_rate = sum(r["requests_per_second"] for r in controls) / len(controls)
    measured_rate = sum(r["requests_per_second"] for r in measured) / len(measured)
    return {
        "group": measured[0]["group"],
        "measured": measured[0]["name"],
        "control": controls[0]["name"],
        "measured_per_second": [r["requests_per_second"] for r in measured],
        "control_per_second": [r["requests_per_second"] for r in controls],
        "ratio": measured_rate / control_rate,
    }


def _comparison(comparison: dict[str, Any]) -> str:
    def rates(values: Sequence[float]) -> str:
        return ", ".join(f"{value:,.0f}" for value in values)

    return (
        f"{comparison['measured']} / {comparison['control']} on the same services:"
        f" {comparison['ratio']:.2f} x (mean of {rates(comparison['measured_per_second'])}"
        f" over mean of {rates(comparison['control_per_second'])} transfers/s)"
    )


# --------------------------------------------------------------------------- output

_HEADER = (
    f"{'run':<18} {'strategy':<11} {'in flight':>9} {'requested':>9} {'succeeded':>9}"
    f" {'failed':>6} {'req/s':>8} {'ok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'money':>6}"
    f" {'gen CPU':>7} {'acct CPU':>8} {'xfer CPU':>8}"
)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _row(result: dict[str, Any]) -> str:
    latency, cpu = result["latency_ms"], result["cpu"]
    return (
        f"{result['name']:<18} {result['strategy']:<11} {result['in_flight']:>9}"
        f" {result['requested']:>9} {result['succeeded']:>9} {result['failed']:>6}"
        f" {result['requests_per_second']:>8.1f} {result['succeeded_per_second']:>8.1f}"
        f" {latency['p50']:>8.1f} {latency['p99']:>8.1f} {result['status']:>6}"
        f" {_percent(cpu['load_generator']):>7} {_percent(cpu['account_service']):>8}"
        f" {_percent(cpu['transfer_service']):>8}"
    )


def _first_touch(result: dict[str, Any]) -> str:
    return "first touch ms: " + ", ".join(f"{ms:.1f}" for ms in result["first_touch_ms"])


def print_table(results: Iterable[dict[str, Any]]) -> None:
    print(_HEADER)
    for result in results:
        print(_row(result))
        if "first_touch_ms" in result:
            print(f"{'':<18} {_first_touch(result)}")
        if result["failures"]:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(result["failures"].items()))
            print(f"{'':<18} failures: {reasons}")
        for problem in result["money"]["problems"]:
            print(f"{'':<18} MONEY: {problem}")


def draw_chart(results: Sequence[dict[str, Any]], path: Path, title: str) -> str | None:
    """Throughput and p99 against concurrency, reservation vs naive; the path, or why not."""
    sweep = [r for r in results if r["group"] == "sweep"]
    if not sweep:
        return "no sweep run, no chart"
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install 'reservebank[bench]'): no chart"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for strategy, style in ((RESERVATION, "o-"), (NAIVE, "s--")):
        points = sorted(
            (r for r in sweep if r["strategy"] == strategy), key=lambda r: r["in_flight"]
        )
        if not points:
            continue
        widths = [r["in_flight"] for r in points]
        label = "reservation protocol" if strategy == RESERVATION else "naive (lock both)"
        left.plot(widths, [r["succeeded_per_second"] for r in points], style, label=label)
        right.plot(widths, [r["latency_ms"]["p99"] for r in points], style, label=label)
    widths = sorted({r["in_flight"] for r in sweep})
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(widths, [str(width) for width in widths])
        axis.minorticks_off()
        axis.set_xlabel("transfers in flight")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    left.set_ylabel("completed transfers / s")
    left.set_ylim(bottom=0)
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def cpu_reference_ms() -> float:
    """Milliseconds one core takes for a fixed piece of pure Python (best of five).

    Machines of one kind differ, and so does one machine from day to day: this puts a
    number on the core the figures were measured on, so runs on different days compare.
    """
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_reference_ms": cpu_reference_ms(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        # Other work on the machine skews every number: this says how much there was.
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------- command


async def bench(args: argparse.Namespace, out: Path, log_dir: Path) -> int:
    scale = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    machine = _machine()
    print(
        f"bank bench: {args.db}, {'quick' if args.quick else 'full'} scale,"
        f" runs {', '.join(args.runs)}; {os.cpu_count()} CPUs;"
        f" naive lock timeout {scale.naive_lock_timeout:g} s;"
        f" CPU reference {machine['cpu_reference_ms']:g} ms",
        flush=True,
    )
    print(_HEADER, flush=True)
    results: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    for group in args.runs:
        print(f"[{group}]", flush=True)
        ran = await run_group(group, scale, args.db, args.postgres_url, log_dir)
        results += ran
        comparison = compare(ran)
        if comparison is not None:
            comparisons.append(comparison)
            print("  " + _comparison(comparison), flush=True)

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
        print(_comparison(comparison))
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
    parser.add_argument("--out", default="bench-results", help="directory for JSON and chart")
    parser.add_argument(
        "--runs",
        type=_runs,
        default=list(GROUPS),
        help=f"comma list of {', '.join(GROUPS)} (default: all)",
    )
    parser.set_defaults(func=command)
