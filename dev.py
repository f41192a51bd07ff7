#!/usr/bin/env python3
"""Everyday commands, with nothing but Python 3.11+ installed.

    python3 dev.py run     set up .venv, then run both services on SQLite until Ctrl-C
    python3 dev.py test    set up .venv with the dev extras, then run the whole test suite
    python3 dev.py stubs   regenerate the bank.v1 Python stubs from protos/

Extra arguments after ``test`` go to pytest. ``run`` takes:

    --postgres URL     both services on this Postgres database instead, each in a schema
                       of its own (reservebank_accounts, reservebank_transfers; created if
                       missing), so a server with a single database will do, e.g.
                       postgresql://postgres@127.0.0.1:5432/postgres
    --data DIR         where the SQLite files go (default: data/)
    --accounts ADDR    the account service's address (default 127.0.0.1:50051)
    --transfers ADDR   the transfer service's address (default 127.0.0.1:50052)

``run`` prints how to call the bank once both services answer their health check; a
service that stops (a port already taken, a database it cannot use) ends it with a non-zero
exit status and that service's last log lines. SIGTERM, SIGINT (Ctrl-C) or SIGHUP stop
both services; on Linux they also stop if ``run`` itself is killed.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
ACCOUNTS = "127.0.0.1:50051"
TRANSFERS = "127.0.0.1:50052"
SCHEMAS = ("reservebank_accounts", "reservebank_transfers")
# Extras whose installation includes another's: the dev extras hold everything run needs.
COVERED_BY = {"run": ("run", "dev"), "dev": ("dev",)}
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
LAST_LINES = 15


def setup(extras: str) -> None:
    """Create .venv if needed and install the project (editable) with ``extras``."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file may be run by an older Python
        sys.exit("Python 3.11 or newer is required")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    sources = [ROOT / "pyproject.toml"]
    for covering in COVERED_BY.get(extras, (extras,)):
        stamp = VENV / f".installed-{covering or 'base'}"
        if stamp.exists() and all(s.stat().st_mtime <= stamp.stat().st_mtime for s in sources):
            return
    stamp = VENV / f".installed-{extras or 'base'}"
    target = f".[{extras}]" if extras else "."
    print(f"installing {target} into {VENV}", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([*pip, "-e", target], check=True, cwd=ROOT)
    stamp.touch()


# --------------------------------------------------------------------------- run


class Service:
    """One service as a child process, its output echoed and its last lines kept."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.last: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=_die_with_parent(),
            # Its own process group: Ctrl-C reaches run alone, which stops the services.
            **({"process_group": 0} if os.name == "posix" else {}),
        )
        self._echo: threading.Thread | None = None

    def echo(self) -> None:
        """Copies the service's output to ours from now on, keeping its last lines."""
        self._echo = threading.Thread(target=self._copy, daemon=True)
        self._echo.start()

    def _copy(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.last.append(line.rstrip("\n"))
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except (OSError, ValueError):
                pass

    def ended(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._echo is not None:
            self._echo.join(2)  # the rest of its output
        return code

    def report(self, what: str) -> str:
        lines = "\n".join(f"    {line}" for line in self.last) or "    (no output)"
        return f"dev.py run: the {self.name} {what}; its last lines:\n{lines}"


def _die_with_parent() -> Any:
    """A function for the child to run before it starts: on Linux, SIGTERM when the
    process that started it dies, however it dies. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def arm() -> None:
        prctl(set_parent_death_signal, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


# Set by one of these signals: ``run`` stops the services and ends.
STOP_SIGNALS = [
    s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None
]
STOPPING = threading.Event()


def _stop_requested(_signum: int, _frame: Any) -> None:
    STOPPING.set()


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dev.py run", description="Run both services until Ctrl-C."
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help=f"both services on this Postgres database, in the schemas {', '.join(SCHEMAS)}",
    )
    parser.add_argument(
        "--data", metavar="DIR", type=Path, default=ROOT / "data", help="SQLite files' folder"
    )
    parser.add_argument("--accounts", metavar="ADDR", default=ACCOUNTS, help="%(default)s")
    parser.add_argument("--transfers", metavar="ADDR", default=TRANSFERS, help="%(default)s")
    args = parser.parse_args(argv)
    # The banner's commands, grpcurl among them, come with the run extras.
    setup("run")
    if args.postgres:
        created = subprocess.run(
            [str(PYTHON), "-m", "event_store.schemas", args.postgres, *SCHEMAS],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            print(f"dev.py run: {created.stderr.strip()}", file=sys.stderr)
            return 1
        accounts_db, transfers_db = created.stdout.split()
        where = f"Postgres, schemas {' and '.join(SCHEMAS)}"
    else:
        data = args.data.resolve()
        data.mkdir(parents=True, exist_ok=True)
        accounts_db = f"sqlite:///{data / 'accounts.db'}"
        transfers_db = f"sqlite:///{data / 'transfers.db'}"
        where = f"SQLite files in {data}"

    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop_requested)
    services: list[Service] = []
    try:
        # Both started before any thread exists: the children run code between fork and
        # exec (_die_with_parent), which threads in the parent could deadlock.
        account = ["account_service", "--listen", args.accounts, "--db", accounts_db]
        services.append(Service("account service", [str(PYTHON), "-m", *account]))
        transfer = ["transfer_service", "--listen", args.transfers, "--db", transfers_db]
        transfer += ["--accounts", args.accounts]
        services.append(Service("transfer service", [str(PYTHON), "-m", *transfer]))
        for service in services:
            service.echo()
        addresses = {"account service": args.accounts, "transfer service": args.transfers}
        failed = _wait_serving(services, addresses)
        if failed:
            print(failed, file=sys.stderr, flush=True)
            return 1
        if not STOPPING.is_set():
            print(_banner(where, args.accounts, args.transfers), flush=True)
        while not STOPPING.is_set():
            for service in services:
                code = service.ended()
                if code is not None:
                    service.wait(STOP_TIMEOUT)  # its last lines
                    print(service.report(f"stopped (exit status {code})"), file=sys.stderr)
                    return 1
            time.sleep(0.2)
    finally:
        stopped_cleanly = _stop_all(services)
    return 0 if stopped_cleanly else 1


def _wait_serving(services: list[Service], addresses: dict[str, str]) -> str | None:
    """None once both serve or a stop is asked for; else why not."""
    targets = [f"{name}={address}" for name, address in addresses.items()]
    waiter = subprocess.Popen(
        [str(PYTHON), "-m", "grpc_common.health_wait", "--timeout", str(START_TIMEOUT), *targets],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while waiter.poll() is None:
            if STOPPING.is_set():
                return None
            for service in services:
                code = service.ended()
                if code is not None:
                    service.wait(STOP_TIMEOUT)
                    return service.report(f"could not start (exit status {code})")
            time.sleep(0.1)
        if waiter.returncode == 0:
            return None
        assert waiter.stderr is not None
        why = waiter.stderr.read().strip()
        return "\n".join([f"dev.py run: {why}", *(s.report("is not serving") for s in services)])
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()


def _stop_all(services: list[Service]) -> bool:
    """SIGTERM to each service still running, then SIGKILL to any that outlasts its
    drain; a second signal meanwhile kills them at once. Whether each stopped by itself
    with exit status 0 (or had stopped before)."""

    def kill_now(_signum: int, _frame: Any) -> None:
        for service in services:
            service.kill()

    for signum in STOP_SIGNALS:
        signal.signal(signum, kill_now)
    running = [service for service in services if service.ended() is None]
    for service in reversed(running):  # the transfer service first: it calls accounts
        service.stop()
    clean = True
    for service in reversed(running):
        code = service.wait(STOP_TIMEOUT)
        if code is None:
            service.kill()
            service.wait(STOP_TIMEOUT)
        if code != 0:
            print(service.report(f"did not stop cleanly (exit status {code})"), file=sys.stderr)
            clean = False
    return clean


def _shown(path: Path) -> str:
    """``path`` as typed from where ``run`` was started."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _banner(where: str, accounts: str, transfers: str) -> str:
    grpcurl, bank = _shown(BIN / "grpcurl"), _shown(BIN / "bank")
    addresses = ""
    if (accounts, transfers) != (ACCOUNTS, TRANSFERS):
        addresses = f" --accounts {accounts} --transfers {transfers}"
    return f"""
reservebank is running ({where}):
  account service  {accounts}  bank.v1.AccountService, bank.v1.ReservationService
  transfer service {transfers}  bank.v1.TransferService

Try, in another terminal in {Path.cwd()}:
  {bank} open --owner Ada --currency EUR{addresses}
  {grpcurl} -plaintext {accounts} list
  {grpcurl} -plaintext -d '{{"owner": "Ada", "currency": "EUR"}}' \\
      {accounts} bank.v1.AccountService/OpenAccount
The README walks through a whole transfer. Ctrl-C stops both services.
"""


# --------------------------------------------------------------------------- the others


def test(args: list[str]) -> int:
    setup("dev")
    return subprocess.call([str(PYTHON), "-m", "pytest", *args], cwd=ROOT)


def stubs() -> int:
    setup("dev")
    return subprocess.call([str(PYTHON), str(ROOT / "protos" / "generate.py")], cwd=ROOT)


def main() -> int:
    command, *rest = sys.argv[1:] or ["help"]
    if command == "run":
        return run(rest)
    if command == "test":
        return test(rest)
    if command == "stubs":
        return stubs()
    print(__doc__)
    return 0 if command == "help" else 2


if __name__ == "__main__":
    sys.exit(main())
