"""The account service's command path: mailboxes, bursts and group commit.

Commands on one account are decided in bursts against the cached aggregate and stored with
one append per burst; a sequence of commands over quiet accounts is decided whole and stored
in one append across their streams. Whatever happens to a burst or a sequence (stored,
refused, lost to another writer, failed by the store, held behind an exclusive caller),
every caller hears back once, what is stored is exactly what was answered, and nothing
decided on state that was not stored survives.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from account_service import codec
from account_service.application import Accounts
from account_service.domain import Account, AccountEvent, InsufficientFunds
from account_service.mailboxes import Decision
from account_service.naive import exclusive
from account_service.sequences import SequenceStep
from account_service.streams import stream_id
from account_service.views import AccountView
from event_store import (
    AppendRequest,
    AsyncEventStore,
    ConcurrencyConflict,
    EventStoreError,
    InMemoryEventStore,
    RecordedEvent,
    StoreUnavailable,
    open_async_store,
)


class Appends:
    """An in-memory store that records every append, and can hold one back or fail it."""

    def __init__(self) -> None:
        self.inner = InMemoryEventStore()
        self.requests: list[AppendRequest] = []
        self.batches: list[list[str]] = []  # the streams of each append_batch
        self.gate: threading.Event | None = None  # when set, append_batch waits for it
        self.entered = threading.Event()
        self.fail_next: Exception | None = None

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]:
        self.requests.extend(requests)
        self.batches.append([r.stream_id for r in requests])
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


async def test_a_second_service_is_not_refused_on_an_account_another_keeps_writing(
    tmp_path,
) -> None:
    """Two services on one SQLite file, each its own store, the first writing one account
    without a pause: the second's commands on it lose their first race (the other commits
    while theirs waits for its own writer) and are decided at the writer; none is refused
    for contention, and every one is stored once."""
    url = f"sqlite:///{tmp_path / 'accounts.db'}"
    busy_store, other_store = await open_async_store(url), await open_async_store(url)
    busy, other = Accounts(busy_store), Accounts(other_store)
    await _opened(busy, "acc", 0)
    stop, started = asyncio.Event(), asyncio.Event()
    busy_deposits = 0

    async def keep_busy() -> None:
        nonlocal busy_deposits
        while not stop.is_set():
            n = busy_deposits
            await asyncio.gather(
                *(busy.execute("acc", _deposit(1, f"busy-{n + k}")) for k in range(8))
            )
            busy_deposits += 8
            started.set()

    writing = asyncio.create_task(keep_busy())
    try:
        await started.wait()
        views = [await other.execute("acc", _deposit(100, f"other-{n}")) for n in range(30)]
    finally:
        stop.set()
        await writing
    assert all(view.balance >= 100 * (n + 1) for n, view in enumerate(views))
    final = await other.get("acc")
    assert final.balance == 3000 + busy_deposits
    events = await other_store.read_stream(stream_id("acc"))
    references = [e.data["reference"] for e in events[1:]]
    assert len(references) == len(set(references)) == 30 + busy_deposits
    await busy_store.close()
    await other_store.close()


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
        async with exclusive(accounts, "acc", timeout=5) as run:
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
    async with exclusive(accounts, "acc", timeout=5) as run:
        waiting = accounts.submit("acc", _deposit(1, "queued"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()
        await run(_withdraw(10, "all"))
    assert (await waiting).balance == 1
    assert [e.data["balance_after"] for e in appends.events("acc")] == [0, 10, 0, 1]


# --- sequences ---------------------------------------------------------------------------


def _transfer(source: str, target: str, amount: int, reference: str) -> list[SequenceStep]:
    """A transfer's forward steps; the credit takes the currency the reserve left."""

    def reserve(before: AccountView | None) -> Decision:
        return lambda account: account.reserve(amount, reference)

    def credit(before: AccountView | None) -> Decision:
        assert before is not None
        return lambda account: account.credit(amount, reference, before.currency)

    def capture(before: AccountView | None) -> Decision:
        return lambda account: account.capture(reference)

    return [(source, reserve), (target, credit), (source, capture)]


def _balances(appends: Appends, *ids: str) -> list[tuple[int, int]]:
    return [(a.balance, a.reserved) for a in map(appends.fold, ids)]


