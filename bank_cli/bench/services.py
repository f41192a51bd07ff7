"""The bank ``bank bench`` measures: fresh databases (preloaded for the long runs), both
services as subprocesses with the load generator's stubs, and the CPU time they use."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bank.experimental.v1 import naive_pb2_grpc
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank_cli.bench.plans import OPENING_BALANCE
from bank_cli.harness import Schemas, ServiceProcess

# Quiet logs, and a short drain: a group's services stop as soon as its runs are done.
SERVICE_ARGS = ["--log-level", "WARNING", "--grace", "5"]


class Databases:
    """Fresh databases for one group of runs: SQLite files in a temporary directory, or
    Postgres schemas of their own. ``close`` removes them all."""

    def __init__(self, kind: str, postgres_url: str) -> None:
        self.kind = kind
        self._tmp = tempfile.TemporaryDirectory(prefix="bank-bench-")
        self._schemas = Schemas(postgres_url, prefix="bench")

    def new(self, name: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{Path(self._tmp.name) / name}.db"
        return self._schemas.new(name)

    def close(self) -> None:
        self._schemas.drop()
        self._tmp.cleanup()


def preload_accounts(db: str, account_ids: Sequence[str], events: int) -> dict[str, int]:
    """Writes ``events`` events per account straight into a fresh account store.

    Each stream is what the account service itself would have stored: opened, an opening
    deposit, then alternating deposits and withdrawals of 1, every event carrying its
    running ``balance_after``/``reserved_after``, with a checkpoint at every
    ``checkpoint_every``-th version; and, as the service would have left it, a snapshot
    of the account at its last event. Returns each account's balance.
    """
    from account_service import codec
    from account_service.application import stream_id
    from account_service.domain import Account, AccountOpened, Deposited, Withdrawn
    from account_service.streams import DEFAULT_CHECKPOINT_EVERY, checkpoint_due
    from event_store import NewCheckpoint, NewEvent, open_store

    store = open_store(db)
    balances = {}
    try:
        store.migrate()
        for n, account_id in enumerate(account_ids):
            account = Account.empty(account_id)
            stored = 0
            batch: list[NewEvent] = []
            checkpoints: list[NewCheckpoint] = []

            def add(
                event: Any,
                account: Account = account,
                batch: list = batch,
                checkpoints: list = checkpoints,
            ) -> None:
                account.apply(event)
                kind, data = codec.encode(event)
                data["balance_after"] = account.balance
                data["reserved_after"] = account.reserved
                batch.append(NewEvent(kind, data))
                checkpoint = checkpoint_due(account, DEFAULT_CHECKPOINT_EVERY)
                if checkpoint is not None:
                    checkpoints.append(checkpoint)

            add(AccountOpened(account_id, f"bench-long-{n}", "EUR"))
            add(Deposited(OPENING_BALANCE, "opening"))
            for i in range(events - 2):
                add(Deposited(1, f"load-{i}") if i % 2 == 0 else Withdrawn(1, f"load-{i}"))
                if len(batch) >= 5000:
                    store.append(stream_id(account_id), stored, batch, checkpoints=checkpoints)
                    stored += len(batch)
                    batch.clear()
                    checkpoints.clear()
            if batch:
                store.append(stream_id(account_id), stored, batch, checkpoints=checkpoints)
            store.save_snapshot(stream_id(account_id), account.version, account.to_snapshot())
            balances[account_id] = account.balance
    finally:
        store.close()
    return balances


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bank:
    """Both services, started on the given databases, and the load generator's stubs."""

    def __init__(
        self,
        accounts_db: str,
        transfers_db: str,
        log_dir: Path,
        label: str,
        naive_lock_timeout: float,
        account_replicas: int = 1,
    ) -> None:
        """``account_replicas``: account services on the one database; the transfer
        service sends each account's steps to one of them."""
        self.account_replicas = [
            ServiceProcess(
                "account_service",
                accounts_db,
                log_dir / f"{label}-account_service{'-' + str(n) if n else ''}.log",
                [
                    *SERVICE_ARGS,
                    "--experimental-naive-transfers",
                    "--experimental-naive-lock-timeout",
                    str(naive_lock_timeout),
                ],
            )
            for n in range(account_replicas)
        ]
        self.account = self.account_replicas[0]
        self.transfer = ServiceProcess(
            "transfer_service",
            transfers_db,
            log_dir / f"{label}-transfer_service.log",
            [
                *SERVICE_ARGS,
                "--accounts",
                ",".join(replica.address for replica in self.account_replicas),
            ],
        )
        self._channels: list[grpc.aio.Channel] = []

    async def __aenter__(self) -> Bank:
        try:
            for replica in self.account_replicas:
                await replica.start_async()
            await self.transfer.start_async()
        except BaseException:
            self.stop()
            raise
        account_channel = self.account.open_aio_channel()
        transfer_channel = self.transfer.open_aio_channel()
        self._channels = [account_channel, transfer_channel]
        self.accounts = account_pb2_grpc.AccountServiceStub(account_channel)
        self.naive = naive_pb2_grpc.NaiveTransferServiceStub(account_channel)
        self.transfers = transfer_pb2_grpc.TransferServiceStub(transfer_channel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for channel in self._channels:
            await channel.close()
        self.stop()

    def stop(self) -> None:
        for service in (self.transfer, *self.account_replicas):
            service.stop()

    def cpu(self) -> dict[str, float | None]:
        """CPU seconds so far of each service (of all account replicas together)."""
        accounts = [_cpu_seconds(replica.pid) for replica in self.account_replicas]
        return {
            "account_service": None if None in accounts else sum(accounts),  # type: ignore[arg-type]
            "transfer_service": _cpu_seconds(self.transfer.pid),
        }
