"""The account service's command path: mailboxes, bursts and group commit.

Commands on one account are decided in bursts against the cached aggregate and stored with
one append per burst. Whatever happens to a burst (stored, refused, lost to another writer,
failed by the store, held behind an exclusive caller), every caller hears back once, what
is stored is exactly what was answered, and nothing decided on state that was not stored
survives.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from account_service import codec
from account_service.application import Accounts, Decision, stream_id
from account_service.domain import Account, AccountEvent, InsufficientFunds
from event_store import (
    AppendRequest,
    AsyncEventStore,
    InMemoryEventStore,
    RecordedEvent,
    StoreUnavailable,
)


class Appends:
    """An in-memory store that records every append, and can hold one back or fail it."""

    def __init__(self) -> None:
        self.inner = InMemoryEventStore()
        self.requests: list[AppendRequest] = []
        self.gate: threading.Event | None = None  # when set, append_batch waits for it
        self.entered = threading.Event()
        self.fail_next: Exception | None = None

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]:
        self.requests.extend(requests)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=10)
        failure, self.fail_next = self.fail_next, None
        if failure is not None:
            raise failure
        return self.inner.append_batch(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def events(self, account_id: str) -> list[RecordedEvent]:
        return self.inner.read_stream(stream_id(account_id))

    def fold(self, account_id: str) -> Account:
        account = Account.empty(account_id)
        for recorded in self.events(account_id):
            data = {k: v for k, v in recorded.data.items() if not k.endswith("_after")}
            account.apply(codec.decode(recorded.type, data), recorded.recorded_at)
        return account


@pytest.fixture
async def store() -> AsyncIterator[tuple[Appends, AsyncEventStore]]:
    appends = Appends()
    aio = AsyncEventStore(appends)  # type: ignore[arg-type]
    await aio.start()
    yield appends, aio
    await aio.close()


def _open(account: Account) -> list[AccountEvent]:
    return account.open("Ada", "EUR")


def _deposit(amount: int, reference: str) -> Decision:
    return lambda account: account.deposit(amount, reference)


def _withdraw(amount: int, reference: str) -> Decision:
    return lambda account: account.withdraw(amount, reference)


async def _opened(accounts: Accounts, account_id: str, balance: int) -> None:
    await accounts.execute(account_id, _open)
    if balance:
        await accounts.execute(account_id, _deposit(balance, "opening"))


async def test_bursts_spread_over_many_accounts_store_exactly_what_was_answered(store) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    ids = [f"acc-{n}" for n in range(40)]
    for account_id in ids:
        await _opened(accounts, account_id, 100)
    rng = random.Random(7)
    moves = [(rng.choice(ids), rng.randint(1, 60), f"ref-{n}") for n in range(400)]

    async def one(account_id: str, amount: int, reference: str) -> tuple[str, int]:
        # Odd amounts are withdrawn (or refused), even ones deposited.
        decision = _withdraw(amount, reference) if amount % 2 else _deposit(amount, reference)
        try:
            await accounts.execute(account_id, decision)
        except InsufficientFunds:
            return account_id, 0
        return account_id, -amount if amount % 2 else amount

    answered = await asyncio.gather(*(one(*move) for move in moves))

    expected = dict.fromkeys(ids, 100)
    for account_id, change in answered:
        expected[account_id] += change
    for account_id in ids:
        stored = appends.fold(account_id)
        view = await accounts.get(account_id)
        assert stored.balance == view.balance == expected[account_id] >= 0
        # Every answered reference stored once, none of the refused ones.
        references = [e.data["reference"] for e in appends.events(account_id)[1:]]
        assert len(references) == len(set(references))
        assert sorted(references) == sorted(
            ["opening"]
            + [
                r
                for (a, amount, r), (_, c) in zip(moves, answered, strict=True)
                if a == account_id and c
            ]
        )


async def test_commands_submitted_in_one_round_of_the_loop_make_one_append(store) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "acc", 0)
    before = len(appends.requests)
    futures = [accounts.submit("acc", _deposit(n, f"d-{n}")) for n in range(1, 6)]
    views = await asyncio.gather(*futures)
    assert [v.balance for v in views] == [1, 3, 6, 10, 15]
    assert len(appends.requests) == before + 1
    assert len(appends.requests[-1].events) == 5


async def test_a_burst_that_loses_to_another_writer_is_decided_again_on_the_stored_state(
    store,
) -> None:
    """Two services on one database: the cached account of one is behind the stream."""
    appends, aio = store
    one, two = Accounts(aio), Accounts(aio)
    await _opened(one, "acc", 10)
    await two.execute("acc", _deposit(5, "from-two"))

    view = await one.execute("acc", _deposit(1, "from-one"))  # cached at version 2: conflict
    assert (view.balance, view.version) == (16, 4)
    # Decided on the cache it would be refused (10 < 15); the stored state allows it.
    view = await one.execute("acc", _withdraw(15, "out"))
    assert (view.balance, view.version) == (1, 5)
    assert appends.fold("acc").balance == 1
    assert [e.data["balance_after"] for e in appends.events("acc")] == [0, 10, 15, 16, 1]


async def test_a_failed_append_fails_its_burst_and_forgets_what_it_decided(store) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "acc", 10)
    appends.fail_next = StoreUnavailable("database down")
    with pytest.raises(StoreUnavailable):
        await accounts.execute("acc", _deposit(5, "lost"))
    view = await accounts.get("acc")
    assert (view.balance, view.version) == (10, 2)  # the unstored deposit is gone
    view = await accounts.execute("acc", _deposit(5, "lost"))  # and may be sent again
    assert (view.balance, view.version) == (15, 3)
    assert appends.fold("acc").balance == 15


async def test_exclusive_waits_for_a_burst_being_stored(store) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "acc", 10)
    appends.gate, appends.entered = threading.Event(), threading.Event()
    deposit = accounts.submit("acc", _deposit(5, "first"))
    assert await asyncio.to_thread(appends.entered.wait, 5)  # its append is in the writer
    inside = asyncio.Event()

    async def hold_the_lock() -> int:
        async with accounts.exclusive("acc", timeout=5) as run:
            inside.set()
            assert deposit.done()
            view = await run(_withdraw(15, "all"))
            return view.balance

    holder = asyncio.create_task(hold_the_lock())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not inside.is_set()
    appends.gate.set()
    assert await holder == 0
    assert (await deposit).balance == 15
    assert appends.fold("acc").balance == 0


async def test_commands_queued_behind_a_held_lock_wait_for_it(store) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "acc", 10)
    async with accounts.exclusive("acc", timeout=5) as run:
        waiting = accounts.submit("acc", _deposit(1, "queued"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()
        await run(_withdraw(10, "all"))
    assert (await waiting).balance == 1
    assert [e.data["balance_after"] for e in appends.events("acc")] == [0, 10, 0, 1]
