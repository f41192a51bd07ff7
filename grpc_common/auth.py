"""Bearer-token authentication and the ReservationService's authorization, as an interceptor.

A caller sends ``authorization: Bearer <token>`` in its metadata. The server knows tokens
only by their SHA-256 hashes, from a token file of lines ``<name> sha256:<64 hex digits>``
(blank lines and ``#`` comments ignored); a token that hashes to a line's value is that
line's *name*. Tokens are random (``python -m grpc_common.auth token`` makes one), so a
fast hash is enough: a slow, salted hash protects guessable passwords, and would cost every
call. Hashes are compared with ``hmac.compare_digest``, against every line, always.

``BearerAuth`` guards the methods under ``/bank.``:

- no token, or one that is malformed or unknown: ``UNAUTHENTICATED``;
- ``bank.v1.ReservationService`` answers only the callers its policy names
  (``Callers``): a token name (``token:transfer-service``) or, over mutual TLS, a client
  certificate's subject common name or subject alternative name (``CN=transfer-service``,
  ``SAN=transfer.bank.internal``); anyone else gets ``PERMISSION_DENIED``. A caller named
  by its certificate needs no token.

Refusals are decided before the servicer runs, so a refused call stores nothing; a call
refused on its token is not even decoded. Health and reflection are not guarded: probes
and ``grpcurl list`` work without credentials, and they reveal nothing about accounts.

No token, hash or header value ever appears in a log line or an error message.

    python -m grpc_common.auth hash NAME < token-file    # prints NAME sha256:<hex>
    python -m grpc_common.auth token                     # prints a new random token
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import inspect
import logging
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from grpc_common import scopes as scopes_module
from grpc_common.caller import Caller, set_current
from grpc_common.errors import rich_status
from grpc_common.tls import SecurityConfigError

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
SCHEME = "bearer"
HASH_PREFIX = "sha256:"
BANK_METHODS = "/bank."
RESERVATION_METHODS = "/bank.v1.ReservationService/"
DEFAULT_RESERVATION_CALLERS = "token:transfer-service"
SHORT_TOKEN = 32

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: a valid metadata value
_OWNER = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of the token's UTF-8 bytes: the form the token file stores."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def token_line(name: str, token: str) -> str:
    """The token file's line for ``name`` holding ``token``."""
    if not _NAME.fullmatch(name):
        raise SecurityConfigError(f"token name {name!r}: letters, digits and ._@- only")
    check_token(token, "token")
    return f"{name} {hash_token(token)}"


def check_token(token: str, source: str) -> str:
    if not token:
        raise SecurityConfigError(f"{source}: empty token")
    if not _TOKEN.fullmatch(token):
        raise SecurityConfigError(f"{source}: a token is printable ASCII without spaces")
    return token


def read_token(path: str) -> str:
    """The raw token held by a file (surrounding whitespace ignored), for a client to send."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not ASCII"
        raise SecurityConfigError(f"token file {path}: cannot read ({why})") from None
    return check_token(text.strip(), f"token file {path}")


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION, f"Bearer {token}"),)


@dataclass(frozen=True, slots=True)
class Token:
    """One line of the token file: a name, its token's digest, its scopes, its owner."""

    name: str
    digest: bytes
    scopes: frozenset[str] = scopes_module.DEFAULT_SCOPES
    owner: str = ""

    @property
    def caller(self) -> Caller:
        return Caller(self.name, self.scopes, self.owner)