async def test_a_sequence_over_idle_accounts_is_stored_in_one_append(store) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "ada", 100)
    await _opened(accounts, "bob", 0)
    appends.batches.clear()
    sequence = accounts.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0]
    assert sequence is not None
    views = await sequence
    assert [(v.account_id, v.balance, v.reserved) for v in views] == [
        ("ada", 100, 30),
        ("bob", 30, 0),
        ("ada", 70, 0),
    ]
    assert appends.batches == [[stream_id("ada"), stream_id("bob")]]
    assert [e.type for e in appends.events("ada")[-2:]] == ["Reserved", "ReservationCaptured"]
    assert _balances(appends, "ada", "bob") == [(70, 0), (30, 0)]
    # The cached accounts are what is stored, and go on from there.
    assert (await accounts.get("ada")).version == appends.fold("ada").version == 4
    view = await accounts.execute("ada", _withdraw(70, "w-1"))
    assert (view.balance, appends.fold("ada").balance) == (0, 0)


async def test_a_sequence_is_declined_unless_every_account_is_cached_with_nothing_queued_or_held(
    store,
) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "ada", 100)
    await _opened(accounts, "bob", 0)
    cold = Accounts(aio)  # another process: nothing cached
    await cold.get("ada")
    assert cold.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0] is None
    queued = accounts.submit("bob", _deposit(1, "d-1"))
    assert accounts.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0] is None
    await queued
    async with exclusive(accounts, "ada", timeout=5):
        assert accounts.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0] is None
    before = len(appends.requests)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(appends.requests) == before  # a declined sequence stores nothing
    assert _balances(appends, "ada", "bob") == [(100, 0), (1, 0)]


async def test_a_refused_step_declines_the_sequence_and_forgets_what_it_decided(store) -> None:
    """A refusal decided on a cached account is only answered after the step-by-step path
    has checked the account against the store; the reserve applied before it is undone."""
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "ada", 100)
    await accounts.execute("usd", lambda account: account.open("Bo", "USD"))
    before = len(appends.requests)
    assert accounts.submit_sequences([_transfer("ada", "usd", 30, "t-1")])[0] is None
    assert len(appends.requests) == before
    # Forgotten, not kept at version 3: the next command is stored at the first try.
    view = await accounts.execute("ada", _deposit(5, "d-1"))
    assert (view.balance, view.reserved, view.version) == (105, 0, 3)
    assert [r.expected_version for r in appends.requests[before:]] == [2]
    await accounts.execute("ada", _withdraw(5, "w-0"))
    # A repeat decides no new events: declined as well, for the same reason.
    await accounts.execute("ada", _withdraw(10, "w-1"))
    steps = [("ada", lambda before: _withdraw(10, "w-1"))]
    assert accounts.submit_sequences([steps])[0] is None
    assert appends.fold("ada").balance == (await accounts.get("ada")).balance == 90


async def test_commands_for_its_accounts_wait_until_the_sequence_is_stored(store) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "ada", 100)
    await _opened(accounts, "bob", 0)
    appends.gate, appends.entered = threading.Event(), threading.Event()
    sequence = accounts.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0]
    assert sequence is not None
    assert await asyncio.to_thread(appends.entered.wait, 5)  # its append is in the writer
    withdraw = accounts.submit("ada", _withdraw(70, "w-1"))
    entered = asyncio.Event()

    async def hold_the_lock() -> int:
        async with exclusive(accounts, "bob", timeout=5) as run:
            entered.set()
            assert sequence.done()
            return (await run(_withdraw(30, "w-2"))).balance

    holder = asyncio.create_task(hold_the_lock())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not withdraw.done() and not entered.is_set()
    assert accounts.submit_sequences([_transfer("bob", "ada", 1, "t-2")])[0] is None
    appends.gate.set()
    assert [v.balance for v in await sequence] == [100, 30, 70]
    assert (await withdraw).balance == 0
    assert await holder == 0
    assert _balances(appends, "ada", "bob") == [(0, 0), (0, 0)]


