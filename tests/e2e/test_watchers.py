"""WatchAccount streams against a real account service: bounded per caller, fed from one
place, and other callers keep their speed while hundreds of streams are open."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc
from grpc_common.errors import error_info
from tests.e2e.harness import Bank, running, sqlite_bank

pytestmark = pytest.mark.e2e

LIMIT = 50
STREAMS = 300


@pytest.fixture
def watched(tmp_path) -> Iterator[Bank]:
    with running(
        sqlite_bank(tmp_path, account_args=["--max-watchers-per-caller", str(LIMIT)])
    ) as bank:
        yield bank


async def _storm(address: str, account_ids: list[str]) -> tuple[Counter, list[float], int]:
    """STREAMS watchers on one connection; another connection's GetAccount timings while
    they are open; how many of the accepted watchers saw a deposit made meanwhile."""
    outcomes: Counter = Counter()
    received: set[int] = set()
    async with (
        grpc.aio.insecure_channel(address) as crowd,
        # A connection of its own: channels to one address otherwise share one.
        grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as other,
    ):
        stub = account_pb2_grpc.AccountServiceStub(crowd)
        opened = asyncio.Event()

        async def watch(n: int) -> None:
            request = apb.WatchAccountRequest(account_id=account_ids[n % len(account_ids)])
            call = stub.WatchAccount(request, timeout=20)
            try:
                async for event in call:
                    if event.version == 2:  # the deposit, after the opening
                        received.add(n)
                        return
            except grpc.aio.AioRpcError as error:
                info = error_info(error)
                outcomes[(error.code().name, info.reason if info else "")] += 1
                return
            finally:
                if len(outcomes) + len(received) >= STREAMS:
                    opened.set()

        tasks = [asyncio.create_task(watch(n)) for n in range(STREAMS)]
        await asyncio.sleep(2.0)
        probe = account_pb2_grpc.AccountServiceStub(other)
        timings = []
        for _ in range(40):
            start = time.perf_counter()
            await probe.GetAccount(apb.GetAccountRequest(account_id=account_ids[0]), timeout=5)
            timings.append(time.perf_counter() - start)
        # Another connection is another caller: it may watch too.
        own = probe.WatchAccount(apb.WatchAccountRequest(account_id=account_ids[0]), timeout=20)
        for account_id in account_ids:
            await probe.Deposit(
                apb.DepositRequest(account_id=account_id, amount=5, request_id="d"), timeout=5
            )
        async for event in own:
            if event.version == 2:  # the deposit, after the opening
                break
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        outcomes["OK"] = len(received)
        return outcomes, timings, len(received)


def test_watchers_beyond_a_callers_limit_are_refused_and_others_keep_their_speed(watched):
    accounts = watched.accounts
    account_ids = [
        accounts.OpenAccount(
            apb.OpenAccountRequest(account_id=str(uuid.uuid4()), owner="Ada", currency="EUR")
        ).account_id
        for _ in range(5)
    ]
    assert watched.account is not None
    outcomes, timings, delivered = asyncio.run(_storm(watched.account.address, account_ids))
    p50 = statistics.median(timings) * 1000
    print(f"[watchers] {dict(outcomes)}; another caller's GetAccount p50 {p50:.1f} ms")
    assert outcomes[("RESOURCE_EXHAUSTED", "TOO_MANY_WATCHERS")] == STREAMS - LIMIT
    assert delivered == LIMIT  # every accepted watcher got the deposit
    assert p50 < 50, p50
    assert "Traceback" not in watched.account.log()
