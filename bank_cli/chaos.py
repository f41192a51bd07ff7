"""``bank chaos``: thousands of transfers while the services are killed, then an audit.

Starts the account service and the transfer service as subprocesses on free loopback
ports, each on a fresh database (SQLite files in a temporary directory, or Postgres schemas
of their own, dropped afterwards), opens accounts with opening balances and keeps
``--in-flight`` ``CreateTransfer`` calls going, each with a transfer id chosen here: a share
between two hot accounts in alternating directions, a few that must be refused (into a
closed account, or more than anyone holds), the rest between random pairs. A transfer is
retried with the same id on ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` until it has a
terminal answer: ``COMPLETED``, or a refusal such as ``INSUFFICIENT_FUNDS``.

Meanwhile the account service, the transfer service or both are killed with SIGKILL,
``--kills`` times in all, at random moments spread over the run (each after a random
transfer has started, then a random fraction of a second later), and restarted on the same
port and database. With ``--postgres-outage`` the services run on a private Postgres
instance (initdb into a temporary directory, on a free loopback port), which is stopped
with ``pg_ctl stop -m immediate`` mid-load, ``--outages`` times, each time kept down for
``--outage-seconds`` and started again (kills, if any are asked for as well, come between
outages). Meanwhile a read from each service must answer ``UNAVAILABLE``
(``STORE_UNAVAILABLE``), health must say ``NOT_SERVING``, and the load may see nothing but
``UNAVAILABLE``, a deadline or a decided outcome; afterwards the same processes must
recover by themselves.

At the end every transfer must be terminal and stored as the client saw it; every balance
must be its opening balance plus the credits less the captures of the transfers the client
saw COMPLETED, with nothing reserved; both services must stop cleanly; and ``bank audit``
must pass on both stores. Exit status: 0 when all of this holds, 1 on any violation or
when ``--max-seconds`` runs out, 2 when the run could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from bank_cli.audit import Unreadable, read_events
from bank_cli.audit_checks import AuditReport, audit
from grpc_common.errors import error_info

T = TypeVar("T")

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EXIT_OK, EXIT_VIOLATIONS, EXIT_SETUP = 0, 1, 2

# Amounts are 1 to MAX_AMOUNT. With ten times that to start with, the hot pair's balances
# wander down to zero now and then, so some transfers are refused for want of funds while
# others hold reservations on the same account.
MAX_AMOUNT = 1_000
OPENING_BALANCE = 10 * MAX_AMOUNT
START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 60.0
RECOVERY_TIMEOUT = 60.0
# Each CreateTransfer waits this long at most; the service answers TRANSFER_PENDING first.
CALL_TIMEOUT = 10.0
PROBE_TIMEOUT = 3.0
# How long a killed service stays down before it is started again, at most.
MAX_DOWNTIME = 0.5
# After an event's transfer has started, the event comes within this many seconds; new
# transfers keep starting meanwhile (up to a few windows' worth), so it hits a busy bank.
MAX_KILL_DELAY = 0.1
MARGIN_WINDOWS = 3
POOL = 64
EXAMPLES = 20  # violations of one kind listed in full; the rest are counted

# The load's own channels: reconnect quickly to a service started again on the same port.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

_RETRY = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_REFUSAL = frozenset(
    {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE}
)
# Never a service's own answer by the contract; retried, but each one is a violation.
_UNEXPECTED_RETRIED = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
SERVING = health_pb2.HealthCheckResponse.SERVING
COMPLETED = "COMPLETED"


class SetupError(Exception):
    """The run could not be set up (a database unreachable, a service that does not start)."""


class PrivatePostgresUnavailable(SetupError):
    """No private Postgres instance can be made here (no initdb, no postgres user, ...)."""


# --------------------------------------------------------------------------- configuration


@dataclass
class ChaosConfig:
    db: str = "sqlite"  # "sqlite" or "postgres"
    postgres_url: str = DEFAULT_POSTGRES_URL
    transfers: int = 3000
    accounts: int = 50
    hot_share: float = 0.5
    refused_share: float = 0.04
    opening: int = OPENING_BALANCE
    in_flight: int = 64
    kills: int = 20
    seed: int | None = None
    max_seconds: float = 600.0
    postgres_outage: bool = False
    outages: int = 1
    outage_seconds: float = 5.0
    # Logs and SQLite files go here and are kept; None: a temporary directory, removed
    # after a clean run and kept (its path reported) after a failed one.
    workdir: Path | None = None
    # Told about each kill, outage and phase as it happens; None: silent.
    progress: Callable[[str], None] | None = None

    def check(self) -> None:
        if self.db not in ("sqlite", "postgres"):
            raise ValueError(f"--db must be sqlite or postgres, not {self.db!r}")
        if self.postgres_outage and self.db != "postgres":
            raise ValueError("--postgres-outage needs --db postgres")
        if self.transfers < 1 or self.in_flight < 1 or self.kills < 0:
            raise ValueError("--transfers and --in-flight must be positive, --kills not negative")
        if self.opening < 1:
            raise ValueError("--opening must be positive")
        if self.accounts < 2:
            raise ValueError("--accounts must be at least 2 (the hot pair)")
        if not 0 <= self.hot_share <= 1 or not 0 <= self.refused_share <= 1:
            raise ValueError("--hot-share and --refused-share must be between 0 and 1")
        if self.hot_share + self.refused_share > 1:
            raise ValueError("--hot-share and --refused-share add up to more than 1")
        if self.postgres_outage and (self.outages < 1 or self.outage_seconds <= 0):
            raise ValueError("--outages and --outage-seconds must be positive")
        if self.max_seconds <= 0:
            raise ValueError("--max-seconds must be positive")


# --------------------------------------------------------------------------- the report


@dataclass
class KillRecord:
    number: int
    services: list[str]
    after_transfer: int  # how many transfers had started when it came
    in_flight: int  # of those, how many had no answer yet
    pids: dict[str, int]
    back_after: float = 0.0  # seconds from the kill until every victim was SERVING again

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "services": self.services,
            "after_transfer": self.after_transfer,
            "in_flight": self.in_flight,
            "pids": self.pids,
            "back_after_seconds": round(self.back_after, 3),
        }


@dataclass
class OutageRecord:
    number: int
    after_transfer: int
    stopped_at: float = 0.0  # seconds into the load
    down_seconds: float = 0.0
    health: dict[str, Counter[str]] = field(default_factory=dict)
    probes: Counter[str] = field(default_factory=Counter)
    load_answers: Counter[str] = field(default_factory=Counter)
    recovered_after: float | None = None  # seconds from Postgres back until both SERVING
    same_processes: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "after_transfer": self.after_transfer,
            "stopped_at": round(self.stopped_at, 3),
            "down_seconds": round(self.down_seconds, 3),
            "health": {name: dict(seen) for name, seen in self.health.items()},
            "probes": dict(self.probes),
            "load_answers": dict(self.load_answers),
            "recovered_after_seconds": (
                None if self.recovered_after is None else round(self.recovered_after, 3)
            ),
            "same_processes": self.same_processes,
        }


@dataclass
class ChaosReport:
    config: dict[str, Any]
    seed: int
    transfers: int = 0
    settled: int = 0
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by failure reason
    kills: Counter[str] = field(default_factory=Counter)  # by service
    kill_log: list[KillRecord] = field(default_factory=list)
    restarts: int = 0
    unplanned_exits: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # every CreateTransfer answer
    outages: list[OutageRecord] = field(default_factory=list)
    checked_transfers: int = 0
    checked_accounts: int = 0
    money_before: int = 0
    money_after: int = 0
    audit: AuditReport | None = None
    violations: list[str] = field(default_factory=list)
    suppressed: Counter[str] = field(default_factory=Counter)
    # CreateTransfer calls that ran out their deadline: (transfer id, seconds into the
    # load when the call was made, when it ended), the first EXAMPLES of them.
    deadlines: list[tuple[str, float, float]] = field(default_factory=list)
    aborted: str | None = None
    seconds: float = 0.0
    load_seconds: float = 0.0
    workdir: str | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and self.aborted is None

    @property
    def kill_events(self) -> int:
        return len(self.kill_log)

    @property
    def audit_violations(self) -> int | None:
        return None if self.audit is None else len(self.audit.violations)

    @property
    def per_second(self) -> float:
        return self.settled / self.load_seconds if self.load_seconds else 0.0

    def violation(self, kind: str, detail: str) -> None:
        """Records a violation; beyond ``EXAMPLES`` of one kind, only counts it."""
        seen = sum(1 for v in self.violations if v.startswith(f"[{kind}]"))
        if seen < EXAMPLES:
            self.violations.append(f"[{kind}] {detail}")
        else:
            self.suppressed[kind] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "config": self.config,
            "seed": self.seed,
            "transfers": self.transfers,
            "settled": self.settled,
            "completed": self.completed,
            "failed": dict(sorted(self.failed.items())),
            "kills": self.kill_events,
            "kills_by_service": dict(sorted(self.kills.items())),
            "kill_log": [k.to_dict() for k in self.kill_log],
            "restarts": self.restarts,
            "unplanned_exits": self.unplanned_exits,
            "answers": dict(sorted(self.answers.items())),
            "outages": [o.to_dict() for o in self.outages],
            "checked_transfers": self.checked_transfers,
            "checked_accounts": self.checked_accounts,
            "money_before": self.money_before,
            "money_after": self.money_after,
            "audit": None if self.audit is None else self.audit.to_dict(),
            "audit_violations": self.audit_violations,
            "violations": self.violations,
            "suppressed_violations": dict(self.suppressed),
            "deadline_exceeded": [
                {"transfer_id": t, "called_at": round(a, 3), "ended_at": round(b, 3)}
                for t, a, b in self.deadlines
            ],
            "aborted": self.aborted,
            "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_seconds, 3),
            "transfers_per_second": round(self.per_second, 1),
            "workdir": self.workdir,
        }

    def render(self) -> str:
        c = self.config
        failed = ", ".join(f"{reason} {n}" for reason, n in sorted(self.failed.items()))
        kills = ", ".join(f"{name} service {n}" for name, n in sorted(self.kills.items()))
        both = sum(1 for k in self.kill_log if len(k.services) > 1)
        backs = [k.back_after for k in self.kill_log]
        lines = [
            f"chaos on {c['db']}: {c['transfers']} transfers between {c['accounts']} accounts"
            f" (hot pair {c['hot_share']:.0%}), {c['in_flight']} in flight, seed {self.seed}",
            f"transfers:  {self.settled} settled of {self.transfers}: completed {self.completed},"
            f" failed {sum(self.failed.values())}" + (f" ({failed})" if failed else ""),
            f"kills:      {self.kill_events} (SIGKILL): {kills or 'none'}"
            + (f", {both} of them both at once" if both else "")
            + (
                f"; {sum(k.in_flight for k in self.kill_log)} transfers in flight at the kills"
                if self.kill_log
                else ""
            ),
            f"restarts:   {self.restarts}"
            + (
                f", back to SERVING in {sum(backs) / len(backs):.2f} s on average,"
                f" {max(backs):.2f} s at most"
                if backs
                else ""
            )
            + (f"; {self.unplanned_exits} exits nobody asked for" if self.unplanned_exits else ""),
            "answers:    " + ", ".join(f"{label} {n}" for label, n in sorted(self.answers.items())),
        ]
        for o in self.outages:
            health = "; ".join(
                f"{name} " + ", ".join(f"{s} {n}" for s, n in sorted(seen.items()))
                for name, seen in sorted(o.health.items())
            )
            recovered = "never" if o.recovered_after is None else f"{o.recovered_after:.1f} s"
            lines += [
                f"outage {o.number}:   Postgres down {o.down_seconds:.1f} s after transfer"
                f" {o.after_transfer}; health seen: {health}",
                "            probes: "
                + (", ".join(f"{k} {n}" for k, n in sorted(o.probes.items())) or "none")
                + "; load: "
                + (", ".join(f"{k} {n}" for k, n in sorted(o.load_answers.items())) or "none"),
                f"            recovered {recovered} after Postgres came back,"
                f" {'same' if o.same_processes else 'NOT the same'} processes",
            ]
        lines.append(
            f"checks:     {self.checked_transfers} transfers stored as answered,"
            f" {self.checked_accounts} balances as the completed transfers imply,"
            f" money {self.money_before} -> {self.money_after}"
        )
        if self.audit is not None:
            a = self.audit
            lines.append(
                f"audit:      {'OK' if a.ok else 'FAILED'}: {a.accounts} accounts"
                f" ({a.account_events} events), {a.transfers} transfers"
                f" ({a.transfer_events} events), {len(a.in_flight)} in flight,"
                f" reserved {a.totals.reserved}, {len(a.violations)} violations"
            )
            lines += [f"  [{v.kind}] {v.subject}: {v.detail}" for v in a.violations[:EXAMPLES]]
        else:
            lines.append("audit:      not run")
        lines.append(
            f"duration:   {self.seconds:.1f} s (load {self.load_seconds:.1f} s),"
            f" {self.per_second:.1f} transfers/s"
        )
        if self.aborted:
            lines.append(f"ABORTED: {self.aborted}")
        lines.append(f"violations: {len(self.violations) + sum(self.suppressed.values())}")
        lines += [f"  {v}" for v in self.violations]
        lines += [f"  ... and {n} more [{kind}]" for kind, n in sorted(self.suppressed.items())]
        if self.workdir:
            lines.append(f"logs:       {self.workdir}")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _libpq(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _shown(url: str) -> str:
    """The URL without its password, fit to print."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


