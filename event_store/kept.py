"""The writer's connection kept between appends by the SQL backends (``KeptConnection``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["KeptConnection"]


class KeptConnection:
    """One pooled connection kept between appends by the thread that appends (the store's
    writer), which saves the pool's checkout and checkin (and its reset) per append.

    A thread appends within ``turn``: if no other thread is appending on the kept
    connection it may ``take`` it (``None`` when there is none yet) and ``give_back`` the
    one it used to be kept for the next append; a thread that finds another appending uses
    a connection of the pool's own. A connection that failed is not given back but
    invalidated, so the next append checks out a fresh one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pooled: Any = None
        self._closed = False

    @property
    def connection(self) -> Any:
        """The kept connection, or ``None`` (to look at; it stays kept)."""
        return self._pooled

    @contextlib.contextmanager
    def turn(self) -> Iterator[bool]:
        """Whether this thread may take and keep the connection until the block ends."""
        if not self._lock.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            self._lock.release()

    def take(self) -> Any:
        """The kept connection (no longer kept), or ``None``; only on a ``turn`` that said
        True."""
        pooled, self._pooled = self._pooled, None
        return pooled

    def give_back(self, pooled: Any, keep: bool) -> None:
        """Keeps ``pooled`` for the next append (``keep``: on a ``turn`` that said True),
        or returns it to the pool."""
        if keep and not self._closed:
            self._pooled = pooled
        else:
            pooled.close()

    def close(self) -> None:
        """Returns the kept connection to the pool and keeps none from now on."""
        with self._lock:
            self._closed = True
            if self._pooled is not None:
                self._pooled.close()
                self._pooled = None