async def test_a_sequence_whose_append_fails_stores_nothing_and_forgets_its_accounts(
    store,
) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "ada", 100)
    await _opened(accounts, "bob", 0)
    appends.fail_next = StoreUnavailable("database down")
    sequence = accounts.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0]
    assert sequence is not None
    with pytest.raises(StoreUnavailable):
        await sequence
    failed = len(appends.requests)
    # Forgotten, not kept with the unstored events: the next commands store at the first try.
    assert (await accounts.execute("ada", _deposit(5, "d-1"))).balance == 105
    assert (await accounts.execute("ada", _withdraw(5, "w-1"))).balance == 100
    assert (await accounts.get("bob")).balance == 0
    assert [r.expected_version for r in appends.requests[failed:]] == [2, 3]
    # Sent again, step by step or whole, it is stored once.
    again = accounts.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0]
    assert again is not None
    await again
    assert _balances(appends, "ada", "bob") == [(70, 0), (30, 0)]


async def test_a_sequence_that_loses_to_another_writer_stores_nothing(store) -> None:
    """Two services on one database: one's cached account is behind the stream."""
    appends, aio = store
    one, two = Accounts(aio), Accounts(aio)
    await _opened(one, "ada", 100)
    await _opened(one, "bob", 0)
    await two.execute("ada", _withdraw(80, "elsewhere"))
    sequence = one.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0]
    assert sequence is not None  # decided on the cache: 100 available
    with pytest.raises(ConcurrencyConflict):
        await sequence
    assert _balances(appends, "ada", "bob") == [(20, 0), (0, 0)]
    # Step by step, on the stored state, the reserve is refused.
    with pytest.raises(InsufficientFunds):
        await one.execute("ada", _transfer("ada", "bob", 30, "t-1")[0][1](None))


async def test_sequences_offered_together_are_stored_in_one_append(store) -> None:
    """Each is decided on the state the ones before it left, and an account's events of all
    of them are its one request of the append; a refused one is declined with nothing of it
    applied, and the others go ahead."""
    appends, aio = store
    accounts = Accounts(aio)
    for name, balance in (("ada", 100), ("bob", 0), ("cyd", 50), ("dan", 0), ("eve", 5)):
        await _opened(accounts, name, balance)
    appends.batches.clear()
    before = len(appends.requests)
    futures = accounts.submit_sequences(
        [
            _transfer("ada", "bob", 30, "t-1"),
            _transfer("bob", "cyd", 25, "t-2"),  # on the 30 the first one credits
            _transfer("eve", "dan", 10, "t-3"),  # eve has 5
            _transfer("cyd", "dan", 20, "t-4"),
            _transfer("bob", "ada", 6, "t-5"),  # bob has 5 left
        ]
    )
    assert [future is None for future in futures] == [False, False, True, False, True]
    views = [await future for future in futures if future is not None]
    assert [[v.balance for v in sequence] for sequence in views] == [
        [100, 30, 70],
        [30, 75, 5],
        [75, 20, 55],
    ]
    assert appends.batches == [[stream_id(n) for n in ("ada", "bob", "cyd", "dan")]]
    requests = appends.requests[before:]
    # bob and dan opened with nothing: one event each before.
    assert [(r.expected_version, len(r.events)) for r in requests] == [
        (2, 2),
        (1, 3),
        (2, 3),
        (1, 1),
    ]
    assert _balances(appends, "ada", "bob", "cyd", "dan", "eve") == [
        (70, 0),
        (5, 0),
        (55, 0),
        (20, 0),
        (5, 0),
    ]
    # The cache is what is stored, and declined ones go step by step on it.
    assert (await accounts.execute("eve", _withdraw(5, "w-1"))).balance == 0
    assert (await accounts.execute("bob", _withdraw(5, "w-2"))).balance == 0
    assert _balances(appends, "bob", "eve") == [(0, 0), (0, 0)]


