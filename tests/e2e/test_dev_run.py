"""``python3 dev.py run`` as a new user runs it: by a bare interpreter (``-S``: no
site-packages), as a real process, with its services as real processes."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

from bank_cli.harness import free_port
from tests.pg import base_url, skip_or_fail

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BANNER_END = "Ctrl-C stops both services."
LINUX = sys.platform.startswith("linux")


class DevRun:
    """``dev.py run`` on free ports, its output collected line by line."""

    def __init__(self, data: Path, *extra: str, accounts: str | None = None) -> None:
        self.accounts = accounts or f"127.0.0.1:{free_port()}"
        self.transfers = f"127.0.0.1:{free_port()}"
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-S", "dev.py", "run", "--data", str(data)),
                *("--accounts", self.accounts, "--transfers", self.transfers, *extra),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_banner(self, timeout: float = 120.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while (end := self._banner_end()) is None:
            assert self.process.poll() is None, f"dev.py run ended:\n{self.output}"
            assert time.monotonic() < deadline, f"no banner:\n{self.output}"
            time.sleep(0.1)
        start = max(
            i for i, line in enumerate(self.lines[:end]) if line.startswith("reservebank is")
        )
        return self.lines[start : end + 1]

    def _banner_end(self) -> int | None:
        """The index of the banner's last line, once it is printed."""
        return next((i for i, line in enumerate(self.lines) if line.endswith(BANNER_END)), None)

    def children(self) -> list[int]:
        pid = self.process.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def child(self, module: str) -> int:
        """The pid of the service started with ``python -m <module>``."""
        (pid,) = [
            pid
            for pid in self.children()
            if module in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[2].decode()
        ]
        return pid

    def wait(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def dev_runs(tmp_path) -> Iterator[list[DevRun]]:
    started: list[DevRun] = []
    yield started
    for run in started:
        run.close()


def gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether the process ends (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in status:
            return True
        time.sleep(0.1)
    return False


def serving(address: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "grpc_common.health_wait", "--timeout", "0", f"s={address}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode == 0


def run_shown(banner: list[str], program: str) -> subprocess.CompletedProcess[str]:
    """Runs the first banner line that starts with ``program``, as a user would type it."""
    (line,) = [line.strip() for line in banner if line.strip().startswith(program + " ")][:1]
    return subprocess.run(shlex.split(line), cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not LINUX, reason="finds the services through /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_banner_comes_once_both_serve_and_a_signal_stops_both(dev_runs, tmp_path, signum):
    run = DevRun(tmp_path / "data")
    dev_runs.append(run)
    banner = run.wait_banner()
    assert serving(run.accounts) and serving(run.transfers)
    assert banner[0].startswith("reservebank is running (SQLite files in")
    children = run.children()
    assert len(children) == 2

    opened = run_shown(banner, ".venv/bin/bank")
    assert opened.returncode == 0, opened.stderr
    assert "opened account" in opened.stdout
    listed = run_shown(banner, ".venv/bin/grpcurl")
    assert listed.returncode == 0, listed.stderr
    assert "bank.v1.AccountService" in listed.stdout.split()

    run.process.send_signal(signum)
    assert run.wait() == 0, run.output
    assert all(gone(pid) for pid in children)
    # Stopped cleanly wherever it was: serving, or still starting.
    assert "the transfer service did not stop cleanly" not in run.output
    assert re.search(r"transfer-service grpc_common\.\w+: stopped", run.output), run.output
    assert "account-service grpc_common.server: stopped" in run.output


@pytest.mark.skipif(not LINUX, reason="the services follow a killed dev.py on Linux only")
def test_services_stop_when_dev_py_is_killed(dev_runs, tmp_path):
    run = DevRun(tmp_path / "data")
    dev_runs.append(run)
    run.wait_banner()
    children = run.children()
    run.process.kill()
    run.process.wait()
    assert all(gone(pid) for pid in children)


@pytest.mark.skipif(not LINUX, reason="finds the services through /proc")
def test_a_service_that_dies_ends_the_run_and_stops_the_other(dev_runs, tmp_path):
    run = DevRun(tmp_path / "data")
    dev_runs.append(run)
    run.wait_banner()
    account, transfer = run.child("account_service"), run.child("transfer_service")
    os.kill(account, signal.SIGKILL)
    assert run.wait() == 1, run.output
    assert "dev.py run: the account service stopped (exit status -9)" in run.output
    assert gone(transfer)
    # Stopped cleanly wherever it was: serving, or still starting.
    assert "the transfer service did not stop cleanly" not in run.output
    assert re.search(r"transfer-service grpc_common\.\w+: stopped", run.output), run.output


def test_a_port_in_use_names_the_service_and_why(dev_runs, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        accounts = f"127.0.0.1:{taken.getsockname()[1]}"
        run = DevRun(tmp_path / "data", accounts=accounts)
        dev_runs.append(run)
        assert run.wait(120) == 1, run.output
    assert BANNER_END not in run.output
    report = run.output[run.output.index("dev.py run: ") :]
    assert report.startswith("dev.py run: the account service could not start (exit status 2)")
    assert f"cannot listen on {accounts}: the address is in use" in report
    # Stopped cleanly wherever it was: serving, or still starting.
    assert "the transfer service did not stop cleanly" not in run.output
    assert re.search(r"transfer-service grpc_common\.\w+: stopped", run.output), run.output


@pytest.fixture
def single_database() -> Iterator[str]:
    """A URL onto a fresh, empty Postgres database, dropped afterwards."""
    server = make_url(base_url()).set(drivername="postgresql")
    name = f"t_{uuid.uuid4().hex}"
    try:
        admin = psycopg.connect(
            server.render_as_string(hide_password=False), autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        skip_or_fail(f"Postgres not reachable at {base_url()}: {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.postgres
def test_postgres_puts_each_service_in_a_schema_of_one_database(
    dev_runs, tmp_path, single_database
):
    run = DevRun(tmp_path / "data", "--postgres", single_database)
    dev_runs.append(run)
    banner = run.wait_banner()
    assert "Postgres, schemas reservebank_accounts and reservebank_transfers" in banner[0]
    opened = run_shown(banner, ".venv/bin/bank")
    assert opened.returncode == 0, opened.stderr
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 0, run.output

    with psycopg.connect(single_database, autocommit=True) as conn:
        owners = {
            schema: conn.execute(
                sql.SQL("SELECT service FROM {}.store_owner").format(sql.Identifier(schema))
            ).fetchall()
            for schema in ("reservebank_accounts", "reservebank_transfers")
        }
        opened_events = conn.execute(
            "SELECT count(*) FROM reservebank_accounts.events WHERE type = 'AccountOpened'"
        ).fetchone()
    assert owners == {
        "reservebank_accounts": [("account-service",)],
        "reservebank_transfers": [("transfer-service",)],
    }
    assert opened_events == (1,)

    # Run again on the same database: the schemas are there, and each is its service's.
    again = DevRun(tmp_path / "data", "--postgres", single_database)
    dev_runs.append(again)
    again.wait_banner()
    again.process.send_signal(signal.SIGTERM)
    assert again.wait() == 0, again.output