@dataclass(frozen=True)
class TokenTable:
    """Token names, the SHA-256 digests of their tokens, their scopes and owners."""

    entries: tuple[Token, ...]

    @classmethod
    def parse(cls, text: str, source: str = "token file") -> TokenTable:
        entries: list[Token] = []
        names: set[str] = set()
        digests: set[bytes] = set()
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            # The message never quotes the line: a raw token pasted by mistake stays unseen.
            parts = line.split()
            where = f"{source} line {number}"
            if not 2 <= len(parts) <= 4:
                raise SecurityConfigError(
                    f"{where}: expected '<name> sha256:<64 hex digits>"
                    " [scopes=S1,S2,...] [owner=OWNER]'"
                )
            name, value, *options = parts
            if not _NAME.fullmatch(name):
                raise SecurityConfigError(f"{where}: a name is letters, digits and ._@- only")
            match = _HASH.fullmatch(value)
            if match is None:
                raise SecurityConfigError(f"{where}: expected 'sha256:<64 hex digits>' after name")
            digest = bytes.fromhex(match.group(1))
            if name in names:
                raise SecurityConfigError(f"{where}: name {name} again")
            if digest in digests:
                raise SecurityConfigError(f"{where}: the same token as an earlier line")
            scopes, owner = _options(options, where)
            names.add(name)
            digests.add(digest)
            entries.append(Token(name, digest, scopes, owner))
        return cls(tuple(entries))

    @classmethod
    def load(cls, path: str) -> TokenTable:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise SecurityConfigError(f"token file {path}: cannot read ({why})") from None
        return cls.parse(text, f"token file {path}")

    @property
    def names(self) -> frozenset[str]:
        return frozenset(entry.name for entry in self.entries)

    def lookup(self, token: str) -> Token | None:
        """The entry of ``token``, or None. Compares against every entry in constant time."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found

    def verify(self, token: str) -> str | None:
        """The name of ``token``, or None."""
        entry = self.lookup(token)
        return entry.name if entry is not None else None


def _options(options: list[str], where: str) -> tuple[frozenset[str], str]:
    """The ``scopes=`` and ``owner=`` of a token line (each at most once)."""
    scopes, owner = None, None
    for option in options:
        key, sep, value = option.partition("=")
        if key == "scopes" and sep and scopes is None:
            try:
                scopes = scopes_module.parse_scopes(value)
            except ValueError as exc:
                raise SecurityConfigError(f"{where}: {exc}") from None
        elif key == "owner" and sep and owner is None:
            if not _OWNER.fullmatch(value):
                raise SecurityConfigError(f"{where}: owner= is 1 to 200 printable characters")
            owner = value
        else:
            raise SecurityConfigError(f"{where}: expected scopes=S1,S2,... or owner=OWNER")
    return (scopes_module.DEFAULT_SCOPES if scopes is None else scopes), owner or ""


@dataclass(frozen=True)
class Callers:
    """Who may call the ReservationService: token names, certificate CNs and SANs."""

    token_names: frozenset[str] = frozenset()
    common_names: frozenset[str] = frozenset()
    alt_names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, spec: str) -> Callers:
        """Comma-separated ``token:NAME``, ``CN=NAME`` and ``SAN=NAME`` (kinds in any case)."""
        tokens: set[str] = set()
        cns: set[str] = set()
        sans: set[str] = set()
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                continue
            kind, sep, value = _split_selector(item)
            value = value.strip()
            if not sep or not value:
                raise SecurityConfigError(
                    f"reservation caller {item!r}: expected token:NAME, CN=NAME or SAN=NAME"
                )
            {"token": tokens, "cn": cns, "san": sans}[kind].add(value)
        return cls(frozenset(tokens), frozenset(cns), frozenset(sans))

    @property
    def by_certificate(self) -> bool:
        return bool(self.common_names or self.alt_names)

    def certificate_allowed(self, auth_context: Mapping[str, Iterable[bytes]]) -> bool:
        """Whether a verified client certificate names an allowed caller."""
        for key, wanted in (
            ("x509_common_name", self.common_names),
            ("x509_subject_alternative_name", self.alt_names),
        ):
            if wanted and any(_text(v) in wanted for v in auth_context.get(key, ())):
                return True
        return False

    def __str__(self) -> str:
        items = [f"token:{n}" for n in sorted(self.token_names)]
        items += [f"CN={n}" for n in sorted(self.common_names)]
        items += [f"SAN={n}" for n in sorted(self.alt_names)]
        return ",".join(items) or "nobody"


def _split_selector(item: str) -> tuple[str, str, str]:
    for kind, sep in (("token", ":"), ("cn", "="), ("san", "=")):
        head, found, tail = item.partition(sep)
        if found and head.strip().lower() == kind:
            return kind, found, tail
    return "", "", ""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _RefusalLog:
    """At most one log line per second and reason; the rest are counted, not written."""

    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def note(self, reason: str, method: str, peer: str, why: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -self._interval) < self._interval:
            self._skipped[reason] = self._skipped.get(reason, 0) + 1
            return
        self._last[reason] = now
        skipped = self._skipped.pop(reason, 0)
        more = f" (and {skipped} more since the last report)" if skipped else ""
        log.info("%s: %s from %s: %s%s", reason, method, peer, why, more)


# The field of an RpcMethodHandler holding the behaviour, by (request, response) streaming.
_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class BearerAuth(grpc.aio.ServerInterceptor):
    """Authenticates calls to bank methods by bearer token and authorizes them by scope.

    ``tokens`` None: no bearer tokens (certificate rules only): ``ReservationService``
    still answers only the certificates ``callers`` names, the other services are open.
    ``client_certificates``: the server verifies client certificates (mutual TLS), so
    certificate names in ``callers`` can match.
    """

    def __init__(
        self,
        tokens: TokenTable | None,
        callers: Callers,
        *,
        client_certificates: bool = False,
        prefix: str = BANK_METHODS,
        restricted: str = RESERVATION_METHODS,
        path: str = "",
    ) -> None:
        self._tokens = tokens
        self._callers = callers
        self._by_certificate = client_certificates and callers.by_certificate
        self._prefix = prefix
        self._restricted = restricted
        self.path = path
        self._refusals = _RefusalLog()
        # Method name -> (handler as found, the same behind a certificate check).
        self._checked: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        # Token name -> the tasks of its streams in flight, cancelled when the token goes.
        self._streams: dict[str, set[asyncio.Task[Any]]] = {}
        # Those tasks, once cancelled for a revoked token: they end their call UNAUTHENTICATED.
        self._revoked: set[asyncio.Task[Any]] = set()

    @property
    def tokens(self) -> TokenTable | None:
        return self._tokens

    def replace_tokens(self, tokens: TokenTable) -> list[str]:
        """Takes a new token table; ends the streams of tokens it no longer holds.

        Returns the names whose streams were ended."""
        kept = {(entry.name, entry.digest) for entry in tokens.entries}
        old = self._tokens.entries if self._tokens is not None else ()
        gone = sorted({e.name for e in old if (e.name, e.digest) not in kept})
        self._tokens = tokens
        for name in gone:
            for task in self._streams.pop(name, set()):
                self._revoked.add(task)
                task.cancel()
        return gone

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        scope = scopes_module.scope_of(method)
        if scope is None:
            # Fail closed: a method nobody gave a scope is nobody's.
            return self._refusal(
                handler, method, grpc.StatusCode.PERMISSION_DENIED, _denied(method), "no scope"
            )
        token, problem = self._authenticate(handler_call_details.invocation_metadata)
        if problem is not None:
            return self._refusal(handler, method, grpc.StatusCode.UNAUTHENTICATED, problem)
        if method.startswith(self._restricted):
            return self._reservation(handler, method, token)
        if self._tokens is None:
            return handler
        if token is None:
            return self._refusal(
                handler, method, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"
            )
        if scope not in token.scopes:
            return self._refusal(
                handler,
                method,
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token has no {scope} scope",
                f"token {token.name}",
            )
        return self._admitted(handler, token)

    def _reservation(
        self, handler: grpc.RpcMethodHandler, method: str, token: Token | None
    ) -> grpc.RpcMethodHandler:
        if token is not None and (
            scopes_module.RESERVATION in token.scopes or token.name in self._callers.token_names
        ):
            return self._admitted(handler, token)
        if self._by_certificate:
            set_current(None)
            return self._certificate_checked(handler, method)
        if token is None and self._tokens is not None:
            return self._refusal(
                handler, method, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"
            )
        who = f"token {token.name}" if token is not None else "no certificate rule"
        return self._refusal(
            handler, method, grpc.StatusCode.PERMISSION_DENIED, _denied(method), who
        )

    def _admitted(self, handler: grpc.RpcMethodHandler, token: Token) -> grpc.RpcMethodHandler:
        """The handler, run as ``token``'s caller; a stream is ended if the token is revoked."""
        set_current(token.caller)
        if not handler.response_streaming:
            return handler
        kind, _ = _KINDS[handler.request_streaming, handler.response_streaming]
        behaviour = getattr(handler, kind)
        if not inspect.isasyncgenfunction(behaviour):
            return handler
        streams, revoked = self._streams, self._revoked

        async def tracked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            task = asyncio.current_task()
            assert task is not None
            streams.setdefault(token.name, set()).add(task)
            try:
                async with contextlib.aclosing(behaviour(request, context)) as responses:
                    async for response in responses:
                        yield response
            except asyncio.CancelledError:
                if task not in revoked:
                    raise
                # A cancelled call sends no status: the caller is told why instead.
                revoked.discard(task)
                task.uncancel()
                status = rich_status(
                    grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", "bearer token revoked"
                )
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                revoked.discard(task)
                tasks = streams.get(token.name)
                if tasks is not None:
                    tasks.discard(task)
                    if not tasks:
                        streams.pop(token.name, None)

        return handler._replace(**{kind: tracked})

    def _authenticate(self, metadata: Any) -> tuple[Token | None, str | None]:
        """(token, None), (None, None) without a token, (None, problem) for a bad one."""
        if self._tokens is None:
            return None, None
        values = [value for key, value in metadata or () if key == AUTHORIZATION]
        if not values:
            return None, None
        if len(values) > 1:
            return None, "more than one authorization header"
        value = values[0]
        if isinstance(value, bytes):
            return None, "authorization is not 'Bearer <token>'"
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != SCHEME or not token:
            return None, "authorization is not 'Bearer <token>'"
        entry = self._tokens.lookup(token)
        if entry is None:
            return None, "unknown bearer token"
        return entry, None

    def _refusal(
        self,
        handler: grpc.RpcMethodHandler,
        method: str,
        code: grpc.StatusCode,
        message: str,
        who: str = "",
    ) -> grpc.RpcMethodHandler:
        """A handler of the method's kind that refuses without reading the request.

        It has no request deserializer, so the request is never decoded (and the
        server's decode guard leaves it alone).
        """
        status = rich_status(code, code.name, message)
        why = f"{message} ({who})" if who else message

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            # The abort's exception keeps this frame in a cycle until a collection: without
            # the request in it, a flood of large refused bodies holds no memory.
            del request
            self._refusals.note(code.name, method, context.peer(), why)
            await context.abort(status.code, status.details, status.trailing_metadata)

        _, make = _KINDS[handler.request_streaming, handler.response_streaming]
        return make(refuse)

    def _certificate_checked(self, handler: grpc.RpcMethodHandler, method: str):
        known = self._checked.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        checked = self._check_certificate(handler, method)
        self._checked[method] = (handler, checked)
        return checked

    def _check_certificate(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        kind, _ = _KINDS[handler.request_streaming, handler.response_streaming]
        behaviour = getattr(handler, kind)
        callers = self._callers
        status = rich_status(
            grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", _denied(method)
        )

        async def refuse(context: grpc.aio.ServicerContext) -> None:
            auth = context.auth_context()
            names = [_text(v) for v in auth.get("x509_common_name", ())]
            who = f"certificate CN={','.join(names) or '-'}"
            self._refusals.note("PERMISSION_DENIED", method, context.peer(), who)
            await context.abort(status.code, status.details, status.trailing_metadata)

        if inspect.isasyncgenfunction(behaviour):

            async def streamed(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if not callers.certificate_allowed(context.auth_context()):
                    await refuse(context)
                async with contextlib.aclosing(behaviour(request, context)) as responses:
                    async for response in responses:
                        yield response

            return handler._replace(**{kind: streamed})
        if inspect.iscoroutinefunction(behaviour):

            async def awaited(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if not callers.certificate_allowed(context.auth_context()):
                    await refuse(context)
                return await behaviour(request, context)

            return handler._replace(**{kind: awaited})
        # A synchronous behaviour cannot be checked here: fail closed.
        return self._refusal(
            handler, method, grpc.StatusCode.PERMISSION_DENIED, _denied(method), "unchecked"
        )


def _denied(method: str) -> str:
    service = method.strip("/").split("/", 1)[0]
    return f"this caller may not call {service}"


def _private_stdout() -> None:
    """Output redirected to a file (``> tokens``) makes that file the owner's alone: the
    services refuse token files that others may read."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = sys.stdout.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grpc_common.auth", description="Bearer tokens for the bank's services."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    hasher = commands.add_parser(
        "hash", help="read a token on stdin, print its token-file line: NAME sha256:<hex>"
    )
    hasher.add_argument("name", nargs="?", default="client", help="the token's name")
    commands.add_parser("token", help="print a new random token (256 bits, URL-safe)")
    args = parser.parse_args(argv)
    _private_stdout()
    if args.command == "token":
        print(secrets.token_urlsafe(32))
        return 0
    token = sys.stdin.read().strip()
    try:
        line = token_line(args.name, token)
    except SecurityConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(token) < SHORT_TOKEN:
        print(
            f"warning: a token of {len(token)} characters is short; use"
            " `python -m grpc_common.auth token` for a random one",
            file=sys.stderr,
        )
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
