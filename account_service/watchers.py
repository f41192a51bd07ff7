"""Watching accounts: one feed per watched account, shared by all its watchers.

A feed reads the account's new events from the store when a commit in this process says
so, or once a ``poll_interval`` for commits by other processes sharing the database: one
read per account however many watch it, not one per watcher. It keeps its latest events,
from which every watcher takes what it has not seen; a watcher that falls behind them
catches up from the store on its own. A caller (a token, else a connection) watches at
most ``max_per_caller`` streams at once; one more is ``TooManyWatchers``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from shared_kernel.errors import DomainError

PAGE = 500
# Events a feed keeps for its watchers, newest last.
KEPT = 1000
DEFAULT_MAX_PER_CALLER = 100


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


Read = Callable[[str, int, int], Awaitable[list]]


class TooManyWatchers(DomainError):
    """The caller already watches as many streams as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this caller already watches {limit} accounts", limit=str(limit))


@dataclass
class _Feed:
    version: int
    entries: list = field(default_factory=list)
    advanced: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: int = 0
    task: asyncio.Task[None] | None = None

    def advance(self, page: list) -> None:
        self.entries.extend(page)
        del self.entries[:-KEPT]
        self.version = page[-1].version
        woken, self.advanced = self.advanced, asyncio.Event()
        woken.set()


class Watchers:
    def __init__(
        self,
        read: Read,
        poll_interval: float = 1.0,
        max_per_caller: int = DEFAULT_MAX_PER_CALLER,
    ) -> None:
        self._read = read
        self._poll_interval = poll_interval
        self._max_per_caller = max_per_caller
        self._feeds: dict[str, _Feed] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._callers: dict[str, int] = {}
        self._draining = False

    def notify(self, account_id: str) -> None:
        """A commit in this process changed the account: its feed reads at once."""
        changed = self._changed.pop(account_id, None)
        if changed is not None:
            changed.set()

    def drain(self) -> None:
        """Ends every watch after what it has already read."""
        self._draining = True
        for feed in self._feeds.values():
            feed.advanced.set()

    async def watch(self, account_id: str, after: int, caller: str) -> AsyncIterator:
        """Events after version ``after``, then live ones, until the watcher stops."""
        if self._callers.get(caller, 0) >= self._max_per_caller:
            raise TooManyWatchers(self._max_per_caller)
        self._callers[caller] = self._callers.get(caller, 0) + 1
        try:
            async for entry in self._follow(account_id, after):
                yield entry
        finally:
            left = self._callers[caller] - 1
            if left:
                self._callers[caller] = left
            else:
                del self._callers[caller]

    async def _follow(self, account_id: str, last: int) -> AsyncIterator:
        while True:  # caught up from the store first
            page = await self._read(account_id, last, PAGE)
            for entry in page:
                yield entry
                last = entry.version
            if len(page) < PAGE:
                break
        feed = self._join(account_id, last)
        try:
            while not self._draining:
                advanced = feed.advanced
                kept = feed.entries
                if feed.version > last and (not kept or kept[0].version > last + 1):
                    # Behind what the feed keeps: the store has the rest.
                    page = await self._read(account_id, last, PAGE)
                    for entry in page:
                        yield entry
                        last = entry.version
                    if page:
                        continue
                newer = [entry for entry in kept if entry.version > last]
                for entry in newer:
                    yield entry
                    last = entry.version
                if not newer:
                    await advanced.wait()
        finally:
            self._leave(account_id, feed)

    def _join(self, account_id: str, version: int) -> _Feed:
        feed = self._feeds.get(account_id)
        if feed is None:
            feed = self._feeds[account_id] = _Feed(version)
            feed.task = asyncio.create_task(self._poll(account_id, feed))
        feed.watchers += 1
        return feed

    def _leave(self, account_id: str, feed: _Feed) -> None:
        feed.watchers -= 1
        if feed.watchers == 0 and self._feeds.get(account_id) is feed:
            del self._feeds[account_id]
            if feed.task is not None:
                feed.task.cancel()

    async def _poll(self, account_id: str, feed: _Feed) -> None:
        while True:
            # Taken before the read: a commit between the read and the wait still wakes it.
            changed = self._changed.setdefault(account_id, asyncio.Event())
            try:
                page = await self._read(account_id, feed.version, PAGE)
            except Exception:
                page = []  # the store is away: the next poll tries again
            if page:
                feed.advance(page)
            if len(page) < PAGE:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self._poll_interval)
