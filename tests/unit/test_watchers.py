"""The watchers' feed: one read per watched account, however many watch it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from account_service.watchers import TooManyWatchers, Watchers


@dataclass(frozen=True)
class Entry:
    version: int


class Stream:
    """An account's events in memory, counting the reads."""

    def __init__(self) -> None:
        self.versions = 0
        self.reads = 0

    async def read(self, account_id: str, after: int, limit: int) -> list[Entry]:
        self.reads += 1
        return [Entry(v) for v in range(after + 1, min(self.versions, after + limit) + 1)]


async def _collect(watchers: Watchers, caller: str, out: list[int], count: int) -> None:
    async for entry in watchers.watch("a", 0, caller):
        out.append(entry.version)
        if len(out) == count:
            return


def test_many_watchers_of_one_account_share_one_poll():
    async def scenario() -> tuple[int, list[list[int]]]:
        stream = Stream()
        stream.versions = 3
        watchers = Watchers(stream.read, poll_interval=0.05, max_per_caller=1000)
        seen: list[list[int]] = [[] for _ in range(200)]
        tasks = [
            asyncio.create_task(_collect(watchers, f"c{i % 5}", seen[i], 6)) for i in range(200)
        ]
        await asyncio.sleep(0.1)
        caught_up = stream.reads
        await asyncio.sleep(0.5)  # ten polls' worth: one feed polls, not 200 watchers
        polls = stream.reads - caught_up
        stream.versions = 6  # another process commits: the next poll finds it
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return polls, seen

    polls, seen = asyncio.run(scenario())
    assert polls <= 20, polls
    assert all(versions == [1, 2, 3, 4, 5, 6] for versions in seen)


def test_a_commit_here_wakes_the_watchers_at_once():
    async def scenario() -> list[int]:
        stream = Stream()
        watchers = Watchers(stream.read, poll_interval=60)
        seen: list[int] = []
        task = asyncio.create_task(_collect(watchers, "c", seen, 2))
        await asyncio.sleep(0.05)
        stream.versions = 2
        watchers.notify("a")
        await asyncio.wait_for(task, 2)
        return seen

    assert asyncio.run(scenario()) == [1, 2]


def test_a_caller_watches_at_most_its_limit():
    async def scenario() -> None:
        stream = Stream()
        watchers = Watchers(stream.read, poll_interval=60, max_per_caller=3)
        held = [watchers.watch("a", 0, "c") for _ in range(3)]
        tasks = [asyncio.create_task(anext(w, None)) for w in held]
        await asyncio.sleep(0.05)
        with pytest.raises(TooManyWatchers):
            await anext(watchers.watch("a", 0, "c"))
        other = watchers.watch("a", 0, "another")
        other_task = asyncio.create_task(anext(other, None))
        await asyncio.sleep(0.05)
        assert not other_task.done()  # waiting for events, not refused
        for task in [*tasks, other_task]:
            task.cancel()
        await asyncio.gather(*tasks, other_task, return_exceptions=True)
        for w in [*held, other]:
            await w.aclose()
        # The closed ones no longer count.
        again = watchers.watch("a", 0, "c")
        task = asyncio.create_task(anext(again, None))
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await again.aclose()

    asyncio.run(scenario())
