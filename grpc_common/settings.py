"""Command-line settings: every flag has an environment variable and a working default."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from grpc_common import auth, logs, metrics, tls, tracing
from shared_kernel import page_tokens


def env_flag(parser: argparse.ArgumentParser, flag: str, env: str, default: str, help: str) -> None:
    parser.add_argument(
        flag, default=os.environ.get(env, default), help=f"{help} (${env}; default {default})"
    )


def common_parser(prog: str, description: str, listen: str, db: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    env_flag(parser, "--listen", "BANK_LISTEN", listen, "address to serve on, HOST:PORT")
    env_flag(parser, "--db", "BANK_DB", db, "SQLAlchemy URL of this service's database")
    env_flag(parser, "--grace", "BANK_GRACE", "10", "seconds to finish calls in flight on SIGTERM")
    env_flag(parser, "--log-level", "BANK_LOG_LEVEL", "INFO", "log level")
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=os.environ.get("BANK_LOG_FORMAT", "text"),
        help="log lines for people, or one JSON object per line ($BANK_LOG_FORMAT; default text)",
    )
    return parser


def configure_logging(level: str, log_format: str = "text", service: str = "-") -> None:
    """The process's log on stderr: ``text`` lines, or ``json`` (``grpc_common.logs``),
    each naming ``service``."""
    if log_format not in logs.FORMATS:
        sys.exit(f"--log-format {log_format!r}: expected one of {', '.join(logs.FORMATS)}")
    logs.configure(level, log_format, service)


def add_observability_flags(parser: argparse.ArgumentParser) -> None:
    """Prometheus metrics and OpenTelemetry tracing; both off unless given."""
    group = parser.add_argument_group("observability (off unless given)")
    _optional_flag(
        group,
        "--metrics-port",
        "BANK_METRICS_PORT",
        "serve Prometheus metrics at http://[HOST:]PORT/metrics (a bare port: --listen's host)",
        metavar="[HOST:]PORT",
    )
    group.add_argument(
        "--otel-exporter",
        choices=tracing.EXPORTERS,
        default=os.environ.get("BANK_OTEL_EXPORTER", "none"),
        help="OpenTelemetry tracing: spans to stdout (console) or over OTLP/gRPC (otlp,"
        " configured by the OTEL_EXPORTER_OTLP_* variables) ($BANK_OTEL_EXPORTER; default none)",
    )


def configure_observability(
    parser: argparse.ArgumentParser, args: argparse.Namespace, service_name: str
) -> None:
    """Turns on what the observability flags ask for; a setting that cannot be used ends
    the program."""
    try:
        metrics.configure(args.metrics_port, args.listen)
        tracing.configure(args.otel_exporter, service_name)
    except (metrics.MetricsConfigError, tracing.TracingConfigError) as exc:
        parser.error(str(exc))


# Python's cyclic garbage collector, as the services run it (see ``tune_gc``).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Sets the cyclic garbage collector for a process that serves many small calls.

    Every call allocates tasks, futures, messages and events that reference counting frees
    moments later; with Python's defaults (a collection every 700 net allocations) the
    collector ran about every millisecond under load, and every full collection rescanned
    all the process had imported (modules, classes, descriptors). Here the objects alive
    at start are frozen (``gc.freeze``: never scanned, never freed) and the youngest
    generation is collected every 10,000 net allocations; cycles are still found and freed,
    only later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# Stop signals that came before the event loop could take them (see ``keep_stop_signals``).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_asked_to_stop: list[int] = []


def keep_stop_signals() -> None:
    """From here on a SIGTERM or SIGINT before the server serves is kept, not fatal: the
    start is abandoned as soon as the event loop runs (``run_async``) and the process exits
    with status 0, as a stop while serving does. Called first thing by each service."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, lambda signum, _frame: _asked_to_stop.append(signum))


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Runs the service's main coroutine, on uvloop when it is installed (Windows has none),
    with the garbage collector set by ``tune_gc``. Until the server takes over the stop
    signals, one cancels the start (``keep_stop_signals``): there is nothing to drain yet."""
    keep_stop_signals()
    tune_gc()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_stoppable_start(main))
    else:
        uvloop.run(_stoppable_start(main))


async def _stoppable_start(main: Coroutine[Any, Any, None]) -> None:
    start = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:  # replaced by the server's own once it serves
        loop.add_signal_handler(signum, start.cancel)
    if _asked_to_stop:
        start.cancel()
    try:
        await start
    except asyncio.CancelledError:
        logging.getLogger(__name__).info("stopped before serving")


def _optional_flag(
    parser: argparse._ActionsContainer, flag: str, env: str, help: str, metavar: str = "FILE"
) -> None:
    parser.add_argument(
        flag,
        default=os.environ.get(env, ""),
        metavar=metavar,
        help=f"{help} (${env}; default none)",
    )


def add_security_flags(
    parser: argparse.ArgumentParser, *, reservation: bool = False, accounts_client: bool = False
) -> None:
    """TLS, mutual TLS and bearer tokens; all off unless given.

    ``reservation``: the service serves ReservationService (``--reservation-callers``).
    ``accounts_client``: the service calls the account service (``--accounts-…``).
    """
    group = parser.add_argument_group("security (off unless given)")
    _optional_flag(
        group, "--tls-cert", "BANK_TLS_CERT", "serve TLS with this PEM certificate chain"
    )
    _optional_flag(group, "--tls-key", "BANK_TLS_KEY", "PEM private key of --tls-cert")
    _optional_flag(
        group,
        "--tls-client-ca",
        "BANK_TLS_CLIENT_CA",
        "mutual TLS: require client certificates signed by this PEM CA",
    )
    _optional_flag(
        group,
        "--auth-tokens",
        "BANK_AUTH_TOKENS",
        "turn authentication on: bearer tokens from this file of '<name> sha256:<hex>' lines",
    )
    _optional_flag(
        group,
        "--health-port",
        "BANK_HEALTH_PORT",
        "also answer health checks alone, in plaintext, on [HOST:]PORT (a bare port:"
        " --listen's host), for probes that cannot use TLS",
        metavar="[HOST:]PORT",
    )
    _optional_flag(
        group,
        "--page-token-key-file",
        "BANK_PAGE_TOKEN_KEY_FILE",
        "the secret that signs page tokens, shared by the replicas (else a built-in key)",
    )
    if reservation:
        env_flag(
            group,
            "--reservation-callers",
            "BANK_RESERVATION_CALLERS",
            auth.DEFAULT_RESERVATION_CALLERS,
            "who may call ReservationService: comma-separated token:NAME (needs"
            " --auth-tokens), CN=NAME, SAN=NAME (need --tls-client-ca)",
        )
    if accounts_client:
        _optional_flag(
            group,
            "--accounts-ca",
            "BANK_ACCOUNTS_CA",
            "TLS to the account service, trusting this PEM CA ('system': the system's roots)",
        )
        _optional_flag(
            group,
            "--accounts-client-cert",
            "BANK_ACCOUNTS_CLIENT_CERT",
            "mutual TLS: PEM client certificate to present to the account service",
        )
        _optional_flag(
            group,
            "--accounts-client-key",
            "BANK_ACCOUNTS_CLIENT_KEY",
            "PEM private key of --accounts-client-cert",
        )
        _optional_flag(
            group,
            "--accounts-server-name",
            "BANK_ACCOUNTS_SERVER_NAME",
            "name to expect in the account service's certificate, if not its address's host",
            metavar="NAME",
        )
        _optional_flag(
            group,
            "--accounts-token-file",
            "BANK_ACCOUNTS_TOKEN_FILE",
            "file holding the raw bearer token sent on every call to the account service",
        )


def configure_security(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Builds the security the flags describe and records it for the process
    (``grpc_common.tls.configure``); a setting that cannot be used ends the program."""
    try:
        server = server_security(args)
        accounts = accounts_security(args) if hasattr(args, "accounts_ca") else None
        if args.page_token_key_file:
            page_tokens.set_key(read_key(args.page_token_key_file))
        health = health_address(args.health_port, args.listen) if args.health_port else ""
    except tls.SecurityConfigError as exc:
        parser.error(str(exc))
    tls.configure(server, accounts, health)


