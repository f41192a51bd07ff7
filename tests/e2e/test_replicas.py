"""Any number of drivers, one outcome: account and transfer services as replicas on one
Postgres, with the faults that made replicas create money before transfers had owners.

Every scenario ends the same way: every transfer terminal, balances exactly as the recorded
outcomes say, no hold or held credit open, and a clean ``bank audit``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from bank_cli.audit import read_events
from bank_cli.audit_checks import audit
from bank_cli.harness import ServiceProcess
from grpc_common.errors import error_info

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

OPENING = 1_000_000
LEASE = 5.0  # transfer_service.server.LEASE_SECONDS


class Replicas:
    """Account and transfer replicas on two Postgres schemas, started and stopped at will."""

    def __init__(self, tmp_path, accounts_db: str, transfers_db: str) -> None:
        self.tmp_path = tmp_path
        self.accounts_db, self.transfers_db = accounts_db, transfers_db
        self.accounts: list[ServiceProcess] = []
        self.transfers: list[ServiceProcess] = []

    def account(self) -> ServiceProcess:
        n = len(self.accounts)
        log = self.tmp_path / f"account-{n}.log"
        self.accounts.append(ServiceProcess("account_service", self.accounts_db, log).start())
        return self.accounts[-1]

    def transfer(self, *accounts: ServiceProcess) -> ServiceProcess:
        n = len(self.transfers)
        target = ",".join(a.address for a in accounts or self.accounts)
        service = ServiceProcess(
            "transfer_service",
            self.transfers_db,
            self.tmp_path / f"transfer-{n}.log",
            extra_args=["--accounts", target, "--call-deadline", "1"],
        ).start()
        self.transfers.append(service)
        return service

    def all(self) -> list[ServiceProcess]:
        return [*self.transfers, *self.accounts]

    def audit(self):
        return audit(read_events(self.accounts_db), read_events(self.transfers_db))


@pytest.fixture
def replicas(tmp_path, postgres_schema_url) -> Iterator[Replicas]:
    made = Replicas(tmp_path, postgres_schema_url(), postgres_schema_url())
    try:
        yield made
    finally:
        for service in made.all():
            if service.process is not None and service.process.poll() is None:
                os.kill(service.process.pid, signal.SIGCONT)
                service.kill()


def _stubs(service: ServiceProcess):
    channel = grpc.insecure_channel(service.address)
    return (
        channel,
        account_pb2_grpc.AccountServiceStub(channel),
        transfer_pb2_grpc.TransferServiceStub(channel),
    )


def _open(service: ServiceProcess, balance: int, account_id: str | None = None) -> str:
    channel, accounts, _ = _stubs(service)
    with channel:
        opened = accounts.OpenAccount(
            apb.OpenAccountRequest(
                account_id=account_id or str(uuid.uuid4()), owner="o", currency="EUR"
            )
        )
        if balance:
            accounts.Deposit(
                apb.DepositRequest(
                    account_id=opened.account_id, amount=balance, request_id=f"d-{balance}"
                )
            )
    return opened.account_id


def _account(service: ServiceProcess, account_id: str) -> apb.Account:
    channel, accounts, _ = _stubs(service)
    with channel:
        return accounts.GetAccount(apb.GetAccountRequest(account_id=account_id))


def _answer(service: ServiceProcess, request: tpb.CreateTransferRequest, timeout: float) -> str:
    """The state or refusal a CreateTransfer answered, or the code of a call that decided
    nothing (UNAVAILABLE, DEADLINE_EXCEEDED)."""
    channel, _, transfers = _stubs(service)
    with channel:
        try:
            return tpb.TransferState.Name(transfers.CreateTransfer(request, timeout=timeout).state)
        except grpc.RpcError as error:
            info = error_info(error)
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION or (
                error.code() == grpc.StatusCode.NOT_FOUND and info is not None
            ):
                return f"FAILED/{info.reason if info else '?'}"
            return error.code().name


def _until_answered(service: ServiceProcess, request, within: float = 60) -> str:
    deadline = time.monotonic() + within
    while True:
        answer = _answer(service, request, timeout=10)
        if answer not in ("UNAVAILABLE", "DEADLINE_EXCEEDED") or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def _stored(service: ServiceProcess, transfer_id: str) -> tpb.Transfer:
    channel, _, transfers = _stubs(service)
    with channel:
        return transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=transfer_id))


def _check_the_end(r: Replicas, transfers: dict[str, tpb.CreateTransferRequest], opening) -> None:
    """Every transfer terminal; balances exactly as the COMPLETED ones say; a clean audit."""
    reader = r.transfers[-1]
    expected = dict(opening)
    deadline = time.monotonic() + 60
    for transfer_id, request in transfers.items():
        while (stored := _stored(reader, transfer_id)).state not in (
            tpb.TRANSFER_STATE_COMPLETED,
            tpb.TRANSFER_STATE_FAILED,
        ):
            assert time.monotonic() < deadline, f"{transfer_id} still {stored.state}"
            time.sleep(0.2)
        if stored.state == tpb.TRANSFER_STATE_COMPLETED:
            expected[request.from_account_id] -= request.amount
            expected[request.to_account_id] += request.amount
    for account_id, balance in expected.items():
        account = _account(r.accounts[-1], account_id)
        assert (account.balance, account.reserved, account.pending_credits) == (balance, 0, 0)
    report = r.audit()
    assert report.ok, report.render()
    assert report.in_flight == []


@pytest.mark.parametrize("refusal", ["ACCOUNT_NOT_FOUND", "INSUFFICIENT_FUNDS"])
def test_a_stale_driver_cannot_turn_a_refusal_into_money(replicas, refusal, capsys):
    """T2 owns a transfer it cannot drive (its account replica is down) and freezes; T1
    takes it over and fails it; the client reacts (opens the target, funds the source);
    T2's account replica comes back and T2 wakes up with its stale copy."""
    r = replicas
    a1, a2 = r.account(), r.account()
    t1, t2 = r.transfer(a1), r.transfer(a2)
    source = _open(a1, 10 if refusal == "INSUFFICIENT_FUNDS" else 100)
    target = _open(a1, 0) if refusal == "INSUFFICIENT_FUNDS" else str(uuid.uuid4())
    request = tpb.CreateTransferRequest(
        transfer_id=str(uuid.uuid4()), from_account_id=source, to_account_id=target, amount=30
    )
    a2.kill()
    assert _answer(t2, request, timeout=1) in ("DEADLINE_EXCEEDED", "UNAVAILABLE")
    os.kill(t2.process.pid, signal.SIGSTOP)  # T2 owns it, retrying, and stops renewing
    frozen_at = time.monotonic()
    answer = _until_answered(t1, request)
    taken_over = time.monotonic() - frozen_at
    assert answer == f"FAILED/{refusal}"
    # The client reacts to the refusal.
    if refusal == "ACCOUNT_NOT_FOUND":
        _open(a1, 0, account_id=target)
    else:
        _open_deposit = _stubs(a1)
        with _open_deposit[0]:
            _open_deposit[1].Deposit(
                apb.DepositRequest(account_id=source, amount=1000, request_id="top-up")
            )
    a2.start()
    os.kill(t2.process.pid, signal.SIGCONT)
    # T2's driver retries against its account replica, now back: its step is fenced.
    deadline = time.monotonic() + 3 * LEASE
    while "its new owner drives it" not in t2.log():
        assert time.monotonic() < deadline, t2.log()
        time.sleep(0.2)
    assert f"transfer {request.transfer_id}" in t2.log()
    stored = _stored(t2, request.transfer_id)
    assert (stored.state, stored.failure_reason) == (tpb.TRANSFER_STATE_FAILED, refusal)
    opening = {source: 10 + 1000 if refusal == "INSUFFICIENT_FUNDS" else 100, target: 0}
    _check_the_end(r, {request.transfer_id: request}, opening)
    with capsys.disabled():
        print(f"\n[replicas] stale driver ({refusal}): taken over in {taken_over:.1f}s, fenced")


