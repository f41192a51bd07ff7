"""Transport security: TLS and mutual TLS credentials, and what a server or channel carries.

Everything here is read from files named on the command line. Error messages name the file
and what is wrong with it, never its contents: a key or token must not reach a log.

``ServerSecurity`` is what ``grpc_common.server.serve`` takes: server credentials (none:
plaintext) and the interceptors that authenticate calls. ``ChannelSecurity`` is what a
client channel takes: channel credentials (none: plaintext), options, and the metadata sent
on every call (the bearer token). A command-line entry point builds both once and records
them with ``configure``; ``configured()`` is the fallback of the functions that take them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

PEM_MARK = b"-----BEGIN "


class SecurityConfigError(ValueError):
    """A security setting that cannot be used; the message names no secret."""


@dataclass(frozen=True)
class ServerSecurity:
    """``credentials`` None: plaintext. ``interceptors`` go after the server's own."""

    credentials: grpc.ServerCredentials | None = None
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    # For the start-up log line only: what the credentials amount to.
    description: str = "plaintext"


@dataclass(frozen=True)
class ChannelSecurity:
    """``credentials`` None: plaintext. ``metadata`` is sent on every call of the channel."""

    credentials: grpc.ChannelCredentials | None = None
    options: Sequence[tuple[str, object]] = ()
    metadata: Sequence[tuple[str, str]] = ()
    description: str = "plaintext"


@dataclass(frozen=True)
class ProcessSecurity:
    """The security of this process: its server's, and its channel to the account service."""

    server: ServerSecurity | None = None
    accounts: ChannelSecurity | None = None
    # HOST:PORT of a plaintext listener of the health service alone ("" for none).
    health_listen: str = ""


_configured = ProcessSecurity()


def configure(
    server: ServerSecurity | None,
    accounts: ChannelSecurity | None = None,
    health_listen: str = "",
) -> None:
    """Records the process's security; set once, by its command-line entry point."""
    global _configured
    _configured = ProcessSecurity(server, accounts, health_listen)


def configured() -> ProcessSecurity:
    return _configured


def check_private(path: str, what: str) -> None:
    """Refuses a secret file that its group or others may read or write: a token, its
    hashes or a key readable by every local account is as good as published.

    One exception: a file someone else owns whose group is this process's own, as
    Kubernetes mounts a Secret for a pod's ``fsGroup`` (root-owned, mode 0440)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise SecurityConfigError(f"{what} {path}: cannot read ({exc.strerror})") from None
    mode = info.st_mode
    mounted_for_us = info.st_uid != os.geteuid() and info.st_gid == os.getegid()
    if mode & 0o007 or (mode & 0o070 and not mounted_for_us):
        raise SecurityConfigError(
            f"{what} {path}: readable or writable by group or others (mode"
            f" {stat.S_IMODE(mode):04o}); run chmod 600 {path}"
        )


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file; an error that names the file, never its contents."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{what} {path}: cannot read ({exc.strerror})") from None
    if PEM_MARK not in data:
        raise SecurityConfigError(f"{what} {path}: not a PEM file")
    return data


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS from a certificate chain and its key; with ``client_ca``, mutual TLS: every
    client must present a certificate that CA signed, or the handshake fails."""
    chain = read_pem(cert, "TLS certificate")
    private_key = read_pem(key, "TLS key")
    if client_ca:
        roots = read_pem(client_ca, "TLS client CA")
        return grpc.ssl_server_credentials(
            [(private_key, chain)], root_certificates=roots, require_client_auth=True
        )
    return grpc.ssl_server_credentials([(private_key, chain)])


def channel_credentials(
    ca: str | None, client_cert: str | None = None, client_key: str | None = None
) -> grpc.ChannelCredentials:
    """TLS to a server whose certificate ``ca`` signed (None: the system's roots),
    presenting ``client_cert``/``client_key`` when the server asks for one (mutual TLS)."""
    if bool(client_cert) != bool(client_key):
        raise SecurityConfigError("a client certificate needs its key, and a key its certificate")
    roots = read_pem(ca, "TLS CA") if ca else None
    chain = read_pem(client_cert, "TLS client certificate") if client_cert else None
    private_key = read_pem(client_key, "TLS client key") if client_key else None
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=private_key, certificate_chain=chain
    )


def host_of(address: str) -> str:
    """The host of ``HOST:PORT``, ``[V6]:PORT`` or a gRPC target such as ``dns:///HOST:PORT``."""
    if "://" in address:
        address = address.split("://", 1)[1].lstrip("/")
    elif address.startswith(("dns:", "ipv4:", "ipv6:")):
        address = address.split(":", 1)[1]
    if address.startswith("unix:"):
        return "unix"
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") == 1:
        return address.rsplit(":", 1)[0]
    return address


def is_loopback(address: str) -> bool:
    """Whether ``address`` can only be reached from this machine: 127.0.0.0/8, ::1,
    ``localhost`` or a Unix socket. An empty host (all interfaces) is not."""
    host = host_of(address)
    if host in ("localhost", "unix") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
