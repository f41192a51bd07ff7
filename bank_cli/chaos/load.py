"""``bank chaos``'s load: both services, the accounts and the planned transfers, and the
transfers kept going, each retried with its own id until its answer is terminal."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from bank_cli.chaos.config import MAX_AMOUNT, ChaosConfig
from bank_cli.chaos.report import EXAMPLES, ChaosReport, OutageRecord
from bank_cli.harness import ServiceProcess, SetupError
from grpc_common.errors import error_info

if TYPE_CHECKING:
    from bank_cli.chaos.faults import Faults

T = TypeVar("T")

SETTLE_TIMEOUT = 60.0
# Each CreateTransfer waits this long at most; the service answers TRANSFER_PENDING first.
CALL_TIMEOUT = 10.0
# A read or health check that must answer at once, even while the database is down.
PROBE_TIMEOUT = 3.0
# New transfers keep starting after an event's transfer (up to this many windows of
# in-flight calls' worth) until the event has come, so that it hits a busy bank.
MARGIN_WINDOWS = 3
POOL = 64

# The load's own channels: reconnect quickly to a service started again on the same port.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

RETRY = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
REFUSAL = frozenset(
    {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE}
)
# Never a service's own answer by the contract; retried, but each one is a violation.
UNEXPECTED_RETRIED = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
COMPLETED = "COMPLETED"


async def pool(items: Iterable[T], width: int, work: Callable[[T], Awaitable[None]]) -> None:
    """Runs ``work`` on every item, at most ``width`` at a time."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(width)))


def answer_label(error: grpc.aio.AioRpcError) -> str:
    info = error_info(error)
    reason = info.reason if info is not None else ""
    return f"{error.code().name}/{reason}" if reason else error.code().name


def state_name(transfer: tpb.Transfer) -> str:
    return tpb.TransferState.Name(transfer.state).removeprefix("TRANSFER_STATE_")


def _service(module: str, db: str, logs: Path, extra: list[str]) -> ServiceProcess:
    """A service with its log and working directory in ``logs``; crash points armed in
    this shell are not passed on, so that every exit is one of ours."""
    return ServiceProcess(
        module,
        db,
        logs / f"{module}.log",
        ["--grace", "5", *extra],
        channel_options=CHANNEL_OPTIONS,
        unset_env_prefixes=("BANK_CRASH_",),
        cwd=logs,
    )


@dataclass
class Planned:
    transfer_id: str
    source: str
    target: str
    amount: int
    kind: str  # "hot", "random", "closed" (refused credit), "oversized" (refused reserve)
    outcome: str | None = None  # "COMPLETED", "FAILED/<reason>" or "ERROR/<answer>"
    attempts: int = 0


