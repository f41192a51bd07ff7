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