def health_address(port: str, listen: str) -> str:
    """``--health-port`` as HOST:PORT: a bare port takes the host of ``--listen``."""
    _, sep, number = port.rpartition(":")
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise tls.SecurityConfigError(f"--health-port {port!r}: expected [HOST:]PORT")
    return port if sep else f"{listen.rpartition(':')[0]}:{number}"


def read_key(path: str) -> bytes:
    """The page-token key a file holds (surrounding whitespace ignored); the file must be
    its owner's alone."""
    tls.check_private(path, "page-token key file")
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise tls.SecurityConfigError(f"page-token key file {path}: cannot read") from exc
    if len(key) < 16:
        raise tls.SecurityConfigError(f"page-token key file {path}: under 16 bytes")
    return key


def server_security(args: argparse.Namespace) -> tls.ServerSecurity | None:
    """``ServerSecurity`` from the server flags; None when they are all off.

    ``--reservation-callers``, when given, is always enforced: by tokens, by verified client
    certificates, or both; a setting that could not enforce it stops the start.
    """
    log = logging.getLogger("grpc_common.security")
    cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
    if bool(cert) != bool(key):
        raise tls.SecurityConfigError("--tls-cert and --tls-key go together")
    if client_ca and not cert:
        raise tls.SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    serves_reservations = hasattr(args, "reservation_callers")
    callers_spec = getattr(args, "reservation_callers", auth.DEFAULT_RESERVATION_CALLERS)
    callers = auth.Callers.parse(callers_spec)
    named = serves_reservations and callers_spec.strip() != auth.DEFAULT_RESERVATION_CALLERS
    if named and not args.auth_tokens:
        if callers.token_names:
            raise tls.SecurityConfigError(
                "--reservation-callers names tokens (token:NAME): it needs --auth-tokens"
            )
        if not client_ca:
            raise tls.SecurityConfigError(
                "--reservation-callers names certificates: it needs --tls-client-ca (mutual"
                " TLS) or --auth-tokens, else ReservationService would be open to anyone"
            )
    if not (cert or args.auth_tokens):
        return None
    credentials, parts = None, ["plaintext"]
    if cert:
        credentials = tls.server_credentials(cert, key, client_ca or None)
        tls.check_private(key, "TLS key")
        parts = ["mutual TLS" if client_ca else "TLS"]
    interceptors: list[auth.BearerAuth] = []
    if args.auth_tokens:
        tls.check_private(args.auth_tokens, "token file")
        tokens = auth.TokenTable.load(args.auth_tokens)
        if not tokens.entries:
            log.warning("token file %s holds no tokens: calls need a certificate", args.auth_tokens)
        if callers.by_certificate and not client_ca:
            log.warning(
                "--reservation-callers names certificates, but without --tls-client-ca"
                " no client certificate is verified"
            )
        if serves_reservations:
            for name in sorted(callers.token_names - tokens.names):
                log.warning("--reservation-callers token:%s: no such name in the token file", name)
        interceptors.append(
            auth.BearerAuth(
                tokens, callers, client_certificates=bool(client_ca), path=args.auth_tokens
            )
        )
        parts.append(f"bearer tokens ({len(tokens.entries)})")
        if serves_reservations:
            parts.append(f"ReservationService callers {callers}")
    elif named:
        # Certificates alone: ReservationService answers only the certificates named.
        interceptors.append(auth.BearerAuth(None, callers, client_certificates=True))
        parts.append(f"ReservationService callers {callers} (no bearer tokens)")
    return tls.ServerSecurity(credentials, interceptors, ", ".join(parts))


