"""``bank chaos``'s faults: services killed with SIGKILL and started again, and Postgres
stopped like a crash, at moments spread over the load; what each one did to the bank."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.chaos.config import FREEZE_SECONDS
from bank_cli.chaos.load import (
    ENDED,
    MARGIN_WINDOWS,
    PROBE_TIMEOUT,
    REFUSAL,
    Load,
    answer_label,
)
from bank_cli.chaos.report import FreezeRecord, KillRecord, OutageRecord
from bank_cli.harness import PrivatePostgres

RECOVERY_TIMEOUT = 60.0
# How long a killed service stays down before it is started again, at most.
MAX_DOWNTIME = 0.5
# After an event's transfer has started, the event comes within this many seconds.
MAX_KILL_DELAY = 0.1


class Faults:
    """The kills and outages of one run, drawn from ``rng``: the same seed, the same events
    in the same order. ``postgres`` is the private cluster the outages stop, if any."""

    def __init__(self, load: Load, rng: random.Random, postgres: PrivatePostgres | None) -> None:
        self.load = load
        self.config = load.config
        self.report = load.report
        self.rng = rng  # the events: which service, when, how long down
        self.postgres = postgres

    def schedule(self) -> list[tuple[int, str]]:
        """(transfer number, "kill" or "outage") of every event, spread over the run."""
        kinds = ["kill"] * self.config.kills + ["freeze"] * self.config.freezes
        if self.config.postgres_outage:
            kinds += ["outage"] * self.config.outages
        self.rng.shuffle(kinds)
        total, slots = len(self.load.plan), len(kinds) + 1
        events = []
        for n, kind in enumerate(kinds):
            at = int(total * (n + 1 + self.rng.uniform(-0.4, 0.4)) / slots)
            events.append((min(max(at, 1), total - 1) if total > 1 else 0, kind))
        return sorted(events)

    async def strike(self, events: list[tuple[int, str]]) -> None:
        """Each event when the load reaches its transfer, a moment later."""
        margin = self.config.in_flight * MARGIN_WINDOWS
        kills = 0
        for i, (at, kind) in enumerate(events):
            async with self.load.cond:
                self.load.limit = min(len(self.load.plan), at + margin)
                self.load.cond.notify_all()
                await self.load.cond.wait_for(lambda at=at: self.load.started >= at)
            await asyncio.sleep(self.rng.uniform(0, MAX_KILL_DELAY))
            if kind == "kill":
                kills += 1
                remaining = sum(1 for _, k in events[i + 1 :] if k == "kill")
                await self.kill(kills, self._victims(remaining))
            elif kind == "freeze":
                await self.freeze(len(self.report.freezes) + 1)
            else:
                await self.postgres_outage(len(self.report.outages) + 1)
        async with self.load.cond:
            self.load.limit = len(self.load.plan)
            self.load.cond.notify_all()

    def _victims(self, remaining: int) -> list[str]:
        """The replicas to kill: of the account service, the transfer service or both
        (one replica of each, drawn among its replicas)."""
        never = [kind for kind in ("account", "transfer") if not self.report.kills[kind]]
        if never and remaining < len(never):
            kinds = never  # the last kills: make sure each service has been killed
        else:
            draw = self.rng.random()
            if draw < 0.1:
                kinds = ["account", "transfer"]
            else:
                kinds = ["account"] if draw < 0.55 else ["transfer"]
        return [self.rng.choice(self.load.replicas(kind)) for kind in kinds]

    async def kill(self, number: int, names: list[str]) -> None:
        victims = [self.load.services[name] for name in names]
        record = KillRecord(
            number,
            names,
            self.load.started,
            self.load.started - self.report.settled,
            {name: self.load.services[name].pid or 0 for name in names},
        )
        killed_at = time.monotonic()
        for name, service in zip(names, victims, strict=True):
            service.kill()
            self.report.kills[self.load.kind_of[name]] += 1
        await asyncio.sleep(self.rng.uniform(0, MAX_DOWNTIME))
        for service in victims:
            service.spawn()
            self.report.restarts += 1
        await asyncio.gather(*(service.wait_serving_async() for service in victims))
        record.back_after = time.monotonic() - killed_at
        self.report.kill_log.append(record)
        self.load.say(
            f"kill {number}/{self.config.kills}: {' and '.join(names)} service"
            f" after transfer {record.after_transfer} ({self.report.settled} settled);"
            f" back in {record.back_after:.1f} s"
        )

    async def freeze(self, number: int) -> None:
        """SIGSTOP a replica drawn among all of them, SIGCONT it a few seconds later: a
        driver that slept through its lease wakes up holding stale copies."""
        name = self.rng.choice(sorted(self.load.services))
        service = self.load.services[name]
        seconds = self.rng.uniform(*FREEZE_SECONDS)
        record = FreezeRecord(number, name, self.load.started, seconds)
        if service.pid is None:
            return
        os.kill(service.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(service.pid, signal.SIGCONT)
        self.report.freezes.append(record)
        self.load.say(
            f"freeze {number}/{self.config.freezes}: {name} stopped {seconds:.1f} s"
            f" after transfer {record.after_transfer}"
        )

    async def _health(self, name: str) -> str:
        try:
            reply = await self.load.health[name].Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            return f"error {error.code().name}"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def _probe(self, record: OutageRecord) -> None:
        """One read from each service: during the outage each must answer UNAVAILABLE."""
        known = next((p.transfer_id for p in self.load.plan if p.outcome is not None), None)
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            (
                "GetAccount",
                lambda: self.load.accounts.GetAccount(
                    apb.GetAccountRequest(account_id=self.load.hot[0]), timeout=PROBE_TIMEOUT
                ),
            )
        ]
        if known is not None:
            calls.append(
                (
                    "GetTransfer",
                    lambda: self.load.transfers.GetTransfer(
                        tpb.GetTransferRequest(transfer_id=known), timeout=PROBE_TIMEOUT
                    ),
                )
            )
        for method, call in calls:
            try:
                await call()
                label = "OK"
            except grpc.aio.AioRpcError as error:
                label = answer_label(error)
            record.probes[f"{method} {label}"] += 1

    async def postgres_outage(self, number: int) -> None:
        assert self.postgres is not None
        record = OutageRecord(number, self.load.started)
        record.health = {name: Counter() for name in self.load.services}
        pids = {name: service.pid for name, service in self.load.services.items()}
        self.load.outage = record
        self.load.say(
            f"outage {number}: stopping Postgres (immediate) after transfer {self.load.started}"
        )
        await asyncio.to_thread(self.postgres.stop_immediate)
        stopped = time.monotonic()
        record.stopped_at = stopped - self.load.load_started
        while time.monotonic() - stopped < self.config.outage_seconds:
            for name in self.load.services:
                record.health[name][await self._health(name)] += 1
            await self._probe(record)
            await asyncio.sleep(0.25)
        await asyncio.to_thread(self.postgres.start)
        back = time.monotonic()
        record.down_seconds = back - stopped
        self.load.outage = None
        self.load.say(f"outage {number}: Postgres back after {record.down_seconds:.1f} s")
        while time.monotonic() - back < RECOVERY_TIMEOUT:
            statuses = [await self._health(name) for name in self.load.services]
            if all(status == "SERVING" for status in statuses):
                record.recovered_after = time.monotonic() - back
                break
            await asyncio.sleep(0.1)
        record.same_processes = all(
            service.pid == pids[name] and service.process is not None
            and service.process.poll() is None
            for name, service in self.load.services.items()
        )  # fmt: skip
        self.report.outages.append(record)
        self._judge_outage(record)
        self.load.say(
            f"outage {number}: services "
            + (
                f"SERVING again {record.recovered_after:.1f} s later"
                if record.recovered_after is not None
                else "never SERVING again"
            )
        )

    def _judge_outage(self, record: OutageRecord) -> None:
        n = record.number
        for name, seen in record.health.items():
            if not seen["NOT_SERVING"]:
                self.report.violation(
                    "outage-health", f"outage {n}: {name} service health never NOT_SERVING: "
                    + ", ".join(f"{s} {k}" for s, k in seen.items())
                )  # fmt: skip
        for probe, count in record.probes.items():
            if not probe.endswith(" UNAVAILABLE/STORE_UNAVAILABLE"):
                self.report.violation(
                    "outage-answer",
                    f"outage {n}: {probe} x{count} (expected UNAVAILABLE/STORE_UNAVAILABLE)",
                )
        if not record.probes:
            self.report.violation("outage-answer", f"outage {n}: no probe was answered")
        for label, count in record.load_answers.items():
            code = label.split("/", 1)[0]
            if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", *ENDED, "PENDING"):
                continue
            if code in {c.name for c in REFUSAL} and "/" in label:
                continue  # a transfer decided just before the outage
            self.report.violation(
                "outage-answer", f"outage {n}: CreateTransfer answered {label} x{count}"
            )
        if record.recovered_after is None:
            self.report.violation(
                "outage-recovery",
                f"outage {n}: services not SERVING {RECOVERY_TIMEOUT:g}s after Postgres came back",
            )
        if not record.same_processes:
            self.report.violation(
                "outage-recovery", f"outage {n}: a service process ended or was replaced"
            )