class Load:
    """Both services, their accounts and the planned transfers, and the load on them.

    ``started`` transfers have been handed to the workers; they may go on up to ``limit``,
    which the faults move (under ``cond``) so that each event finds the load where it was
    planned to come.
    """

    def __init__(self, config: ChaosConfig, report: ChaosReport, plan_rng: random.Random) -> None:
        self.config = config
        self.report = report
        self.plan_rng = plan_rng  # the transfers: the same for the same seed
        self.services: dict[str, ServiceProcess] = {}
        self.plan: list[Planned] = []
        self.openings: dict[str, int] = {}
        self.hot: tuple[str, str] = ("", "")
        self.started = 0
        self.limit = 0  # transfers may start up to here, until the next event has come
        self.cond = asyncio.Condition()
        self.outage: OutageRecord | None = None  # the one going on, if any
        self._channels: list[grpc.aio.Channel] = []
        self.load_started = 0.0

    def say(self, message: str) -> None:
        if self.config.progress is not None:
            self.config.progress(message)

    # -- the services --------------------------------------------------------------------

    def channel(self, service: ServiceProcess) -> grpc.aio.Channel:
        channel = service.open_aio_channel()
        self._channels.append(channel)
        return channel

    async def start_services(self, accounts_db: str, transfers_db: str, logs: Path) -> None:
        account = _service("account_service", accounts_db, logs, [])
        transfer = _service("transfer_service", transfers_db, logs, ["--accounts", account.address])
        self.services = {"account": account, "transfer": transfer}
        for service in (account, transfer):
            service.spawn()
        await asyncio.gather(account.wait_serving_async(), transfer.wait_serving_async())
        account_channel, transfer_channel = self.channel(account), self.channel(transfer)
        self.accounts = account_pb2_grpc.AccountServiceStub(account_channel)
        self.transfers = transfer_pb2_grpc.TransferServiceStub(transfer_channel)
        self.health = {
            "account": health_pb2_grpc.HealthStub(account_channel),
            "transfer": health_pb2_grpc.HealthStub(transfer_channel),
        }

    async def close_channels(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()

    def kill_all(self) -> None:
        for service in self.services.values():
            service.kill()

    async def watch_exits(self) -> None:
        """A service that dies without being killed is a violation; it is started again."""
        while True:
            await asyncio.sleep(0.2)
            for service in self.services.values():
                code = service.exited_by_itself()
                if code is None:
                    continue
                self.report.unplanned_exits += 1
                self.report.violation(
                    "service-died",
                    f"{service.module} (pid {service.pid}) exited by itself with {code};"
                    f" its log ends:\n{service.log(1500)}",
                )
                service.spawn()
                self.report.restarts += 1
                await service.wait_serving_async()

    async def retrying(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """A setup or check call, repeated while the answer is only 'not now'."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRY or time.monotonic() > deadline:
                    raise SetupError(f"{what}: {answer_label(error)}: {error.details()}") from error
                await asyncio.sleep(0.2)

    # -- the plan ------------------------------------------------------------------------

    async def open_accounts(self) -> None:
        ids = [str(uuid.uuid4()) for _ in range(self.config.accounts)]
        closed = str(uuid.uuid4())

        async def one(account_id: str) -> None:
            await self.retrying(
                lambda: self.accounts.OpenAccount(
                    apb.OpenAccountRequest(account_id=account_id, owner="chaos", currency="EUR"),
                    timeout=CALL_TIMEOUT,
                ),
                "OpenAccount",
            )
            if account_id == closed:
                await self.retrying(
                    lambda: self.accounts.CloseAccount(
                        apb.CloseAccountRequest(account_id=account_id), timeout=CALL_TIMEOUT
                    ),
                    "CloseAccount",
                )
                self.openings[account_id] = 0
                return
            account = await self.retrying(
                lambda: self.accounts.Deposit(
                    apb.DepositRequest(
                        account_id=account_id, amount=self.config.opening, request_id="opening"
                    ),
                    timeout=CALL_TIMEOUT,
                ),
                "Deposit",
            )
            self.openings[account_id] = account.balance

        await pool([*ids, closed], POOL, one)
        self.hot = (ids[0], ids[1])
        self.plan = self._plan(ids, closed)
        self.report.money_before = sum(self.openings.values())

    def _plan(self, ids: list[str], closed: str) -> list[Planned]:
        rng, c = self.plan_rng, self.config
        oversized = min(c.opening * (len(ids) + 1) * 10, 2**62)
        plan = []
        hot_turn = 0
        for _ in range(c.transfers):
            draw = rng.random()
            source, target = rng.sample(ids, 2)
            amount = rng.randint(1, MAX_AMOUNT)
            if draw < c.hot_share:
                source, target = self.hot if hot_turn % 2 == 0 else self.hot[::-1]
                hot_turn += 1
                kind = "hot"
            elif draw < c.hot_share + c.refused_share / 2:
                target, kind = closed, "closed"
            elif draw < c.hot_share + c.refused_share:
                amount, kind = oversized, "oversized"
            else:
                kind = "random"
            plan.append(Planned(str(uuid.uuid4()), source, target, amount, kind))
        return plan

    # -- the load ------------------------------------------------------------------------

    async def _next(self) -> Planned | None:
        async with self.cond:
            await self.cond.wait_for(
                lambda: self.started < self.limit or self.started >= len(self.plan)
            )
            if self.started >= len(self.plan):
                return None
            planned = self.plan[self.started]
            self.started += 1
            self.cond.notify_all()
            return planned

    async def run(self, faults: Faults) -> None:
        """The load and the faults against it, until every transfer has a terminal answer."""
        report = self.report
        report.transfers = len(self.plan)
        events = faults.schedule()
        self.say(
            f"{len(self.plan)} transfers between {len(self.openings)} accounts,"
            f" {self.config.in_flight} in flight, {len(events)} events, seed {report.seed}"
        )
        self.limit = len(self.plan)
        if events:
            self.limit = min(len(self.plan), events[0][0] + self.config.in_flight * MARGIN_WINDOWS)
        self.load_started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(self.watch_exits())
            load = tasks.create_task(self.load())
            tasks.create_task(faults.strike(events))
            await load
            watcher.cancel()
        report.load_seconds = time.monotonic() - self.load_started
        for planned in self.plan:
            if planned.outcome == COMPLETED:
                report.completed += 1
            elif planned.outcome is not None and planned.outcome.startswith("FAILED/"):
                report.failed[planned.outcome.removeprefix("FAILED/")] += 1
        self.say(f"load done in {report.load_seconds:.1f} s; checking")

    async def load(self) -> None:
        async def worker() -> None:
            while (planned := await self._next()) is not None:
                await self.settle(planned)

        width = min(self.config.in_flight, len(self.plan))
        await asyncio.gather(*(worker() for _ in range(width)))

    def _note(self, label: str) -> None:
        self.report.answers[label] += 1
        if self.outage is not None:
            self.outage.load_answers[label] += 1

    async def settle(self, planned: Planned) -> None:
        """CreateTransfer, again with the same id, until the answer is terminal."""
        request = tpb.CreateTransferRequest(
            transfer_id=planned.transfer_id,
            from_account_id=planned.source,
            to_account_id=planned.target,
            amount=planned.amount,
        )
        failures = 0
        while True:
            planned.attempts += 1
            called = time.monotonic()
            try:
                answer = await self.transfers.CreateTransfer(request, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                label = answer_label(error)
                self._note(label)
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._note_deadline(planned, called)
                info = error_info(error)
                if error.code() in REFUSAL and info is not None and info.reason:
                    self._settled(planned, f"FAILED/{info.reason}")
                    return
                if error.code() not in RETRY:
                    self.report.violation(
                        "unexpected-answer",
                        f"CreateTransfer {planned.transfer_id} ({planned.kind}) answered"
                        f" {label}: {error.details()}",
                    )
                    if error.code() not in UNEXPECTED_RETRIED:
                        self._settled(planned, f"ERROR/{label}")
                        return
                failures += 1
                await asyncio.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)) * random.uniform(0.5, 1))
                continue
            state = state_name(answer)
            self._note(state)
            if state != COMPLETED:
                self.report.violation(
                    "unexpected-answer",
                    f"CreateTransfer {planned.transfer_id} answered OK with state {state}",
                )
                self._settled(planned, f"ERROR/{state}")
                return
            self._settled(planned, COMPLETED)
            return

    def _note_deadline(self, planned: Planned, called: float) -> None:
        if len(self.report.deadlines) < EXAMPLES:
            now, start = time.monotonic(), self.load_started
            self.report.deadlines.append((planned.transfer_id, called - start, now - start))

    def _settled(self, planned: Planned, outcome: str) -> None:
        planned.outcome = outcome
        self.report.settled += 1
