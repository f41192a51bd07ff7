"""How the services' processes run: the garbage collector's settings.

Each case runs in a fresh interpreter, since freezing objects and changing thresholds
would outlive the test in this one.
"""

from __future__ import annotations

import json
import os
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


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if name != "BANK_GC"}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _seen(**env: str) -> dict:
    done = _run(_SERVICE, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_service_runs_with_what_it_imported_frozen_and_young_objects_collected_later():
    seen = _seen()
    assert tuple(seen["threshold"]) == GC_THRESHOLDS
    # grpc, protobuf and the standard library alone are tens of thousands of objects.
    assert seen["frozen"] > 10_000


def test_bank_gc_python_keeps_the_interpreters_defaults():
    defaults = json.loads(_run("import gc, json; print(json.dumps(gc.get_threshold()))").stdout)
    seen = _seen(BANK_GC="python")
    assert seen["threshold"] == defaults
    assert tuple(defaults) != GC_THRESHOLDS
    assert seen["frozen"] == 0


def test_an_unknown_bank_gc_stops_the_service_before_it_starts():
    done = _run(_SERVICE, BANK_GC="off")
    assert done.returncode != 0
    assert "BANK_GC='off'" in done.stderr
    assert "threshold" not in done.stdout
    assert "never awaited" not in done.stderr
