"""``AsyncEventStore``: group commit, error routing and shutdown, on every backend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from event_store import (
    AppendRequest,
    AsyncEventStore,
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    InMemoryEventStore,
    NewCheckpoint,
    NewEvent,
    PostgresEventStore,
    RecordedEvent,
    Snapshot,
    SqliteEventStore,
    StoreUnavailable,
)


class Recording:
    """Forwards to a store and records the size of every ``append_batch``."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner
        self.batches: list[list[str]] = []
        self.fail_with: Exception | None = None
        self.gate: threading.Event | None = None  # when set, append_batch waits for it
        self.entered = threading.Event()  # append_batch has been called

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]:
        self.batches.append([r.stream_id for r in requests])
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if self.fail_with is not None:
            raise self.fail_with
        return self.inner.append_batch(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[EventStore]:
    if request.param == "memory":
        store: EventStore = InMemoryEventStore()
    elif request.param == "sqlite":
        store = SqliteEventStore(sqlite_url)
    else:
        store = PostgresEventStore(request.getfixturevalue("postgres_url"))
    store.migrate()
    yield store
    store.close()  # usually closed already by AsyncEventStore.close(); closing twice is fine


@pytest.fixture
def recording(backend: EventStore) -> Recording:
    return Recording(backend)


@pytest.fixture
async def aio(recording: Recording) -> AsyncIterator[AsyncEventStore]:
    store = AsyncEventStore(recording)  # type: ignore[arg-type]
    await store.start()
    yield store
    await store.close()


def ev(**data: Any) -> list[NewEvent]:
    return [NewEvent("Happened", data)]


async def test_concurrent_appends_to_distinct_streams_succeed_in_batches(
    aio: AsyncEventStore, recording: Recording
) -> None:
    results = await asyncio.gather(*(aio.append(f"s{n}", 0, ev(n=n)) for n in range(200)))
    assert [[e.version for e in r] for r in results] == [[1]] * 200
    assert [r[0].data["n"] for r in results] == list(range(200))
    assert len(recording.batches) < 200
    assert sum(len(b) for b in recording.batches) == 200
    assert len(await aio.read_all(limit=1000)) == 200


async def test_conflicting_caller_gets_conflict_and_the_rest_of_its_batch_succeeds(
    aio: AsyncEventStore, recording: Recording
) -> None:
    await aio.append("taken", 0, ev())
    recording.batches.clear()
    outcomes = await asyncio.gather(
        aio.append("a", 0, ev()),
        aio.append("taken", 0, ev()),
        aio.append("b", 0, ev()),
        return_exceptions=True,
    )
    assert recording.batches[0] == ["a", "taken", "b"]
    assert isinstance(outcomes[1], ConcurrencyConflict)
    assert outcomes[1].stream_id == "taken"
    assert [e.stream_id for e in outcomes[0]] == ["a"]  # type: ignore[union-attr]
    assert [e.stream_id for e in outcomes[2]] == ["b"]  # type: ignore[union-attr]
    assert await aio.stream_version("taken") == 1


async def test_requests_for_one_stream_go_to_successive_batches_in_order(
    aio: AsyncEventStore, recording: Recording
) -> None:
    first, second, other = await asyncio.gather(
        aio.append("s", 0, ev(n=1)), aio.append("s", 1, ev(n=2)), aio.append("t", 0, ev())
    )
    assert [e.version for e in first + second + other] == [1, 2, 1]
    assert all(len(set(batch)) == len(batch) for batch in recording.batches)
    assert [e.data["n"] for e in await aio.read_stream("s")] == [1, 2]


async def test_append_batch_stores_its_streams_together_with_the_other_callers(
    aio: AsyncEventStore, recording: Recording
) -> None:
    await aio.append("x", 0, ev(n=0))
    recording.batches.clear()
    together, alone = await asyncio.gather(
        aio.append_batch(
            [AppendRequest("x", 1, ev(n=1) + ev(n=2)), AppendRequest("y", 0, ev(n=3))]
        ),
        aio.append("z", 0, ev(n=4)),
    )
    assert recording.batches == [["x", "y", "z"]]  # one transaction for both callers
    assert [[(e.stream_id, e.version, e.data["n"]) for e in r] for r in together] == [
        [("x", 2, 1), ("x", 3, 2)],
        [("y", 1, 3)],
    ]
    assert [(e.stream_id, e.version) for e in alone] == [("z", 1)]
    assert [e.data["n"] for e in await aio.read_stream("x")] == [0, 1, 2]


async def test_append_batch_with_one_stream_behind_stores_none_of_its_streams(
    aio: AsyncEventStore, recording: Recording
) -> None:
    """All or nothing for its caller; the other callers of the batch are stored."""
    await aio.append("taken", 0, ev())
    recording.batches.clear()
    outcomes = await asyncio.gather(
        aio.append("a", 0, ev()),
        aio.append_batch([AppendRequest("fresh", 0, ev()), AppendRequest("taken", 0, ev())]),
        aio.append("b", 0, ev()),
        return_exceptions=True,
    )
    assert recording.batches[0] == ["a", "fresh", "taken", "b"]
    assert isinstance(outcomes[1], ConcurrencyConflict)
    assert outcomes[1].stream_id == "taken"
    assert await aio.stream_version("fresh") == 0
    assert await aio.stream_version("taken") == 1
    assert await aio.stream_version("a") == await aio.stream_version("b") == 1


async def test_append_batch_waits_for_a_batch_holding_any_of_its_streams(
    aio: AsyncEventStore, recording: Recording
) -> None:
    first, (second, other) = await asyncio.gather(
        aio.append("s", 0, ev(n=1)),
        aio.append_batch([AppendRequest("s", 1, ev(n=2)), AppendRequest("t", 0, ev())]),
    )
    assert [e.version for e in first + second + other] == [1, 2, 1]
    assert recording.batches == [["s"], ["s", "t"]]


async def test_append_batch_refuses_a_stream_twice_before_queueing(
    aio: AsyncEventStore, recording: Recording
) -> None:
    with pytest.raises(ValueError, match="twice"):
        await aio.append_batch([AppendRequest("s", 0, ev()), AppendRequest("s", 1, ev())])
    assert await aio.append_batch([]) == []
    assert recording.batches == []


async def test_store_unavailable_reaches_every_caller_of_the_batch(
    aio: AsyncEventStore, recording: Recording
) -> None:
    recording.fail_with = StoreUnavailable("database is down")
    outcomes = await asyncio.gather(
        *(aio.append(f"s{n}", 0, ev()) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    recording.fail_with = None
    assert [e.version for e in await aio.append("s0", 0, ev())] == [1]


async def test_an_unexpected_error_fails_the_batch_and_the_writer_carries_on(
    aio: AsyncEventStore, recording: Recording
) -> None:
    recording.fail_with = RuntimeError("boom")
    outcomes = await asyncio.gather(
        *(aio.append(f"s{n}", 0, ev()) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    recording.fail_with = None
    assert [e.version for e in await aio.append("s0", 0, ev())] == [1]


async def test_invalid_append_fails_only_its_caller(aio: AsyncEventStore) -> None:
    outcomes = await asyncio.gather(
        aio.append("a", 0, ev()),
        aio.append("b", 0, []),
        aio.append("c", 0, ev(bad=object())),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], ValueError)
    assert isinstance(outcomes[2], ValueError)
    assert [e.stream_id for e in outcomes[0]] == ["a"]  # type: ignore[union-attr]


async def test_a_cancelled_caller_does_not_break_the_writer(recording: Recording) -> None:
    aio = AsyncEventStore(recording)
    await aio.start()
    recording.gate = threading.Event()
    blocked = asyncio.create_task(aio.append("first", 0, ev()))
    assert await asyncio.to_thread(recording.entered.wait, 10)  # "first" is being written
    cancelled = asyncio.create_task(aio.append("cancelled", 0, ev()))
    await asyncio.sleep(0)
    cancelled.cancel()
    recording.gate.set()
    await blocked
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert [e.version for e in await aio.append("after", 0, ev())] == [1]
    # Cancelled before its batch was taken, so it was never written.
    assert await aio.stream_version("cancelled") == 0
    await aio.close()


@pytest.mark.parametrize("linger", [4, 0])
async def test_appends_of_callers_just_answered_join_the_next_batch(
    recording: Recording, linger: int
) -> None:
    """A protocol step answered by one batch usually appends its follow-up at once: with
    ``linger`` rounds the writer waits for those before taking its next batch."""
    aio = AsyncEventStore(recording, linger=linger)
    await aio.start()

    async def chain(n: int) -> None:
        await aio.append(f"first-{n}", 0, ev())
        await aio.append(f"then-{n}", 0, ev())

    recording.gate = threading.Event()
    chains = [asyncio.create_task(chain(n)) for n in range(5)]
    assert await asyncio.to_thread(recording.entered.wait, 10)  # the first batch is written
    meanwhile = asyncio.create_task(aio.append("meanwhile", 0, ev()))
    await asyncio.sleep(0)  # queued while the first batch is being written
    recording.gate.set()
    await asyncio.gather(*chains, meanwhile)
    await aio.close()
    follow_ups = [f"then-{n}" for n in range(5)]
    assert recording.batches[0] == [f"first-{n}" for n in range(5)]
    if linger:
        assert recording.batches[1:] == [["meanwhile", *follow_ups]]
    else:  # taken at once: the follow-ups wait for one more commit
        assert recording.batches[1:] == [["meanwhile"], follow_ups]


def test_linger_must_not_be_negative(recording: Recording) -> None:
    with pytest.raises(ValueError, match="linger"):
        AsyncEventStore(recording, linger=-1)


async def test_close_writes_every_pending_append(recording: Recording) -> None:
    store = AsyncEventStore(recording, max_batch=7)
    await store.start()
    tasks = [asyncio.create_task(store.append(f"s{n}", 0, ev(n=n))) for n in range(50)]
    await asyncio.sleep(0)  # every task has queued its append
    await store.close()
    assert all(t.done() and not t.cancelled() for t in tasks)
    assert [t.result()[0].version for t in tasks] == [1] * 50
    assert sum(len(b) for b in recording.batches) == 50
    assert max(len(b) for b in recording.batches) <= 7


async def test_append_after_close_is_refused(aio: AsyncEventStore) -> None:
    await aio.close()
    with pytest.raises(EventStoreError):
        await aio.append("a", 0, ev())


async def test_append_before_start_is_refused(recording: Recording) -> None:
    store = AsyncEventStore(recording)
    with pytest.raises(RuntimeError, match="start"):
        await store.append("a", 0, ev())
    await store.close()


async def test_reads_pass_through(aio: AsyncEventStore) -> None:
    await aio.ping()
    await aio.migrate()
    recorded = await aio.append("a", 0, [NewEvent("Tagged", {"n": 1}, ("t",))])
    assert await aio.read_stream("a") == recorded
    assert await aio.read_stream("a", after_version=1) == []
    assert await aio.stream_version("a") == 1
    assert await aio.read_all() == recorded
    assert await aio.read_tag("t") == recorded


async def test_snapshots_pass_through(aio: AsyncEventStore, recording: Recording) -> None:
    assert await aio.load_snapshot("a") is None
    await aio.save_snapshot("a", 3, {"n": 3})
    await aio.save_snapshot("a", 2, {"n": 2})  # older: ignored
    assert await aio.load_snapshot("a") == Snapshot("a", 3, {"n": 3})
    with pytest.raises(ValueError):
        await aio.save_snapshot("a", 0, {})
    assert recording.batches == []  # not written through the group commit


async def test_snapshots_are_saved_off_the_group_commit(
    aio: AsyncEventStore, recording: Recording
) -> None:
    recording.gate = threading.Event()
    blocked = asyncio.create_task(aio.append("a", 0, ev()))
    assert await asyncio.to_thread(recording.entered.wait, 10)  # the writer is busy
    # Saved while the group commit is stuck: snapshots do not wait for it.
    await asyncio.gather(*(aio.save_snapshot(f"s{n}", 1, {"n": n}) for n in range(5)))
    assert [await aio.load_snapshot(f"s{n}") for n in range(5)] == [
        Snapshot(f"s{n}", 1, {"n": n}) for n in range(5)
    ]
    recording.gate.set()
    assert [e.version for e in await blocked] == [1]


async def test_checkpoints_pass_through(aio: AsyncEventStore, recording: Recording) -> None:
    recorded = await aio.append(
        "a", 0, [NewEvent("Happened", {}), NewEvent("Happened", {})], None, [NewCheckpoint(2, {})]
    )
    assert (await aio.load_checkpoint("a")).version == 2
    await aio.save_checkpoints("a", [NewCheckpoint(1, {"n": 1})])  # off the group commit
    assert len(recording.batches) == 1
    found = await aio.load_checkpoint("a", version=1)
    assert (found.data, found.recorded_at) == ({"n": 1}, recorded[0].recorded_at)
    assert (await aio.load_checkpoint("a", time=recorded[0].recorded_at)).version == 2
    with pytest.raises(ValueError):
        await aio.append("a", 2, [NewEvent("Happened", {})], None, [NewCheckpoint(9, {})])
    assert len(recording.batches) == 1  # refused before it reached a batch


async def test_save_snapshot_after_close_is_refused(aio: AsyncEventStore) -> None:
    await aio.close()
    with pytest.raises(EventStoreError):
        await aio.save_snapshot("a", 1, {})


async def test_small_batches_keep_each_stream_in_order(recording: Recording) -> None:
    async with AsyncEventStore(recording, max_batch=16) as store:

        async def extend(stream_id: str) -> None:
            for version in range(5):
                await store.append(stream_id, version, ev(v=version + 1))

        await asyncio.gather(*(extend(f"s{n}") for n in range(40)))
        for n in range(40):
            assert [e.data["v"] for e in await store.read_stream(f"s{n}")] == [1, 2, 3, 4, 5]


class Observer:
    """Keeps what an ``AsyncEventStore`` tells its observer."""

    def __init__(self) -> None:
        self.appends: list[tuple[list[str], str | None]] = []
        self.commits: list[int] = []
        self.threads: set[str] = set()

    def appended(
        self, requests: Sequence[AppendRequest], seconds: float, error: BaseException | None
    ) -> None:
        assert seconds >= 0
        failed = None if error is None else type(error).__name__
        self.appends.append(([r.stream_id for r in requests], failed))

    def committed(self, appends: int, seconds: float) -> None:
        assert seconds >= 0
        self.commits.append(appends)
        self.threads.add(threading.current_thread().name)


async def test_an_observer_hears_of_every_append_and_every_commit(recording: Recording) -> None:
    observer = Observer()
    async with AsyncEventStore(recording, observer=observer) as store:
        await store.append("a", 0, ev())
        with pytest.raises(ConcurrencyConflict):
            await store.append("a", 0, ev())
        with pytest.raises(ValueError):
            await store.append("b", 0, [])
        await store.append_batch([AppendRequest("c", 0, ev()), AppendRequest("d", 0, ev())])
    assert observer.appends == [
        (["a"], None),
        (["a"], "ConcurrencyConflict"),
        (["b"], "ValueError"),
        (["c", "d"], None),
    ]
    # The refused input never reached the store; the conflict did, and was a commit too.
    assert observer.commits == [1, 1, 2]
    assert observer.threads == {"event-store-writer"}


# --- append_decided ---------------------------------------------------------------------


def _decide_next(seen: list[list[RecordedEvent]], n: int):
    """A decision that appends one event after what it read, recording what it read."""

    def decide(events: list[RecordedEvent]) -> AppendRequest:
        seen.append(events)
        version = events[-1].version if events else 1
        return AppendRequest("s", version, ev(n=n))

    return decide


async def test_append_decided_decides_on_what_another_writer_appended(
    aio: AsyncEventStore, recording: Recording
) -> None:
    await aio.append("s", 0, ev(n=0))
    # Another process writes the stream behind this one's back.
    recording.inner.append("s", 1, ev(n=1) + ev(n=2))
    seen: list[list[RecordedEvent]] = []
    recorded = await aio.append_decided("s", 1, _decide_next(seen, 3))
    assert [[e.data["n"] for e in events] for events in seen] == [[1, 2]]
    assert [(e.version, e.data["n"]) for e in recorded] == [(4, 3)]
    assert [e.data["n"] for e in await aio.read_stream("s")] == [0, 1, 2, 3]


async def test_append_decided_of_nothing_stores_nothing(aio: AsyncEventStore) -> None:
    await aio.append("s", 0, ev())
    assert await aio.append_decided("s", 0, lambda events: None) == []
    assert await aio.stream_version("s") == 1


async def test_a_failed_decision_stores_nothing_and_the_writer_carries_on(
    aio: AsyncEventStore,
) -> None:
    def refuse(events: list[RecordedEvent]) -> AppendRequest:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        await aio.append_decided("s", 0, refuse)
    with pytest.raises(ValueError, match="not 's'"):
        await aio.append_decided("s", 0, lambda events: AppendRequest("t", 0, ev()))
    with pytest.raises(ConcurrencyConflict):
        await aio.append_decided("s", 0, lambda events: AppendRequest("s", 5, ev()))
    assert await aio.stream_version("s") == 0
    assert await aio.stream_version("t") == 0
    assert [e.version for e in await aio.append("s", 0, ev())] == [1]


async def test_append_decided_runs_between_batches_and_before_close(
    recording: Recording,
) -> None:
    aio = AsyncEventStore(recording)
    await aio.start()
    recording.gate = threading.Event()
    first = asyncio.create_task(aio.append("s", 0, ev(n=0)))
    assert await asyncio.to_thread(recording.entered.wait, 10)  # a batch is being written
    seen: list[list[RecordedEvent]] = []
    decided = asyncio.create_task(aio.append_decided("s", 0, _decide_next(seen, 1)))
    await asyncio.sleep(0.05)
    assert seen == []  # not while the batch is written
    closing = asyncio.create_task(aio.close())
    recording.gate.set()
    await first
    assert [e.version for e in await decided] == [2]
    assert [[e.data["n"] for e in events] for events in seen] == [[0]]
    await closing