class Schemas:
    """Fresh Postgres schemas on one server, dropped with everything in them by ``drop``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.names: list[str] = []

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(_libpq(self.url), autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise SetupError(f"Postgres not reachable at {_shown(self.url)}: {first}") from exc

    def new(self, label: str) -> str:
        from psycopg import sql

        schema = f"chaos_{label}_{uuid.uuid4().hex[:12]}"
        with self._connect() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        self.names.append(schema)
        return _with_schema(self.url, schema)

    def drop(self) -> None:
        from psycopg import sql

        if not self.names:
            return
        with self._connect() as conn:
            for schema in self.names:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
        self.names.clear()


def _postgres_bindir() -> Path:
    """Where initdb, pg_ctl and pg_isready are: the PATH, pg_config, or the Debian layout."""
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(os.path.realpath(found)).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PrivatePostgresUnavailable("no Postgres server binaries (initdb, pg_ctl) found")


class PrivatePostgres:
    """A Postgres instance of our own: initdb into a temporary directory, on a free loopback
    port, its socket in that directory. As root, every server command runs as the
    ``postgres`` OS user (the server refuses to run as root). ``close`` stops it and removes
    the directory."""

    def __init__(self) -> None:
        self.bindir = _postgres_bindir()
        self.port = free_port()
        self.running = False
        self._prefix: list[str] = []
        owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            import pwd

            runuser = shutil.which("runuser")
            if runuser is None:
                raise PrivatePostgresUnavailable("running as root and runuser is not installed")
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise PrivatePostgresUnavailable(
                    "running as root and there is no postgres user to run the server as"
                ) from None
            self._prefix = [runuser, "-u", "postgres", "--"]
            owner = (entry.pw_uid, entry.pw_gid)
        self.dir = Path(tempfile.mkdtemp(prefix="bank-chaos-pg-"))
        if owner is not None:
            os.chown(self.dir, *owner)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> None:
        command = [*self._prefix, str(self.bindir / tool), *args]
        try:
            subprocess.run(
                command,
                cwd=self.dir,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.CalledProcessError as exc:
            raise SetupError(
                f"{tool} failed (exit {exc.returncode}): {(exc.stderr or exc.stdout).strip()}"
            ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"{tool}: {exc}") from exc

    def init(self) -> None:
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
        except SetupError as exc:
            raise PrivatePostgresUnavailable(str(exc)) from exc

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on"
            " -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "120", "start")  # fmt: skip
        self.running = True
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        pg_isready = self.bindir / "pg_isready"
        tool = str(pg_isready) if pg_isready.is_file() else (shutil.which("pg_isready") or "")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if tool:
                answer = subprocess.run(
                    [tool, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
                if answer.returncode == 0:
                    return
            else:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1),
                ):
                    return
            time.sleep(0.1)
        raise SetupError(f"private Postgres not ready after {timeout:g}s:\n{self.log_tail()}")

    def stop_immediate(self) -> None:
        """Like a crash: no checkpoint, connections dropped; recovery on the next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        self.running = False

    def close(self) -> None:
        try:
            if self.running:
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop",
                              timeout=60)  # fmt: skip
                except SetupError:
                    self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
                              timeout=60)  # fmt: skip
                self.running = False
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class Service:
    """One service as a subprocess on a fixed loopback port; killed and started again."""

    def __init__(self, name: str, module: str, db: str, log_path: Path) -> None:
        self.name = name
        self.module = module
        self.db = db
        self.log_path = log_path
        self.port = free_port()
        self.extra: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.expected_exit = False  # set while we kill or stop it

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def spawn(self) -> None:
        command = [sys.executable, "-m", self.module, "--listen", self.address, "--db", self.db]
        command += ["--grace", "5", *self.extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BANK_CRASH_")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.log_path.parent
            )
        self.expected_exit = False

    async def wait_serving(self, within: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + within
        async with grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise SetupError(
                        f"{self.module} exited with {self.process.returncode} while starting:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == SERVING:
                        return
                await asyncio.sleep(0.05)
        raise SetupError(f"{self.module} not SERVING after {within:g}s:\n{self.log_tail()}")

    def exited_by_itself(self) -> int | None:
        """The exit code if the process ended without being killed or stopped here."""
        if self.process is None or self.expected_exit:
            return None
        return self.process.poll()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no reply, no flush."""
        if self.process is None:
            return
        self.expected_exit = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; the exit code (after a SIGKILL if it does not end in time)."""
        if self.process is None:
            return None
        self.expected_exit = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


async def _pool(items: Iterable[T], width: int, work: Callable[[T], Awaitable[None]]) -> None:
    """Runs ``work`` on every item, at most ``width`` at a time."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(width)))


def _label(error: grpc.aio.AioRpcError) -> str:
    info = error_info(error)
    reason = info.reason if info is not None else ""
    return f"{error.code().name}/{reason}" if reason else error.code().name


def _state(transfer: tpb.Transfer) -> str:
    return tpb.TransferState.Name(transfer.state).removeprefix("TRANSFER_STATE_")


# --------------------------------------------------------------------------- the run


@dataclass
class Planned:
    transfer_id: str
    source: str
    target: str
    amount: int
    kind: str  # "hot", "random", "closed" (refused credit), "oversized" (refused reserve)
    outcome: str | None = None  # "COMPLETED", "FAILED/<reason>" or "ERROR/<answer>"
    attempts: int = 0


class Chaos:
    def __init__(
        self,
        config: ChaosConfig,
        report: ChaosReport,
        plan_rng: random.Random,
        chaos_rng: random.Random,
    ) -> None:
        self.config = config
        self.report = report
        self.plan_rng = plan_rng  # the transfers: the same for the same seed
        self.rng = chaos_rng  # the events: which service, when, how long down
        self.services: dict[str, Service] = {}
        self.plan: list[Planned] = []
        self.openings: dict[str, int] = {}
        self.hot: tuple[str, str] = ("", "")
        self.started = 0
        self.limit = 0  # transfers may start up to here, until the next event has come
        self.cond = asyncio.Condition()
        self.outage: OutageRecord | None = None  # the one going on, if any
        self.pg: PrivatePostgres | None = None
        self._channels: list[grpc.aio.Channel] = []
        self.load_started = 0.0

    def say(self, message: str) -> None:
        if self.config.progress is not None:
            self.config.progress(message)

    # -- the services --------------------------------------------------------------------

    def channel(self, service: Service) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(service.address, options=CHANNEL_OPTIONS)
        self._channels.append(channel)
        return channel

    async def start_services(self, accounts_db: str, transfers_db: str, logs: Path) -> None:
        account = Service("account", "account_service", accounts_db, logs / "account_service.log")
        transfer = Service(
            "transfer", "transfer_service", transfers_db, logs / "transfer_service.log"
        )
        transfer.extra = ["--accounts", account.address]
        self.services = {"account": account, "transfer": transfer}
        for service in (account, transfer):
            service.spawn()
        await asyncio.gather(account.wait_serving(), transfer.wait_serving())
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
                    f" its log ends:\n{service.log_tail(1500)}",
                )
                service.spawn()
                self.report.restarts += 1
                await service.wait_serving()

    async def _retrying(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """A setup or check call, repeated while the answer is only 'not now'."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                if error.code() not in _RETRY or time.monotonic() > deadline:
                    raise SetupError(f"{what}: {_label(error)}: {error.details()}") from error
                await asyncio.sleep(0.2)

    # -- the plan ------------------------------------------------------------------------

    async def open_accounts(self) -> None:
        ids = [str(uuid.uuid4()) for _ in range(self.config.accounts)]
        closed = str(uuid.uuid4())

        async def one(account_id: str) -> None:
            await self._retrying(
                lambda: self.accounts.OpenAccount(
                    apb.OpenAccountRequest(account_id=account_id, owner="chaos", currency="EUR"),
                    timeout=CALL_TIMEOUT,
                ),
                "OpenAccount",
            )
            if account_id == closed:
                await self._retrying(
                    lambda: self.accounts.CloseAccount(
                        apb.CloseAccountRequest(account_id=account_id), timeout=CALL_TIMEOUT
                    ),
                    "CloseAccount",
                )
                self.openings[account_id] = 0
                return
            account = await self._retrying(
                lambda: self.accounts.Deposit(
                    apb.DepositRequest(
                        account_id=account_id, amount=self.config.opening, request_id="opening"
                    ),
                    timeout=CALL_TIMEOUT,
                ),
                "Deposit",
            )
            self.openings[account_id] = account.balance

        await _pool([*ids, closed], POOL, one)
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

    async def run_load(self) -> None:
        """The load and the events against it, until every transfer has a terminal answer."""
        report = self.report
        report.transfers = len(self.plan)
        events = self.schedule()
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
            tasks.create_task(self.chaos(events))
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
                label = _label(error)
                self._note(label)
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._note_deadline(planned, called)
                info = error_info(error)
                if error.code() in _REFUSAL and info is not None and info.reason:
                    self._settled(planned, f"FAILED/{info.reason}")
                    return
                if error.code() not in _RETRY:
                    self.report.violation(
                        "unexpected-answer",
                        f"CreateTransfer {planned.transfer_id} ({planned.kind}) answered"
                        f" {label}: {error.details()}",
                    )
                    if error.code() not in _UNEXPECTED_RETRIED:
                        self._settled(planned, f"ERROR/{label}")
                        return
                failures += 1
                await asyncio.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)) * random.uniform(0.5, 1))
                continue
            state = _state(answer)
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

    # -- the chaos -----------------------------------------------------------------------

    def schedule(self) -> list[tuple[int, str]]:
        """(transfer number, "kill" or "outage") of every event, spread over the run."""
        kinds = ["kill"] * self.config.kills
        if self.config.postgres_outage:
            kinds += ["outage"] * self.config.outages
        self.rng.shuffle(kinds)
        total, slots = len(self.plan), len(kinds) + 1
        events = []
        for n, kind in enumerate(kinds):
            at = int(total * (n + 1 + self.rng.uniform(-0.4, 0.4)) / slots)
            events.append((min(max(at, 1), total - 1) if total > 1 else 0, kind))
        return sorted(events)

    async def chaos(self, events: list[tuple[int, str]]) -> None:
        margin = self.config.in_flight * MARGIN_WINDOWS
        kills = 0
        for i, (at, kind) in enumerate(events):
            async with self.cond:
                self.limit = min(len(self.plan), at + margin)
                self.cond.notify_all()
                await self.cond.wait_for(lambda at=at: self.started >= at)
            await asyncio.sleep(self.rng.uniform(0, MAX_KILL_DELAY))
            if kind == "kill":
                kills += 1
                remaining = sum(1 for _, k in events[i + 1 :] if k == "kill")
                await self.kill(kills, self._victims(remaining))
            else:
                await self.postgres_outage(len(self.report.outages) + 1)
        async with self.cond:
            self.limit = len(self.plan)
            self.cond.notify_all()

    def _victims(self, remaining: int) -> list[str]:
        never = [name for name in ("account", "transfer") if not self.report.kills[name]]
        if never and remaining < len(never):
            return never  # the last kills: make sure each service has been killed
        draw = self.rng.random()
        if draw < 0.1:
            return ["account", "transfer"]
        return ["account"] if draw < 0.55 else ["transfer"]

    async def kill(self, number: int, names: list[str]) -> None:
        victims = [self.services[name] for name in names]
        record = KillRecord(
            number,
            names,
            self.started,
            self.started - self.report.settled,
            {s.name: s.pid or 0 for s in victims},
        )
        killed_at = time.monotonic()
        for service in victims:
            service.kill()
            self.report.kills[service.name] += 1
        await asyncio.sleep(self.rng.uniform(0, MAX_DOWNTIME))
        for service in victims:
            service.spawn()
            self.report.restarts += 1
        await asyncio.gather(*(service.wait_serving() for service in victims))
        record.back_after = time.monotonic() - killed_at
        self.report.kill_log.append(record)
        self.say(
            f"kill {number}/{self.config.kills}: {' and '.join(names)} service"
            f" after transfer {record.after_transfer} ({self.report.settled} settled);"
            f" back in {record.back_after:.1f} s"
        )

    async def _health(self, name: str) -> str:
        try:
            reply = await self.health[name].Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            return f"error {error.code().name}"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def _probe(self, record: OutageRecord) -> None:
        """One read from each service: during the outage each must answer UNAVAILABLE."""
        known = next((p.transfer_id for p in self.plan if p.outcome is not None), None)
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            (
                "GetAccount",
                lambda: self.accounts.GetAccount(
                    apb.GetAccountRequest(account_id=self.hot[0]), timeout=PROBE_TIMEOUT
                ),
            )
        ]
        if known is not None:
            calls.append(
                (
                    "GetTransfer",
                    lambda: self.transfers.GetTransfer(
                        tpb.GetTransferRequest(transfer_id=known), timeout=PROBE_TIMEOUT
                    ),
                )
            )
        for method, call in calls:
            try:
                await call()
                label = "OK"
            except grpc.aio.AioRpcError as error:
                label = _label(error)
            record.probes[f"{method} {label}"] += 1

    async def postgres_outage(self, number: int) -> None:
        assert self.pg is not None
        record = OutageRecord(number, self.started)
        record.health = {name: Counter() for name in self.services}
        pids = {name: service.pid for name, service in self.services.items()}
        self.outage = record
        self.say(f"outage {number}: stopping Postgres (immediate) after transfer {self.started}")
        await asyncio.to_thread(self.pg.stop_immediate)
        stopped = time.monotonic()
        record.stopped_at = stopped - self.load_started
        while time.monotonic() - stopped < self.config.outage_seconds:
            for name in self.services:
                record.health[name][await self._health(name)] += 1
            await self._probe(record)
            await asyncio.sleep(0.25)
        await asyncio.to_thread(self.pg.start)
        back = time.monotonic()
        record.down_seconds = back - stopped
        self.outage = None
        self.say(f"outage {number}: Postgres back after {record.down_seconds:.1f} s")
        while time.monotonic() - back < RECOVERY_TIMEOUT:
            statuses = [await self._health(name) for name in self.services]
            if all(status == "SERVING" for status in statuses):
                record.recovered_after = time.monotonic() - back
                break
            await asyncio.sleep(0.1)
        record.same_processes = all(
            service.pid == pids[name] and service.process is not None
            and service.process.poll() is None
            for name, service in self.services.items()
        )  # fmt: skip
        self.report.outages.append(record)
        self._judge_outage(record)
        self.say(
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
            if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", COMPLETED):
                continue
            if code in {c.name for c in _REFUSAL} and "/" in label:
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

    # -- the checks ----------------------------------------------------------------------

    async def check(self) -> None:
        """Every transfer as answered, every balance as implied; then stop, then audit."""
        await self.check_transfers()
        await self.check_accounts()
        await self.close_channels()
        self.stop_services()
        self.run_audit()

    async def check_transfers(self) -> None:
        async def one(planned: Planned) -> None:
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while True:
                stored = await self._retrying(
                    lambda: self.transfers.GetTransfer(
                        tpb.GetTransferRequest(transfer_id=planned.transfer_id),
                        timeout=CALL_TIMEOUT,
                    ),
                    "GetTransfer",
                )
                state = _state(stored)
                if state in (COMPLETED, "FAILED") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            seen = state if state == COMPLETED else f"{state}/{stored.failure_reason}"
            if seen != planned.outcome:
                self.report.violation(
                    "outcome-mismatch",
                    f"transfer {planned.transfer_id} ({planned.kind}, {planned.amount}):"
                    f" client saw {planned.outcome}, stored {seen}",
                )
            self.report.checked_transfers += 1

        await _pool(self.plan, POOL, one)

    async def check_accounts(self) -> None:
        expected = dict(self.openings)
        for planned in self.plan:
            if planned.outcome == COMPLETED:
                expected[planned.source] -= planned.amount
                expected[planned.target] += planned.amount
        total = 0

        async def one(account_id: str) -> None:
            nonlocal total
            account = await self._retrying(
                lambda: self.accounts.GetAccount(
                    apb.GetAccountRequest(account_id=account_id), timeout=CALL_TIMEOUT
                ),
                "GetAccount",
            )
            total += account.balance
            problems = []
            if account.balance != expected[account_id]:
                problems.append(
                    f"balance {account.balance}, expected {expected[account_id]}"
                    f" ({account.balance - expected[account_id]:+d})"
                )
            if account.reserved or account.reservations:
                held = ", ".join(r.reference for r in account.reservations)
                problems.append(f"reserved {account.reserved} ({held})")
            if problems:
                self.report.violation("balance", f"account {account_id}: " + "; ".join(problems))
            self.report.checked_accounts += 1

        await _pool(list(expected), POOL, one)
        self.report.money_after = total
        if total != self.report.money_before:
            self.report.violation(
                "conservation",
                f"sum of balances {self.report.money_before} before, {total} after",
            )

    async def diagnose_stall(self) -> str:
        """What the unfinished transfers look like, when the run did not end in time."""
        unsettled = [p for p in self.plan[: self.started] if p.outcome is None]
        lines = [
            f"{len(unsettled)} transfers without a terminal answer,"
            f" {len(self.plan) - self.started} never started"
        ]
        for planned in unsettled[:10]:
            try:
                stored = await self.transfers.GetTransfer(
                    tpb.GetTransferRequest(transfer_id=planned.transfer_id), timeout=PROBE_TIMEOUT
                )
                where = _state(stored)
            except grpc.aio.AioRpcError as error:
                where = _label(error)
            lines.append(
                f"  {planned.transfer_id} ({planned.kind}) after {planned.attempts} attempts:"
                f" stored {where}"
            )
        with contextlib.suppress(grpc.aio.AioRpcError):
            page = await self.transfers.ListUnfinishedTransfers(
                tpb.ListUnfinishedTransfersRequest(page_size=10), timeout=PROBE_TIMEOUT
            )
            for entry in page.transfers:
                lines.append(
                    f"  driving {entry.transfer.transfer_id}: step {entry.step},"
                    f" {entry.attempts} failed attempts, last error {entry.last_error!r}"
                )
        return "\n".join(lines)

    def stop_services(self) -> None:
        for name in ("transfer", "account"):
            service = self.services[name]
            code = service.stop()
            if code != 0:
                self.report.violation(
                    "stop",
                    f"{service.module} exited with {code} on SIGTERM; its log ends:\n"
                    + service.log_tail(1500),
                )

    def run_audit(self) -> None:
        account, transfer = self.services["account"], self.services["transfer"]
        try:
            transfer_events = read_events(transfer.db)
            account_events = read_events(account.db)
        except Unreadable as exc:
            self.report.violation("audit", f"a store could not be read: {exc}")
            return
        result = audit(account_events, transfer_events)
        self.report.audit = result
        if not result.ok:
            self.report.violation("audit", f"{len(result.violations)} audit violations")
        if result.in_flight:
            self.report.violation("audit", f"{len(result.in_flight)} transfers still in flight")


async def _run(config: ChaosConfig, report: ChaosReport, seed: int) -> None:
    started = time.monotonic()
    chaos = Chaos(config, report, random.Random(seed), random.Random(seed + 1))
    workdir = config.workdir
    temporary = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="bank-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
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
                    chaos.pg = PrivatePostgres()
                    await asyncio.to_thread(chaos.pg.init)
                    await asyncio.to_thread(chaos.pg.start)
                    url = chaos.pg.url
                    chaos.say(f"private Postgres on 127.0.0.1:{chaos.pg.port} in {chaos.pg.dir}")
                schemas = Schemas(url)
                accounts_db = await asyncio.to_thread(schemas.new, "accounts")
                transfers_db = await asyncio.to_thread(schemas.new, "transfers")
            await chaos.start_services(accounts_db, transfers_db, workdir)
            await chaos.open_accounts()
            set_up = True
            await chaos.run_load()
            await chaos.check()
    except TimeoutError:
        report.aborted = f"not done within --max-seconds {config.max_seconds:g}"
        if set_up:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    report.aborted += "\n" + await chaos.diagnose_stall()
    except SetupError as exc:
        if not set_up:
            raise
        report.aborted = str(exc)
    finally:
        if set_up and not report.load_seconds and chaos.load_started:
            report.load_seconds = time.monotonic() - chaos.load_started
        await chaos.close_channels()
        chaos.kill_all()
        try:
            if schemas is not None:
                with contextlib.suppress(SetupError):
                    await asyncio.to_thread(schemas.drop)
        finally:
            if chaos.pg is not None:
                await asyncio.to_thread(chaos.pg.close)
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
            "postgres_outage": config.postgres_outage,
            "outages": config.outages if config.postgres_outage else 0,
            "outage_seconds": config.outage_seconds if config.postgres_outage else 0,
            "max_seconds": config.max_seconds,
        },
        seed=seed,
    )
    asyncio.run(_run(config, report, seed))
    return report


# --------------------------------------------------------------------------- the command


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
