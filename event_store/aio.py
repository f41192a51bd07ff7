"""``AsyncEventStore``: an asyncio front for a synchronous ``EventStore``, with group commit.

Why group commit: a durable commit costs one fsync (SQLite ``synchronous=FULL``, Postgres
``synchronous_commit=on``), and that fsync, not the inserts, bounds how many commits a
second a disk can do. Committing each append on its own caps throughput at the disk's
fsync rate. Instead, ``append()`` queues its request, and a writer task takes everything
pending (up to ``max_batch``) and writes it with one ``append_batch``: one transaction,
one fsync, for every caller that arrived while the previous batch was committing. Under
load batches grow by themselves; when idle a lone append is written immediately, so
there is no added latency to trade for it.

A writer takes its next batch on the loop, after answering the callers of the last one,
and not at once: it first lets the loop run a few rounds (``linger``, 4 by default). The
callers it has just answered are mostly protocol steps whose next step is another append
(a reserve stored, the account service starts the credit that follows; a sequence
answered, the transfer service records it); a few rounds is what those take to queue their
appends. Taken at once, the next batch would hold only what arrived during the commit, and
each follow-up would wait a whole extra commit. With the rounds, on the benchmark machine,
the hot pair at 100 in flight went from 1,843 to 2,039 transfers/s on SQLite (+11 %; +5 %,
and uniform +9 %, when measured again) and from 1,416 to 1,596 on Postgres (means of
alternating runs on the same services); a lone append waits only for the rounds of an idle
loop, a few microseconds.

Writer threads that took their next batch themselves, straight after each commit, were
tried: on Postgres the hot-pair rate at 100 in flight fell by 10-30 % (three alternating
pairs of runs on the benchmark machine) and SQLite gained nothing measurable, so this
simpler arrangement stays.

``append_batch()`` appends to several streams all or nothing, as the port's does: its
requests go into a batch together and stand or fall together. If one request of a batch
conflicts, the batch is written again caller by caller, so only the callers at fault fail.

Reads go straight to a thread pool; only appends are batched. Snapshots are saved by a
thread of their own, one at a time: off the group commit (a large snapshot never delays
the appends queued behind it in a batch) and off the read pool (a slow save never holds
up the reads that load accounts).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .port import (
    AppendRequest,
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    NewEvent,
    RecordedEvent,
    Snapshot,
    StoreUnavailable,
    check_append,
    check_batch,
)

__all__ = ["AsyncEventStore", "default_writers"]

T = TypeVar("T")

# One caller's requests (one for append(), several for append_batch()) and its future.
_Pending = tuple[tuple[AppendRequest, ...], "asyncio.Future[list[list[RecordedEvent]]]"]


def default_writers(store: EventStore) -> int:
    """Writer tasks that suit the backend: 1 for every backend today.

    SQLite has a single writer per file, so more writer tasks only queue on its lock.
    Postgres appends also commit one at a time (see ``postgres``); with several writers
    each batch is smaller while they still queue on that lock, so one writer with large
    batches does more per second and costs less CPU (measured: 526 → 674 transfers/s on
    the seed experiment at 100 in flight, with a third less CPU per transfer).
    """
    return 1


class AsyncEventStore:
    """Runs a synchronous ``EventStore`` for asyncio code; appends are group-committed.

    ``writers`` writer tasks each own a one-thread executor, so each has at most one
    batch in flight; ``readers`` threads serve reads. Pass ``default_writers(store)`` to
    pick the writer count by backend. ``linger``: loop rounds a writer lets pass before it
    takes a batch, whether it has just answered one or was woken from idle (see the module).
    Use ``start()``/``close()`` or ``async with``.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        writers: int = 1,
        readers: int = 4,
        max_batch: int = 256,
        linger: int = 4,
    ) -> None:
        if writers < 1 or readers < 1 or max_batch < 1:
            raise ValueError("writers, readers and max_batch must be >= 1")
        if linger < 0:
            raise ValueError("linger must be >= 0")
        self.store = store
        self.max_batch = max_batch
        self.linger = linger
        self._writers = [_Thread(f"event-store-writer-{i}") for i in range(writers)]
        self._readers = ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="event-store-reader"
        )
        self._snapshots = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="event-store-snapshots"
        )
        self._pending: deque[_Pending] = deque()
        # Streams in a batch being written: their next requests wait for the next batch,
        # so requests of one stream are written in arrival order and never race each other.
        self._busy_streams: set[str] = set()
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed: asyncio.Future[None] | None = None

    async def __aenter__(self) -> AsyncEventStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the writer tasks on the running loop."""
        if self._tasks or self._closing:
            raise RuntimeError("AsyncEventStore already started" if self._tasks else "closed")
        self._wakeup = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._writer(thread), name=f"event-store-writer-{i}")
            for i, thread in enumerate(self._writers)
        ]

    async def close(self) -> None:
        """Write every pending append, stop the writers, close the store and the threads."""
        if self._closed is None:
            self._closing = True  # from now on append() refuses
            self._closed = asyncio.ensure_future(self._close())
        # Shielded: a caller giving up on close() must not leave the store half closed.
        await asyncio.shield(self._closed)

    async def _close(self) -> None:
        if self._tasks:
            assert self._wakeup is not None
            self._wakeup.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # Reads may still be running in the pool; wait for them off the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        for thread in self._writers:
            thread.shutdown()
        self._readers.shutdown(wait=True)
        self._snapshots.shutdown(wait=True)
        self.store.close()

    # --- appends -------------------------------------------------------------------------

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        # Rejected here so that one malformed request never reaches (and fails) a batch.
        check_append(stream_id, expected_version, events)
        (recorded,) = await self._queue((AppendRequest(stream_id, expected_version, events),))
        return recorded

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]:
        """Appends to several streams in one transaction, all or nothing (see the module)."""
        if not requests:
            return []
        check_batch(requests)
        return await self._queue(tuple(requests))

    def _queue(
        self, requests: tuple[AppendRequest, ...]
    ) -> asyncio.Future[list[list[RecordedEvent]]]:
        if self._closing:
            raise EventStoreError("AsyncEventStore is closed")
        if not self._tasks:
            raise RuntimeError("AsyncEventStore.start() has not been called")
        assert self._wakeup is not None
        future: asyncio.Future[list[list[RecordedEvent]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append((requests, future))
        self._wakeup.set()
        return future

    def _take_batch(self) -> list[_Pending]:
        """Pending callers for one batch, at most one request per stream; the rest keep
        their place. ``max_batch`` counts requests; a caller's requests are never split."""
        batch: list[_Pending] = []
        streams: set[str] = set()
        kept: list[_Pending] = []
        size = 0
        while self._pending and size < self.max_batch:
            item = self._pending.popleft()
            requests, future = item
            if future.done():  # the caller was cancelled before its turn: skip it
                continue
            ids = [request.stream_id for request in requests]
            if any(i in streams or i in self._busy_streams for i in ids):
                kept.append(item)
                continue
            streams.update(ids)
            batch.append(item)
            size += len(requests)
        self._pending.extendleft(reversed(kept))
        self._busy_streams |= streams
        return batch

    async def _writer(self, thread: _Thread) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            for _ in range(self.linger):
                await asyncio.sleep(0)  # one round of the loop: see the module
            batch = self._take_batch()
            if not batch:
                if self._closing and not self._pending and not self._busy_streams:
                    wakeup.set()  # let the other writers see that the work is done
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            groups = [requests for requests, _ in batch]
            try:
                outcomes = await thread.call(self._write, groups)
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(
                            EventStoreError("append interrupted; it may or may not be stored")
                        )
                raise
            except Exception as exc:  # every caller must hear back
                outcomes = _shared_error(exc, len(batch))
            finally:
                self._busy_streams.difference_update(
                    r.stream_id for requests in groups for r in requests
                )
                # Requests held back for these streams may go now; wake a writer for them.
                wakeup.set()
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # cancelled caller; its append may still have committed
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _write(
        self, groups: list[tuple[AppendRequest, ...]]
    ) -> list[list[list[RecordedEvent]] | BaseException]:
        """Runs in the writer's thread: one batch of every caller's requests, or caller by
        caller to single out the losers. An outcome per caller."""
        try:
            recorded = self.store.append_batch([r for requests in groups for r in requests])
        except StoreUnavailable as exc:
            return _shared_error(exc, len(groups))
        except (ConcurrencyConflict, ValueError) as exc:
            if len(groups) == 1:
                return [exc]
        except Exception as exc:  # handed to the callers
            return _shared_error(exc, len(groups))
        else:
            outcomes: list[list[list[RecordedEvent]] | BaseException] = []
            start = 0
            for requests in groups:
                outcomes.append(recorded[start : start + len(requests)])
                start += len(requests)
            return outcomes
        # A conflict (or bad input) of one caller undid the whole batch: write each
        # caller's requests alone so only the callers at fault get the error.
        outcomes = []
        for requests in groups:
            try:
                outcomes.append(self.store.append_batch(requests))
            except Exception as exc:  # handed to that caller
                outcomes.append(exc)
        return outcomes

    # --- everything else -------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    async def migrate(self, owner: str | None = None) -> None:
        await self._run(self.store.migrate, owner)

    async def ping(self) -> None:
        await self._run(self.store.ping)

    async def read_stream(
        self, stream_id: str, after_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        return await self._run(self.store.read_stream, stream_id, after_version, limit)

    async def stream_version(self, stream_id: str) -> int:
        return await self._run(self.store.stream_version, stream_id)

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        return await self._run(self.store.read_all, after_position, limit)

    async def read_tag(
        self, tag: str, before_position: int | None = None, limit: int = 50
    ) -> list[RecordedEvent]:
        return await self._run(self.store.read_tag, tag, before_position, limit)

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        return await self._run(self.store.load_snapshot, stream_id)

    async def save_snapshot(self, stream_id: str, version: int, data: Mapping[str, Any]) -> None:
        """Saved (and encoded) in the snapshot thread; saves queue there one at a time."""
        if self._closing:
            raise EventStoreError("AsyncEventStore is closed")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._snapshots, functools.partial(self.store.save_snapshot, stream_id, version, data)
        )