async def _load(
    r: Replicas, ids: list[str], total: int, both: bool, in_flight: int = 20
) -> dict[str, tpb.CreateTransferRequest]:
    """Transfers between ``ids``, each sent to one transfer replica or (``both``) to every
    one at once, retried until it answers."""
    rng = random.Random(7)
    gate = asyncio.Semaphore(in_flight)
    made: dict[str, tpb.CreateTransferRequest] = {}

    async def send(service: ServiceProcess, request) -> None:
        for _ in range(200):
            async with grpc.aio.insecure_channel(service.address) as channel:
                stub = transfer_pb2_grpc.TransferServiceStub(channel)
                try:
                    await stub.CreateTransfer(request, timeout=10)
                    return
                except grpc.aio.AioRpcError as error:
                    if error.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        return  # an outcome (a refusal): decided
            await asyncio.sleep(0.2)

    async def one(n: int) -> None:
        source, target = rng.sample(ids, 2)
        request = tpb.CreateTransferRequest(
            transfer_id=str(uuid.uuid4()),
            from_account_id=source,
            to_account_id=target,
            amount=1 + n % 50,
        )
        made[request.transfer_id] = request
        async with gate:
            targets = r.transfers if both else [r.transfers[n % len(r.transfers)]]
            await asyncio.gather(*(send(service, request) for service in targets))

    await asyncio.gather(*(one(n) for n in range(total)))
    return made


