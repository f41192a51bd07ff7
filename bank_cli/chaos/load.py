"""``bank chaos``'s load: both services, the accounts and the planned transfers, and the
transfers kept going, each retried with its own id until its answer is terminal."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2_grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from bank_cli.chaos.config import ChaosConfig
from bank_cli.chaos.plan import Planned, plan_units
from bank_cli.chaos.report import EXAMPLES, REFUSED_UNRECORDED, ChaosReport, OutageRecord
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
# States a transfer ends in; a hold's outcome is one of these or FAILED/<reason>.
ENDED = frozenset({COMPLETED, "FAILED", "VOIDED", "EXPIRED"})


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


def _service(module: str, db: str, logs: Path, extra: list[str], number: int) -> ServiceProcess:
    """A service (replica ``number``, 0 when alone) with its log and working directory in
    ``logs``; crash points armed in this shell are not passed on, so that every exit is
    one of ours."""
    return ServiceProcess(
        module,
        db,
        logs / (f"{module}-{number}.log" if number else f"{module}.log"),
        ["--grace", "5", *extra],
        channel_options=CHANNEL_OPTIONS,
        unset_env_prefixes=("BANK_CRASH_",),
        cwd=logs,
    )


def status_reason(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def replica_name(kind: str, number: int, replicas: int) -> str:
    """``account``/``transfer`` alone, ``account-2`` when there are several."""
    return kind if replicas == 1 else f"{kind}-{number}"


def _backoff(failures: int) -> float:
    return min(1.0, 0.05 * 2 ** min(failures, 5)) * random.uniform(0.5, 1)


class Load:
    """Both services' replicas, their accounts and the planned transfers, and the load on them.

    The plan is cut into units: one transfer (unary calls) or a batch (``CreateTransfers``).
    ``started`` transfers have been handed to the workers; they may go on up to ``limit``,
    which the faults move (under ``cond``) so that each event finds the load where it was
    planned to come.
    """

    def __init__(self, config: ChaosConfig, report: ChaosReport, plan_rng: random.Random) -> None:
        self.config = config
        self.report = report
        self.plan_rng = plan_rng  # the transfers: the same for the same seed
        self.services: dict[str, ServiceProcess] = {}  # by replica name
        self.kind_of: dict[str, str] = {}  # replica name: "account" or "transfer"
        self.plan: list[Planned] = []
        self.reversals: list[Planned] = []  # those run, their originals having COMPLETED
        self.cash: list[Planned] = []  # deposits, withdrawals and limits, beside the transfers
        self.units: list[list[Planned]] = []
        self._next_unit = 0
        self.openings: dict[str, int] = {}
        self.hot: tuple[str, str] = ("", "")
        self.started = 0
        self.limit = 0  # transfers may start up to here, until the next event has come
        self.cond = asyncio.Condition()
        self.outage: OutageRecord | None = None  # the one going on, if any
        self._channels: list[grpc.aio.Channel] = []
        self._account_stubs: Iterator[account_pb2_grpc.AccountServiceStub] = iter(())
        self._transfer_stubs: Iterator[transfer_pb2_grpc.TransferServiceStub] = iter(())
        self.health: dict[str, health_pb2_grpc.HealthStub] = {}
        self.load_started = 0.0

    def say(self, message: str) -> None:
        if self.config.progress is not None:
            self.config.progress(message)

    # -- the services --------------------------------------------------------------------

    @property
    def accounts(self) -> account_pb2_grpc.AccountServiceStub:
        """An account replica's stub, each in turn: a retried call finds a live one."""
        return next(self._account_stubs)

    @property
    def transfers(self) -> transfer_pb2_grpc.TransferServiceStub:
        """A transfer replica's stub, each in turn: a transfer's repeats go to all of them."""
        return next(self._transfer_stubs)

    def replicas(self, kind: str) -> list[str]:
        return [name for name, k in self.kind_of.items() if k == kind]

    def first(self, kind: str) -> ServiceProcess:
        return self.services[self.replicas(kind)[0]]

    def channel(self, service: ServiceProcess) -> grpc.aio.Channel:
        channel = service.open_aio_channel()
        self._channels.append(channel)
        return channel

    async def start_services(self, accounts_db: str, transfers_db: str, logs: Path) -> None:
        c = self.config
        accounts = {
            replica_name("account", n, c.account_replicas): _service(
                "account_service", accounts_db, logs, [], n if c.account_replicas > 1 else 0
            )
            for n in range(1, c.account_replicas + 1)
        }
        addresses = ",".join(service.address for service in accounts.values())
        transfers = {
            replica_name("transfer", n, c.transfer_replicas): _service(
                "transfer_service",
                transfers_db,
                logs,
                ["--accounts", addresses],
                n if c.transfer_replicas > 1 else 0,
            )
            for n in range(1, c.transfer_replicas + 1)
        }
        self.services = {**accounts, **transfers}
        self.kind_of = {name: "account" for name in accounts} | {
            name: "transfer" for name in transfers
        }
        for service in self.services.values():
            service.spawn()
        await asyncio.gather(*(s.wait_serving_async() for s in self.services.values()))
        channels = {name: self.channel(s) for name, s in self.services.items()}
        self._account_stubs = itertools.cycle(
            [account_pb2_grpc.AccountServiceStub(channels[name]) for name in accounts]
        )
        self._transfer_stubs = itertools.cycle(
            [transfer_pb2_grpc.TransferServiceStub(channels[name]) for name in transfers]
        )
        self.health = {name: health_pb2_grpc.HealthStub(ch) for name, ch in channels.items()}

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
        self.units = plan_units(self.config, self.plan_rng, ids, closed, self.hot)
        self.plan = [planned for unit in self.units for planned in unit]
        self.cash = [planned.cash for planned in self.plan if planned.cash]
        self.report.money_before = sum(self.openings.values())

    # -- the load ------------------------------------------------------------------------

    async def _next(self) -> list[Planned] | None:
        async with self.cond:
            await self.cond.wait_for(
                lambda: self.started < self.limit or self._next_unit >= len(self.units)
            )
            if self._next_unit >= len(self.units):
                return None
            unit = self.units[self._next_unit]
            self._next_unit += 1
            self.started += len(unit)
            self.cond.notify_all()
            return unit

    async def run(self, faults: Faults) -> None:
        """The load and the faults against it, until every transfer has a terminal answer."""
        report = self.report
        report.transfers = len(self.plan)
        report.batches = sum(1 for unit in self.units if unit[0].batched)
        for planned in self.plan:
            report.kinds["batched" if planned.batched else planned.kind] += 1
        events = faults.schedule()
        replicas = ""
        if len(self.services) > 2:
            replicas = (
                f", {len(self.replicas('account'))} account and"
                f" {len(self.replicas('transfer'))} transfer replicas"
            )
        self.say(
            f"{len(self.plan)} transfers between {len(self.openings)} accounts"
            f" ({report.batches} batches){replicas}, {self.config.in_flight} in flight,"
            f" {len(events)} events, seed {report.seed}"
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
            elif planned.outcome in ENDED:
                report.ended[planned.outcome] += 1
        for back in self.reversals:
            report.reversals[back.outcome or "none"] += 1
        for planned in self.cash:
            report.cash[f"{planned.kind} {planned.outcome}"] += 1
            if planned.outcome == COMPLETED and planned.kind == "deposit":
                report.deposited += planned.amount
            elif planned.outcome == COMPLETED and planned.kind == "withdraw":
                report.withdrawn += planned.amount
        self.say(f"load done in {report.load_seconds:.1f} s; checking")

    async def load(self) -> None:
        async def worker() -> None:
            while (unit := await self._next()) is not None:
                if unit[0].batched:
                    await self.settle_batch(unit)
                elif unit[0].kind.startswith("hold-"):
                    await self.settle_hold(unit[0])
                else:
                    await self.settle(unit[0])
                for planned in unit:
                    if planned.reversals and planned.outcome == COMPLETED:
                        await self.reverse(planned)
                    if planned.cash:
                        await self.settle_cash(planned.cash)

        width = min(self.config.in_flight, len(self.units))
        await asyncio.gather(*(worker() for _ in range(width)))

    def _note(self, label: str) -> None:
        self.report.answers[label] += 1
        if self.outage is not None:
            self.outage.load_answers[label] += 1

    async def _decided(
        self, planned: Planned, method: str, call: Callable[[], Awaitable[T]]
    ) -> tuple[T | str, bool]:
        """``call`` again until it answers a transfer or a refusal: the transfer, or
        "FAILED/<reason>" ("ERROR/<answer>" for an answer the contract never gives), and
        whether an earlier attempt's answer was lost."""
        failures = 0
        while True:
            planned.attempts += 1
            called = time.monotonic()
            try:
                return await call(), failures > 0
            except grpc.aio.AioRpcError as error:
                label = answer_label(error)
                self._note(label)
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._note_deadline(planned, called)
                info = error_info(error)
                if error.code() in REFUSAL and info is not None and info.reason:
                    return f"FAILED/{info.reason}", failures > 0
                if error.code() not in RETRY:
                    self.report.violation(
                        "unexpected-answer",
                        f"{method} {planned.transfer_id} ({planned.kind}) answered"
                        f" {label}: {error.details()}",
                    )
                    if error.code() not in UNEXPECTED_RETRIED:
                        return f"ERROR/{label}", failures > 0
                failures += 1
                await asyncio.sleep(_backoff(failures))

    def _expect(self, planned: Planned, method: str, answer: tpb.Transfer, wanted: str) -> None:
        state = state_name(answer)
        self._note(state)
        if state != wanted:
            self.report.violation(
                "unexpected-answer",
                f"{method} {planned.transfer_id} ({planned.kind}) answered OK with state {state}",
            )
            self._settled(planned, f"ERROR/{state}")
            return
        self._settled(planned, state)

    async def settle(self, planned: Planned) -> None:
        """CreateTransfer, again with the same id, until the answer is terminal."""
        request = planned.request()
        answer, _ = await self._decided(
            planned,
            "CreateTransfer",
            lambda: self.transfers.CreateTransfer(request, timeout=CALL_TIMEOUT),
        )
        if isinstance(answer, str):
            self._settled(planned, answer)
        else:
            self._expect(planned, "CreateTransfer", answer, COMPLETED)

    async def settle_hold(self, planned: Planned) -> None:
        """A pending CreateTransfer until the hold is placed or refused; then its post or
        void, again until decided, or nothing while it expires."""
        request = planned.request()
        answer, _ = await self._decided(
            planned,
            "CreateTransfer",
            lambda: self.transfers.CreateTransfer(request, timeout=CALL_TIMEOUT),
        )
        if isinstance(answer, str):
            self._settled(planned, answer)
            return
        state = state_name(answer)
        if planned.kind == "hold-expire" and state in ("PENDING", "EXPIRED"):
            self._note(state)
            self._settled(planned, "EXPIRED")  # the checks wait for the clock to end it
            return
        if state != "PENDING":
            self._expect(planned, "CreateTransfer", answer, "PENDING")
            return
        self._note(state)
        tid = planned.transfer_id
        if planned.kind == "hold-void":
            method, wanted = "VoidTransfer", "VOIDED"
            call = lambda: self.transfers.VoidTransfer(  # noqa: E731
                tpb.VoidTransferRequest(transfer_id=tid), timeout=CALL_TIMEOUT
            )
        else:
            method, wanted = "PostTransfer", COMPLETED
            call = lambda: self.transfers.PostTransfer(  # noqa: E731
                tpb.PostTransferRequest(transfer_id=tid, amount=planned.post_amount),
                timeout=CALL_TIMEOUT,
            )
        answer, lost = await self._decided(planned, method, call)
        if answer == "FAILED/TRANSFER_NOT_PENDING" and lost:
            # An attempt whose answer was lost may have decided it: the store says how.
            stored = await self.retrying(
                lambda: self.transfers.GetTransfer(
                    tpb.GetTransferRequest(transfer_id=tid), timeout=CALL_TIMEOUT
                ),
                "GetTransfer",
            )
            state = state_name(stored)
            self._settled(planned, state if state in ENDED else f"{state}/{stored.failure_reason}")
            return
        if isinstance(answer, str):
            self._settled(planned, answer)
            return
        expected = planned.post_amount or planned.amount
        if wanted == COMPLETED and answer.posted_amount != expected:
            self.report.violation(
                "unexpected-answer",
                f"PostTransfer {tid} ({planned.kind}) posted {answer.posted_amount},"
                f" asked {expected}",
            )
        self._expect(planned, method, answer, wanted)

    async def settle_batch(self, unit: list[Planned]) -> None:
        """CreateTransfers with every item of the batch not decided yet, until none is left."""
        waiting, failures = list(unit), 0
        while waiting:
            for planned in waiting:
                planned.attempts += 1
            request = tpb.CreateTransfersRequest(transfers=[p.request() for p in waiting])
            try:
                response = await self.transfers.CreateTransfers(request, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                label = answer_label(error)
                self._note(label)
                if error.code() not in RETRY:
                    self.report.violation(
                        "unexpected-answer",
                        f"CreateTransfers of {len(waiting)} answered {label}: {error.details()}",
                    )
                    if error.code() not in UNEXPECTED_RETRIED:
                        for planned in waiting:
                            self._settled(planned, f"ERROR/{label}")
                        return
                failures += 1
                await asyncio.sleep(_backoff(failures))
                continue
            if len(response.results) != len(waiting):
                self.report.violation(
                    "unexpected-answer",
                    f"CreateTransfers of {len(waiting)} answered {len(response.results)} results",
                )
                for planned in waiting:
                    self._settled(planned, "ERROR/results")
                return
            again = []
            for planned, result in zip(waiting, response.results, strict=True):
                if result.HasField("transfer"):
                    self._expect(planned, "CreateTransfers", result.transfer, COMPLETED)
                    continue
                code = _CODES.get(result.error.code, grpc.StatusCode.UNKNOWN)
                reason = status_reason(result.error)
                label = f"{code.name}/{reason}" if reason else code.name
                self._note(label)
                if code in REFUSAL and reason:
                    self._settled(planned, f"FAILED/{reason}")
                elif code in RETRY:
                    again.append(planned)
                else:
                    self.report.violation(
                        "unexpected-answer",
                        f"CreateTransfers item {planned.transfer_id} ({planned.kind}) answered"
                        f" {label}: {result.error.message}",
                    )
                    if code in UNEXPECTED_RETRIED:
                        again.append(planned)
                    else:
                        self._settled(planned, f"ERROR/{label}")
            waiting = again
            if waiting:
                failures += 1
                await asyncio.sleep(_backoff(failures))

    async def reverse(self, planned: Planned) -> None:
        """Its reversals, each repeated with its own id until decided: one after the other,
        or both at once ("racing"); then what they reversed, against what it moved."""
        if planned.reversal == "racing":
            await asyncio.gather(*(self.settle_reversal(back) for back in planned.reversals))
        else:
            for back in planned.reversals:
                await self.settle_reversal(back)
        self.reversals += planned.reversals
        posted = sum(amount for _, _, amount in planned.moves)
        done = [back for back in planned.reversals if back.outcome == COMPLETED]
        if planned.reversal != "racing":
            # One after the other, each knows what it must reverse: its amount, or the rest.
            left = posted
            for back in done:
                wanted = back.amount or left
                if back.post_amount != wanted:
                    self._unexpected(back, f"reversed {back.post_amount}, expected {wanted}")
                left -= wanted
        elif sum(back.post_amount for back in done) > posted:
            amounts = [back.post_amount for back in done]
            self._unexpected(planned, f"reversals of {posted} reversed {amounts}")

    async def settle_reversal(self, back: Planned) -> None:
        request = back.reverse_request()
        answer, _ = await self._decided(
            back,
            "ReverseTransfer",
            lambda: self.transfers.ReverseTransfer(request, timeout=CALL_TIMEOUT),
        )
        assert back.reverses is not None
        allowed = {COMPLETED, "FAILED/INSUFFICIENT_FUNDS"}
        if back.reverses.reversal == "racing":
            allowed.add(REFUSED_UNRECORDED)
        if isinstance(answer, str):
            back.outcome = answer
        else:
            back.outcome = state_name(answer)
            self._note(back.outcome)
            back.post_amount = answer.posted_amount
            if answer.reverses_transfer_id != back.reverses.transfer_id:
                self._unexpected(back, f"reverses {answer.reverses_transfer_id!r}")
        if back.outcome not in allowed:
            self._unexpected(back, f"ended {back.outcome}")

    async def settle_cash(self, planned: Planned) -> None:
        """A Deposit, a Withdraw or a SetOverdraftLimit, again with the same request id
        until decided."""
        if planned.kind == "limit":
            method = "SetOverdraftLimit"
            limit = apb.SetOverdraftLimitRequest(
                account_id=planned.source,
                overdraft_limit=planned.amount,
                request_id=planned.transfer_id,
            )
            call = lambda: self.accounts.SetOverdraftLimit(limit, timeout=CALL_TIMEOUT)  # noqa: E731
            allowed = {COMPLETED}
        elif planned.kind == "deposit":
            method = "Deposit"
            deposit = apb.DepositRequest(
                account_id=planned.target, amount=planned.amount, request_id=planned.transfer_id
            )
            call = lambda: self.accounts.Deposit(deposit, timeout=CALL_TIMEOUT)  # noqa: E731
            allowed = {COMPLETED}
        else:
            method = "Withdraw"
            withdraw = apb.WithdrawRequest(
                account_id=planned.source, amount=planned.amount, request_id=planned.transfer_id
            )
            call = lambda: self.accounts.Withdraw(withdraw, timeout=CALL_TIMEOUT)  # noqa: E731
            allowed = {COMPLETED, "FAILED/INSUFFICIENT_FUNDS"}
        answer, _ = await self._decided(planned, method, call)
        planned.outcome = answer if isinstance(answer, str) else COMPLETED
        if planned.outcome not in allowed:
            self._unexpected(planned, f"{method} ended {planned.outcome}")
        if planned.outcome == COMPLETED:
            # A stale repeat, to the next replica: answered as done, and nothing moves again.
            again, _ = await self._decided(planned, method, call)
            if isinstance(again, str):
                self._unexpected(planned, f"{method} done, then repeated: {again}")

    def _unexpected(self, planned: Planned, what: str) -> None:
        self.report.violation("unexpected-answer", f"{planned.kind} {planned.transfer_id}: {what}")

    def _note_deadline(self, planned: Planned, called: float) -> None:
        if len(self.report.deadlines) < EXAMPLES:
            now, start = time.monotonic(), self.load_started
            self.report.deadlines.append((planned.transfer_id, called - start, now - start))

    def _settled(self, planned: Planned, outcome: str) -> None:
        planned.outcome = outcome
        self.report.settled += 1
