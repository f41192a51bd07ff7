"""The token file read again while serving: on SIGHUP, and when it changes on disk.

A line removed stops working for new calls at once and ends that token's streams in
flight; a file that no longer parses (or became readable by others) is logged and the
tokens already loaded are kept, so a half-written edit never locks everyone out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from grpc_common import tls
from grpc_common.auth import BearerAuth, TokenTable

log = logging.getLogger(__name__)

# How often the file's modification time is looked at.
CHECK_INTERVAL = 1.0


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def reload(auth: BearerAuth) -> bool:
    """Reads ``auth``'s token file again; False (tokens kept) when it cannot be used."""
    try:
        tls.check_private(auth.path, "token file")
        tokens = TokenTable.load(auth.path)
    except tls.SecurityConfigError as exc:
        log.error("token file not reloaded, the tokens loaded before stay: %s", exc)
        return False
    gone = auth.replace_tokens(tokens)
    log.info(
        "token file %s reloaded: %d tokens%s",
        auth.path,
        len(tokens.entries),
        f"; streams ended for {', '.join(gone)}" if gone else "",
    )
    return True


class TokenReloader:
    """Keeps one interceptor's tokens in step with its file while the server runs."""

    def __init__(self, auth: BearerAuth, interval: float = CHECK_INTERVAL) -> None:
        self._auth = auth
        self._interval = interval
        self._stamp = _stamp(auth.path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self._on_signal)
        self._task = asyncio.create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _on_signal(self) -> None:
        log.info("SIGHUP: reading the token file again")
        self._stamp = _stamp(self._auth.path)
        reload(self._auth)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            stamp = _stamp(self._auth.path)
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                reload(self._auth)
