"""How the services' processes run: the garbage collector's settings.

Each case runs in a fresh interpreter, since freezing objects and changing thresholds
would outlive the test in this one.
"""

from __future__ import annotations

import json
import subprocess
import sys

from grpc_common.settings import GC_THRESHOLDS

# What a service's main coroutine sees of the collector, run as the services run it.
_SERVICE = """
import asyncio, gc, json
from grpc_common.settings import run_async

async def main():
    await asyncio.sleep(0)
    print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}))

run_async(main())
"""


def _seen() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _SERVICE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_service_runs_with_what_it_imported_frozen_and_young_objects_collected_later():
    seen = _seen()
    assert tuple(seen["threshold"]) == GC_THRESHOLDS
    # grpc, protobuf and the standard library alone are tens of thousands of objects.
    assert seen["frozen"] > 10_000


# A service's start as ``run_async`` runs it, with a SIGTERM at a chosen moment.
_START = """
import asyncio, logging, os, signal, sys
from grpc_common.settings import keep_stop_signals, run_async

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
keep_stop_signals()
if sys.argv[1] == "before the loop":
    os.kill(os.getpid(), signal.SIGTERM)

async def main():
    if sys.argv[1] == "while starting":
        os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(5)  # opening the store, say
    print("served")

run_async(main())
"""


def _start_with_sigterm(when: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _START, when], capture_output=True, text=True, timeout=60
    )


def test_a_stop_signal_before_the_loop_runs_ends_the_start_with_status_0():
    done = _start_with_sigterm("before the loop")
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert "grpc_common.settings: stopped before serving" in done.stderr


def test_a_stop_signal_while_starting_ends_the_start_with_status_0():
    done = _start_with_sigterm("while starting")
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert "grpc_common.settings: stopped before serving" in done.stderr