class _Thread:
    """One thread that runs the calls handed to it in order, each answered on its loop.

    A writer's batches go through this rather than ``loop.run_in_executor``: with one
    append in flight at a time (the latency that every protocol step waits for), the
    executor's futures and callbacks cost about 0.1 ms per append on top of the call
    itself (measured on the benchmark machine: 114 µs against 34 µs for a bare hop).
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], /, *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return future

    def shutdown(self) -> None:
        """Finishes the calls already handed over, then ends the thread."""
        self._calls.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            loop, future, fn, args = item
            try:
                outcome, failed = fn(*args), False
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome, failed = exc, True
            try:
                loop.call_soon_threadsafe(_settle, future, outcome, failed)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _settle(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.done():  # the awaiting writer was cancelled
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _shared_error(exc: Exception, count: int) -> list[BaseException]:
    """One exception per caller, each caused by ``exc``.

    Re-raising one instance in many tasks would splice all their tracebacks together.
    """
    if count == 1:
        return [exc]
    errors: list[BaseException] = []
    for _ in range(count):
        try:
            clone = copy.copy(exc)
        except Exception:  # an exception type that cannot be copied
            errors.append(exc)
            continue
        clone.__cause__ = exc
        clone.__traceback__ = None
        errors.append(clone)
    return errors