def accounts_security(args: argparse.Namespace) -> tls.ChannelSecurity | None:
    """``ChannelSecurity`` for the channel to the account service; None when all off."""
    ca, cert, key = args.accounts_ca, args.accounts_client_cert, args.accounts_client_key
    server_name, token_file = args.accounts_server_name, args.accounts_token_file
    if not (ca or cert or key or server_name or token_file):
        return None
    if bool(cert) != bool(key):
        raise tls.SecurityConfigError(
            "--accounts-client-cert and --accounts-client-key go together"
        )
    secure = bool(ca or cert)
    if server_name and not secure:
        raise tls.SecurityConfigError("--accounts-server-name needs --accounts-ca")
    credentials, parts = None, ["plaintext"]
    options: list[tuple[str, object]] = []
    if secure:
        roots = None if ca == "system" else ca or None
        if key:
            tls.check_private(key, "TLS client key")
        credentials = tls.channel_credentials(roots, cert or None, key or None)
        parts = ["mutual TLS" if cert else "TLS"]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
    metadata: tuple[tuple[str, str], ...] = ()
    if token_file:
        tls.check_private(token_file, "token file")
        metadata = auth.bearer_metadata(auth.read_token(token_file))
        parts.append("bearer token")
    return tls.ChannelSecurity(credentials, options, metadata, ", ".join(parts))
