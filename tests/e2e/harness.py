"""Both services as real processes on loopback, wired together, with blocking client stubs,
for end-to-end tests. Each process is a ``bank_cli.harness.ServiceProcess``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank_cli.harness import ServiceProcess


@dataclass
class Bank:
    """An account service and a transfer service wired together, with client stubs."""

    accounts_db: str
    transfers_db: str
    workdir: Path
    account: ServiceProcess | None = None
    transfer: ServiceProcess | None = None
    # Extra environment for one service, e.g. to arm a crash point in it alone.
    account_env: dict[str, str] = field(default_factory=dict)
    transfer_env: dict[str, str] = field(default_factory=dict)
    # Extra command-line arguments for one service (e.g. security flags).
    account_args: list[str] = field(default_factory=list)
    transfer_args: list[str] = field(default_factory=list)
    # How clients reach a service serving TLS (None: plaintext).
    account_credentials: grpc.ChannelCredentials | None = None
    transfer_credentials: grpc.ChannelCredentials | None = None
    _channels: list[grpc.Channel] = field(default_factory=list)

    def start(self) -> Bank:
        self.account = ServiceProcess(
            "account_service",
            self.accounts_db,
            self.workdir / "account_service.log",
            extra_args=list(self.account_args),
            env=dict(self.account_env),
            credentials=self.account_credentials,
        ).start()
        self.transfer = ServiceProcess(
            "transfer_service",
            self.transfers_db,
            self.workdir / "transfer_service.log",
            extra_args=["--accounts", self.account.address, *self.transfer_args],
            env=dict(self.transfer_env),
            credentials=self.transfer_credentials,
        ).start()
        return self

    def channel(
        self, address: str, credentials: grpc.ChannelCredentials | None = None
    ) -> grpc.Channel:
        if credentials is None:
            channel = grpc.insecure_channel(address)
        else:
            channel = grpc.secure_channel(address, credentials)
        self._channels.append(channel)
        return channel

    @property
    def accounts(self) -> account_pb2_grpc.AccountServiceStub:
        assert self.account is not None
        channel = self.channel(self.account.address, self.account_credentials)
        return account_pb2_grpc.AccountServiceStub(channel)

    @property
    def reservations(self) -> account_pb2_grpc.ReservationServiceStub:
        assert self.account is not None
        channel = self.channel(self.account.address, self.account_credentials)
        return account_pb2_grpc.ReservationServiceStub(channel)

    @property
    def transfers(self) -> transfer_pb2_grpc.TransferServiceStub:
        assert self.transfer is not None
        channel = self.channel(self.transfer.address, self.transfer_credentials)
        return transfer_pb2_grpc.TransferServiceStub(channel)

    def stop(self) -> dict[str, int]:
        for channel in self._channels:
            channel.close()
        codes = {}
        for service in (self.transfer, self.account):
            if service is not None and service.process is not None:
                codes[service.module] = service.stop()
        return codes


def sqlite_bank(workdir: Path, **options) -> Bank:
    """A bank (not started) whose two services keep their SQLite files in ``workdir``."""
    return Bank(
        f"sqlite:///{workdir}/accounts.db", f"sqlite:///{workdir}/transfers.db", workdir, **options
    )


@contextlib.contextmanager
def running(bank: Bank) -> Iterator[Bank]:
    """Starts ``bank``; stops it on leaving, where both services must exit cleanly."""
    bank.start()
    try:
        yield bank
    finally:
        codes = bank.stop()
    assert codes == {"transfer_service": 0, "account_service": 0}, codes
