"""Both services as real processes on loopback, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bank.v1 import account_pb2_grpc, transfer_pb2_grpc

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServiceProcess:
    """One service started with ``python -m <module>``; its log goes to a file.

    ``credentials``/``channel_options``: how to reach it when it serves TLS (the health
    check at start and ``open_channel``); None is plaintext.
    """

    module: str
    db: str
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    credentials: grpc.ChannelCredentials | None = None
    channel_options: list[tuple[str, object]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        args = [sys.executable, "-m", self.module, "--listen", self.address, "--db", self.db]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*args, *self.extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        log.close()
        self.wait_serving()
        return self

    def open_channel(self) -> grpc.Channel:
        """A channel to the service, secure when it has ``credentials``."""
        if self.credentials is None:
            return grpc.insecure_channel(self.address, options=self.channel_options)
        return grpc.secure_channel(self.address, self.credentials, options=self.channel_options)

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self.open_channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.module} exited early:\n{self.log()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"{self.module} not SERVING after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def wait_exit(self, timeout: float) -> int:
        """Waits for the process to end by itself (no signal); its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""


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