async def test_the_same_transfers_on_both_replicas_with_one_restarted(replicas, capsys):
    r = replicas
    r.account(), r.account()
    r.transfer(), r.transfer()
    ids = [_open(r.accounts[n % 2], OPENING) for n in range(10)]
    load = asyncio.create_task(_load(r, ids, total=300, both=True))
    await asyncio.sleep(1.0)
    r.transfers[0].kill()
    await asyncio.sleep(0.5)
    r.transfers[0].start()
    made = await load
    _check_the_end(r, made, dict.fromkeys(ids, OPENING))
    with capsys.disabled():
        print(f"\n[replicas] {len(made)} transfers sent to both replicas, one restarted: ok")


def test_takeover_of_a_backlog_when_its_owner_dies(replicas, capsys):
    r = replicas
    a = r.account()
    r.transfer(), r.transfer()
    ids = [_open(a, OPENING) for _ in range(6)]
    a.kill()  # transfers pile up at their owner, unfinished
    made = {}
    for n in range(40):
        request = tpb.CreateTransferRequest(
            transfer_id=str(uuid.uuid4()),
            from_account_id=ids[n % 6],
            to_account_id=ids[(n + 1) % 6],
            amount=1 + n,
        )
        made[request.transfer_id] = request
        assert _answer(r.transfers[0], request, timeout=0.3) in (
            "DEADLINE_EXCEEDED",
            "UNAVAILABLE",
        )
    r.transfers[0].kill()
    killed_at = time.monotonic()
    a.start()
    deadline = time.monotonic() + 60
    survivor = r.transfers[1]
    while any(_stored(survivor, t).state != tpb.TRANSFER_STATE_COMPLETED for t in made):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    took = time.monotonic() - killed_at
    _check_the_end(r, made, dict.fromkeys(ids, OPENING))
    assert took < LEASE + 5
    with capsys.disabled():
        print(f"\n[replicas] backlog of {len(made)} taken over and finished in {took:.1f}s")


async def test_both_transfer_replicas_restarted_at_once(replicas):
    r = replicas
    r.account()
    r.transfer(), r.transfer()
    ids = [_open(r.accounts[0], OPENING) for _ in range(8)]
    load = asyncio.create_task(_load(r, ids, total=200, both=False))
    await asyncio.sleep(1.0)
    for service in r.transfers:
        service.kill()
    for service in r.transfers:
        service.start()
    made = await load
    _check_the_end(r, made, dict.fromkeys(ids, OPENING))


async def test_replicas_spread_over_one_postgres_move_money_exactly_once(replicas, capsys):
    r = replicas
    r.account(), r.account()
    r.transfer(), r.transfer()
    ids = [_open(r.accounts[n % 2], OPENING) for n in range(12)]
    made = await _load(r, ids, total=600, both=False, in_flight=50)
    _check_the_end(r, made, dict.fromkeys(ids, OPENING))
    states = Counter(_stored(r.transfers[0], t).state for t in made)
    assert states == Counter({tpb.TRANSFER_STATE_COMPLETED: 600})
    with capsys.disabled():
        print(f"\n[replicas] 2 account + 2 transfer services, {len(made)} transfers: ok")


def test_on_sqlite_a_second_transfer_service_on_one_file_is_refused(tmp_path):
    account = ServiceProcess("account_service", f"sqlite:///{tmp_path}/a.db", tmp_path / "a.log")
    account.start()
    db = f"sqlite:///{tmp_path}/t.db"
    args = ["--accounts", account.address]
    first = ServiceProcess("transfer_service", db, tmp_path / "t1.log", extra_args=args).start()
    second = ServiceProcess("transfer_service", db, tmp_path / "t2.log", extra_args=args)
    second.spawn()
    try:
        assert second.wait_exit(30) == 2
        assert "another transfer service uses" in second.log()
    finally:
        for service in (first, account):
            service.stop()
