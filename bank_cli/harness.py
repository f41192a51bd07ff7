"""Running the bank's parts on this machine, for ``bank bench``, ``bank chaos`` and the tests.

Owns free loopback ports; a service as a subprocess (``python -m <module> --listen …
--db …``), waited for until its health says SERVING, stopped with SIGTERM or killed; throwaway
Postgres schemas; and a private Postgres cluster that can be stopped like a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
START_TIMEOUT = 60.0
SERVING = health_pb2.HealthCheckResponse.SERVING


class SetupError(Exception):
    """What a run needs could not be set up: a database, a service, a Postgres cluster."""


class ServiceDidNotStart(SetupError):
    """A service exited, or was not SERVING in time, while starting."""


class PostgresUnreachable(SetupError):
    """A Postgres server did not accept a connection."""


class PrivatePostgresUnavailable(SetupError):
    """No private Postgres cluster can be made here (no initdb, no postgres user, ...)."""


def free_port() -> int:
    """A loopback TCP port that nothing listens on at this moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- services


@dataclass
class ServiceProcess:
    """One service started with ``python -m <module>`` on a loopback port of its own, which
    it keeps when started again; its output goes to ``log_path``.

    ``env`` is added to this process's environment, less the variables whose names start
    with one of ``unset_env_prefixes``. ``credentials``/``channel_options``: how to reach
    it (the health check and ``open_channel``); None is plaintext.
    """

    module: str
    db: str
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    credentials: grpc.ChannelCredentials | None = None
    channel_options: list[tuple[str, Any]] = field(default_factory=list)
    unset_env_prefixes: tuple[str, ...] = ()
    cwd: Path | None = None
    # True while this side kills or stops it: that exit is no crash.
    expected_exit: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def spawn(self) -> None:
        """Starts the process, without waiting for it to serve."""
        command = [sys.executable, "-m", self.module, "--listen", self.address, "--db", self.db]
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(self.unset_env_prefixes)
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*command, *self.extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**inherited, **self.env},
                cwd=self.cwd,
            )
        self.expected_exit = False

    def start(self, within: float = START_TIMEOUT) -> ServiceProcess:
        """Starts the process and waits until it is SERVING."""
        self.spawn()
        self.wait_serving(within)
        return self

    async def start_async(self, within: float = START_TIMEOUT) -> ServiceProcess:
        self.spawn()
        await self.wait_serving_async(within)
        return self

    def open_channel(self) -> grpc.Channel:
        """A channel to the service, secure when it has ``credentials``."""
        if self.credentials is None:
            return grpc.insecure_channel(self.address, options=self.channel_options)
        return grpc.secure_channel(self.address, self.credentials, options=self.channel_options)

    def open_aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel to the service, secure when it has ``credentials``."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.address, options=self.channel_options)
        return grpc.aio.secure_channel(self.address, self.credentials, options=self.channel_options)

    def _exited(self) -> ServiceDidNotStart | None:
        if self.process is None or self.process.poll() is None:
            return None
        return ServiceDidNotStart(
            f"{self.module} exited with {self.process.returncode} while starting:\n{self.log()}"
        )

    def _late(self, within: float) -> ServiceDidNotStart:
        return ServiceDidNotStart(f"{self.module} not SERVING after {within:g}s:\n{self.log()}")

    def wait_serving(self, within: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + within
        with self.open_channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if exited := self._exited():
                    raise exited
                with contextlib.suppress(grpc.RpcError):
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == SERVING:
                        return
                time.sleep(0.05)
        raise self._late(within)

    async def wait_serving_async(self, within: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + within
        async with self.open_aio_channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if exited := self._exited():
                    raise exited
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == SERVING:
                        return
                await asyncio.sleep(0.05)
        raise self._late(within)

    def exited_by_itself(self) -> int | None:
        """The exit code if the process ended without being killed or stopped here."""
        if self.process is None or self.expected_exit:
            return None
        return self.process.poll()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait; the exit code, or None when it had to be killed."""
        if self.process is None:
            return None
        self.expected_exit = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def wait_exit(self, timeout: float) -> int:
        """Waits for the process to end by itself (no signal); its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no reply, no flush."""
        if self.process is None:
            return
        self.expected_exit = True
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def log(self, chars: int = 4000) -> str:
        """The end of the service's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --------------------------------------------------------------------------- Postgres


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as libpq takes it (without the ``+driver`` suffix)."""
    from sqlalchemy import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    """The URL without its password, fit to print."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


class Schemas:
    """Throwaway schemas on one Postgres server, ``<prefix>_[<label>_]<random hex>``: each
    ``new`` one empty, and all of them dropped, with everything in them, by ``drop``."""

    def __init__(self, url: str, prefix: str = "t") -> None:
        self.url = url
        self.prefix = prefix
        self.names: list[str] = []

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(libpq_url(self.url), autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise PostgresUnreachable(
                f"Postgres not reachable at {shown_url(self.url)}: {first}"
            ) from exc

    def new(self, label: str = "") -> str:
        """Creates an empty schema; a URL whose connections all work in it."""
        from psycopg import sql

        from event_store.schemas import schema_url

        schema = "_".join(part for part in (self.prefix, label, uuid.uuid4().hex) if part)
        with self._connect() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        self.names.append(schema)
        return schema_url(self.url, schema)

    def drop(self) -> None:
        from psycopg import sql

        if not self.names:
            return
        with self._connect() as conn:
            for schema in self.names:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
        self.names.clear()


def _postgres_bindir() -> Path:
    """Where initdb, pg_ctl and pg_isready are: the PATH, pg_config, or the Debian layout."""
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(os.path.realpath(found)).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PrivatePostgresUnavailable("no Postgres server binaries (initdb, pg_ctl) found")


class PrivatePostgres:
    """A Postgres cluster of our own: initdb into a temporary directory, on a free loopback
    port, its socket in that directory. As root, every server command runs as the
    ``postgres`` OS user (the server refuses to run as root). ``close`` stops it and removes
    the directory."""

    def __init__(self) -> None:
        self.bindir = _postgres_bindir()
        self.port = free_port()
        self.running = False
        self._prefix: list[str] = []
        owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            import pwd

            runuser = shutil.which("runuser")
            if runuser is None:
                raise PrivatePostgresUnavailable("running as root and runuser is not installed")
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise PrivatePostgresUnavailable(
                    "running as root and there is no postgres user to run the server as"
                ) from None
            self._prefix = [runuser, "-u", "postgres", "--"]
            owner = (entry.pw_uid, entry.pw_gid)
        self.dir = Path(tempfile.mkdtemp(prefix="bank-pg-"))
        if owner is not None:
            os.chown(self.dir, *owner)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> None:
        command = [*self._prefix, str(self.bindir / tool), *args]
        try:
            subprocess.run(
                command,
                cwd=self.dir,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.CalledProcessError as exc:
            raise SetupError(
                f"{tool} failed (exit {exc.returncode}): {(exc.stderr or exc.stdout).strip()}"
            ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"{tool}: {exc}") from exc

    def init(self) -> None:
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
        except SetupError as exc:
            raise PrivatePostgresUnavailable(str(exc)) from exc

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on"
            " -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "120", "start")  # fmt: skip
        self.running = True
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        pg_isready = self.bindir / "pg_isready"
        tool = str(pg_isready) if pg_isready.is_file() else (shutil.which("pg_isready") or "")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if tool:
                answer = subprocess.run(
                    [tool, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
                if answer.returncode == 0:
                    return
            else:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1),
                ):
                    return
            time.sleep(0.1)
        raise SetupError(f"private Postgres not ready after {timeout:g}s:\n{self.log_tail()}")

    def stop_immediate(self) -> None:
        """Like a crash: no checkpoint, connections dropped; recovery on the next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        self.running = False

    def close(self) -> None:
        try:
            if self.running:
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop",
                              timeout=60)  # fmt: skip
                except SetupError:
                    self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
                              timeout=60)  # fmt: skip
                self.running = False
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""
