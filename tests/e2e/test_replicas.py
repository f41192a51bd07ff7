"""Two account services and two transfer services on one Postgres.

Clients are spread over the replicas; the transfer services reach the account services
through one channel with client-side round-robin. Whatever replica a call lands on, every
transfer completes exactly once and money is conserved.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from bank_cli.audit import read_events
from bank_cli.audit_checks import audit
from bank_cli.harness import ServiceProcess

pytestmark = pytest.mark.postgres

OPENING = 1_000_000


@pytest.fixture
def replicas(tmp_path, postgres_schema_url):
    accounts_db, transfers_db = postgres_schema_url(), postgres_schema_url()
    started: list[ServiceProcess] = []
    try:
        accounts = [
            ServiceProcess("account_service", accounts_db, tmp_path / f"account-{n}.log").start()
            for n in range(2)
        ]
        started += accounts
        target = "ipv4:" + ",".join(a.address for a in accounts)
        transfers = [
            ServiceProcess(
                "transfer_service",
                transfers_db,
                tmp_path / f"transfer-{n}.log",
                extra_args=["--accounts", target],
            ).start()
            for n in range(2)
        ]
        started += transfers
        yield accounts, transfers, accounts_db, transfers_db
    finally:
        codes = [service.stop() for service in reversed(started)]
    assert codes == [0] * len(started)


async def _run(accounts, transfers, pairs: int, spread: int, total: int, in_flight: int):
    account_channels = [grpc.aio.insecure_channel(a.address) for a in accounts]
    transfer_channels = [grpc.aio.insecure_channel(t.address) for t in transfers]
    account_stubs = [account_pb2_grpc.AccountServiceStub(c) for c in account_channels]
    transfer_stubs = [transfer_pb2_grpc.TransferServiceStub(c) for c in transfer_channels]
    try:
        ids = []
        for n in range(spread):
            stub = account_stubs[n % 2]
            account = await stub.OpenAccount(apb.OpenAccountRequest(owner=f"o{n}", currency="EUR"))
            await account_stubs[(n + 1) % 2].Deposit(
                apb.DepositRequest(account_id=account.account_id, amount=OPENING, request_id="o")
            )
            ids.append(account.account_id)
        rng = random.Random(7)
        gate = asyncio.Semaphore(in_flight)
        outcomes: Counter[str] = Counter()
        made: list[str] = []

        async def one(n: int) -> None:
            if n < pairs:  # the hot pair, alternating directions
                source, target = (ids[0], ids[1]) if n % 2 == 0 else (ids[1], ids[0])
            else:
                source, target = rng.sample(ids, 2)
            transfer_id = str(uuid.uuid4())
            made.append(transfer_id)
            request = tpb.CreateTransferRequest(
                transfer_id=transfer_id,
                from_account_id=source,
                to_account_id=target,
                amount=1 + n % 50,
            )
            async with gate:
                answer = await transfer_stubs[n % 2].CreateTransfer(request, timeout=60)
                outcomes[tpb.TransferState.Name(answer.state)] += 1

        await asyncio.gather(*(one(n) for n in range(total)))
        views = [
            await account_stubs[n % 2].GetAccount(apb.GetAccountRequest(account_id=a))
            for n, a in enumerate(ids)
        ]
        return outcomes, views, made
    finally:
        for channel in account_channels + transfer_channels:
            await channel.close()


async def test_replicas_on_one_postgres_move_money_exactly_once(replicas, capsys):
    accounts, transfers, accounts_db, transfers_db = replicas
    total = 600
    outcomes, views, made = await _run(
        accounts, transfers, pairs=300, spread=12, total=total, in_flight=50
    )
    with capsys.disabled():
        print(f"\n[replicas] 2 account + 2 transfer services on one Postgres: {dict(outcomes)}")
    assert outcomes == Counter({"TRANSFER_STATE_COMPLETED": total})
    assert sum(v.balance for v in views) == OPENING * len(views)
    assert all(v.reserved == 0 and not v.reservations for v in views)
    report = audit(read_events(accounts_db), read_events(transfers_db))
    assert report.ok, report.render()
    transfer_ids = {e.stream_id for e in read_events(transfers_db) if e.type == "TransferCompleted"}
    assert len(transfer_ids) == len(made) == total