async def test_a_sequence_refused_after_its_first_step_forgets_the_accounts_it_changed(
    store,
) -> None:
    """Its reserve was applied to an account a sequence before it holds: that account is
    loaded again after the append, the sequences after it that need it are declined, and
    what the one before decided is stored all the same."""
    appends, aio = store
    accounts = Accounts(aio)
    for name, balance in (("ada", 100), ("bob", 0), ("cyd", 0)):
        await _opened(accounts, name, balance)
    await accounts.execute("usd", lambda account: account.open("Bo", "USD"))
    futures = accounts.submit_sequences(
        [
            _transfer("ada", "bob", 30, "t-1"),
            _transfer("ada", "usd", 10, "t-2"),  # the credit is refused: not EUR
            _transfer("ada", "cyd", 5, "t-3"),
        ]
    )
    assert [future is None for future in futures] == [False, True, True]
    assert futures[0] is not None
    assert [v.balance for v in await futures[0]] == [100, 30, 70]
    assert _balances(appends, "ada", "bob", "cyd") == [(70, 0), (30, 0), (0, 0)]
    view = await accounts.get("ada")
    assert (view.balance, view.reserved, view.version) == (70, 0, 4)
    assert not view.reservations
    assert (await accounts.execute("ada", _withdraw(70, "w-1"))).balance == 0


async def test_sequences_stored_together_fail_together(store) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    for name, balance in (("ada", 100), ("bob", 0), ("cyd", 50), ("dan", 0)):
        await _opened(accounts, name, balance)
    appends.fail_next = StoreUnavailable("database down")
    futures = accounts.submit_sequences(
        [_transfer("ada", "bob", 30, "t-1"), _transfer("cyd", "dan", 20, "t-2")]
    )
    for future in futures:
        assert future is not None
        with pytest.raises(StoreUnavailable):
            await future
    assert _balances(appends, "ada", "bob", "cyd", "dan") == [(100, 0), (0, 0), (50, 0), (0, 0)]
    # Every account is forgotten, not kept with the unstored events.
    for name, balance in (("ada", 100), ("bob", 0), ("cyd", 50), ("dan", 0)):
        assert (await accounts.get(name)).balance == balance
    again = accounts.submit_sequences([_transfer("cyd", "dan", 20, "t-2")])[0]
    assert again is not None
    await again
    assert _balances(appends, "cyd", "dan") == [(30, 0), (20, 0)]


async def test_a_sequence_follows_the_sequences_being_stored_on_its_accounts(store) -> None:
    """Decided on the state they leave, its append is queued once theirs is stored; the
    account's commands wait for the last of them."""
    appends, aio = store
    accounts = Accounts(aio)
    for name, balance in (("ada", 100), ("bob", 0), ("cyd", 0)):
        await _opened(accounts, name, balance)
    appends.batches.clear()
    before = len(appends.requests)
    appends.gate, appends.entered = threading.Event(), threading.Event()
    first = accounts.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0]
    assert first is not None
    assert await asyncio.to_thread(appends.entered.wait, 5)  # its append is in the writer
    second = accounts.submit_sequences([_transfer("bob", "cyd", 25, "t-2")])[0]
    assert second is not None  # on the 30 the first one credits, not yet stored
    third = accounts.submit_sequences([_transfer("cyd", "ada", 5, "t-3")])[0]
    assert third is not None  # follows the second, which follows the first
    deposit = accounts.submit("bob", _deposit(1, "d-1"))
    # Something queued for bob: the next sequence on bob goes step by step.
    assert accounts.submit_sequences([_transfer("bob", "ada", 1, "t-4")])[0] is None
    for _ in range(20):
        await asyncio.sleep(0)
    assert appends.batches == [[stream_id("ada"), stream_id("bob")]]
    assert not deposit.done()
    appends.gate.set()
    assert [v.balance for v in await first] == [100, 30, 70]
    assert [v.balance for v in await second] == [30, 25, 5]
    assert [v.balance for v in await third] == [25, 75, 20]
    assert (await deposit).balance == 6
    assert appends.batches[:2] == [
        [stream_id("ada"), stream_id("bob")],
        [stream_id("bob"), stream_id("cyd")],
    ]
    # Each request expects the version the one before it on its stream left.
    requests = [(r.stream_id, r.expected_version, len(r.events)) for r in appends.requests]
    assert sorted(requests[before:]) == sorted(
        [
            (stream_id("ada"), 2, 2),
            (stream_id("bob"), 1, 1),
            (stream_id("bob"), 2, 2),
            (stream_id("cyd"), 1, 1),
            (stream_id("cyd"), 2, 2),
            (stream_id("ada"), 4, 1),
            (stream_id("bob"), 4, 1),  # the deposit, after the second sequence
        ]
    )
    for name in ("ada", "bob", "cyd"):
        versions = [v for s, v, _ in requests[before:] if s == stream_id(name)]
        assert versions == sorted(versions)
    assert _balances(appends, "ada", "bob", "cyd") == [(75, 0), (6, 0), (20, 0)]


async def test_a_sequence_that_follows_one_not_stored_is_not_stored(store) -> None:
    """Another writer may have put as many events on the account meanwhile, which no
    version check would tell from the ones it was decided on."""
    appends, aio = store
    accounts = Accounts(aio)
    for name, balance in (("ada", 100), ("bob", 0), ("cyd", 0)):
        await _opened(accounts, name, balance)
    appends.gate, appends.entered = threading.Event(), threading.Event()
    appends.fail_next = StoreUnavailable("database down")
    first = accounts.submit_sequences([_transfer("ada", "bob", 30, "t-1")])[0]
    assert first is not None
    assert await asyncio.to_thread(appends.entered.wait, 5)
    second = accounts.submit_sequences([_transfer("bob", "cyd", 25, "t-2")])[0]
    assert second is not None
    # Another process on the same database puts one event on bob, as the credit would.
    async with AsyncEventStore(appends.inner) as elsewhere:
        await Accounts(elsewhere).execute("bob", _deposit(40, "elsewhere"))
    assert appends.fold("bob").version == 2  # where the second expects bob to be
    batches = len(appends.batches)
    appends.gate.set()
    with pytest.raises(StoreUnavailable):
        await first
    with pytest.raises(EventStoreError):
        await second
    assert len(appends.batches) == batches  # the second never reached the store
    assert _balances(appends, "ada", "bob", "cyd") == [(100, 0), (40, 0), (0, 0)]
    # Forgotten, loaded again: the stored state, and the transfers go on from it.
    assert [(await accounts.get(n)).balance for n in ("ada", "bob", "cyd")] == [100, 40, 0]
    for steps in (_transfer("ada", "bob", 30, "t-1"), _transfer("bob", "cyd", 25, "t-2")):
        again = accounts.submit_sequences([steps])[0]
        assert again is not None
        await again
    assert _balances(appends, "ada", "bob", "cyd") == [(70, 0), (45, 0), (25, 0)]


# --- open reservations -------------------------------------------------------------------


async def test_open_hold_times_lists_when_each_open_reservation_of_the_cache_was_made(
    store,
) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "ada", 100)
    await _opened(accounts, "bob", 100)
    assert accounts.open_hold_times() == []
    await accounts.execute("ada", lambda account: account.reserve(10, "t-1"))
    await accounts.execute("bob", lambda account: account.reserve(20, "t-2"))
    await accounts.execute("bob", lambda account: account.reserve(30, "t-3"))
    reserved_at = {
        e.data["reference"]: e.recorded_at for e in appends.inner.read_all() if e.type == "Reserved"
    }
    assert sorted(accounts.open_hold_times()) == sorted(
        [reserved_at["t-1"], reserved_at["t-2"], reserved_at["t-3"]]
    )
    await accounts.execute("bob", lambda account: account.capture("t-2"))
    await accounts.execute("ada", lambda account: account.release("t-1"))
    assert accounts.open_hold_times() == [reserved_at["t-3"]]
    assert accounts.open_pending_hold_times() == []


async def test_open_pending_hold_times_lists_only_holds_with_an_expiry(store) -> None:
    appends, aio = store
    accounts = Accounts(aio)
    await _opened(accounts, "ada", 100)
    await accounts.execute("ada", lambda account: account.reserve(10, "now"))
    await accounts.execute("ada", lambda account: account.reserve(20, "held", expires_at=10**16))
    held_at = [e.recorded_at for e in appends.inner.read_all() if e.data.get("reference") == "held"]
    assert len(accounts.open_hold_times()) == 2
    assert accounts.open_pending_hold_times() == held_at
    await accounts.execute("ada", lambda account: account.release("held"))
    assert accounts.open_pending_hold_times() == []
