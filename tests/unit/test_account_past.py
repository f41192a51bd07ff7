"""The past of an account: checkpoints kept by the appends that reach them, and the
account as it stood after a version or at an instant, rebuilt from the nearest one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from account_service import codec
from account_service.application import Accounts
from account_service.domain import Account, AccountNotFound, AccountStatus
from account_service.streams import stream_id
from account_service.views import AccountView, view
from event_store import AppendRequest, AsyncEventStore, InMemoryEventStore, RecordedEvent

ACCOUNT_ID = "acc-1"
EVERY = 10


class Counted:
    """An in-memory store that counts the events each read of a stream returns."""

    def __init__(self) -> None:
        self.inner = InMemoryEventStore()
        self.read_events: list[int] = []
        self.appends: list[AppendRequest] = []

    def read_stream(
        self, stream: str, after_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        page = self.inner.read_stream(stream, after_version, limit)
        self.read_events.append(len(page))
        return page

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[list[RecordedEvent]]:
        self.appends.extend(requests)
        return self.inner.append_batch(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
async def store() -> AsyncIterator[tuple[Counted, AsyncEventStore]]:
    counted = Counted()
    aio = AsyncEventStore(counted)  # type: ignore[arg-type]
    await aio.start()
    yield counted, aio
    await aio.close()


def folded(counted: Counted, account_id: str, version: int | None = None) -> Account:
    """The account folded from its first event: what every read of the past must equal."""
    account = Account.empty(account_id)
    for recorded in counted.inner.read_stream(stream_id(account_id), limit=version):
        data = {k: v for k, v in recorded.data.items() if not k.endswith("_after")}
        account.apply(codec.decode(recorded.type, data), recorded.recorded_at)
    return account


async def busy(accounts: Accounts, account_id: str = ACCOUNT_ID, moves: int = 40) -> None:
    """An account with a little of everything: deposits, withdrawals into the overdraft,
    holds placed, captured and released, a limit changed, credits."""
    await accounts.execute(account_id, lambda a: a.open("Ada", "EUR"))
    await accounts.execute(account_id, lambda a: a.deposit(100, "opening"))
    await accounts.execute(account_id, lambda a: a.set_overdraft_limit(300, "limit-1"))
    for n in range(moves):
        ref = f"t-{n}"
        match n % 5:
            case 0:
                await accounts.execute(account_id, lambda a, r=ref: a.reserve(70, r))
            case 1:
                await accounts.execute(account_id, lambda a, n=n: a.capture(f"t-{n - 1}"))
            case 2:
                await accounts.execute(account_id, lambda a, r=ref: a.withdraw(90, r))
            case 3:
                await accounts.execute(account_id, lambda a, r=ref: a.reserve(15, r))
            case 4:
                await accounts.execute(account_id, lambda a, r=ref: a.credit(175, r, "EUR"))


def expected_view(account: Account) -> AccountView:
    return view(account, with_reservations=True)


async def test_appends_keep_a_checkpoint_at_every_multiple(store) -> None:
    counted, aio = store
    accounts = Accounts(aio, checkpoint_every=EVERY)
    await busy(accounts)
    kept = [c.version for r in counted.appends for c in r.checkpoints]
    version = await aio.stream_version(stream_id(ACCOUNT_ID))
    assert kept == list(range(EVERY, version + 1, EVERY))
    checkpoint = await aio.load_checkpoint(stream_id(ACCOUNT_ID), version=20)
    assert checkpoint.version == 20
    assert checkpoint.data["balance"] == folded(counted, ACCOUNT_ID, 20).balance


async def test_a_burst_keeps_the_checkpoint_at_its_exact_version(store) -> None:
    counted, aio = store
    accounts = Accounts(aio, checkpoint_every=EVERY)
    await accounts.execute(ACCOUNT_ID, lambda a: a.open("Ada", "EUR"))
    # One burst of 25 deposits: one append, two multiples crossed.
    await asyncio.gather(
        *(
            accounts.execute(ACCOUNT_ID, lambda a, n=n: a.deposit(n + 1, f"d-{n}"))
            for n in range(25)
        )
    )
    assert len(counted.appends) == 2
    assert [c.version for c in counted.appends[-1].checkpoints] == [10, 20]
    found = await aio.load_checkpoint(stream_id(ACCOUNT_ID), version=19)
    assert found.data["balance"] == sum(range(1, 10))  # after the opening and 9 deposits


async def test_a_sequence_keeps_checkpoints_of_its_accounts(store) -> None:
    counted, aio = store
    accounts = Accounts(aio, checkpoint_every=3)
    await accounts.execute("a", lambda a: a.open("Ada", "EUR"))
    await accounts.execute("a", lambda a: a.deposit(100, "opening"))
    await accounts.execute("b", lambda a: a.open("Bob", "EUR"))
    steps = [
        ("a", lambda _: lambda a: a.reserve(10, "t-1")),  # a: version 3
        ("b", lambda _: lambda a: a.credit(10, "t-1", "EUR")),  # b: version 2
        ("a", lambda _: lambda a: a.capture("t-1")),  # a: version 4
    ]
    future = accounts.submit_sequences([steps])[0]
    assert future is not None
    await future
    (request,) = [r for r in counted.appends if len(r.events) == 2]
    assert (request.stream_id, [c.version for c in request.checkpoints]) == (stream_id("a"), [3])
    checkpoint = await aio.load_checkpoint(stream_id("a"))
    assert checkpoint.data["holds"][0][:2] == ["t-1", 10]


async def test_every_version_of_the_past_is_the_fold_up_to_it(store) -> None:
    counted, aio = store
    accounts = Accounts(aio, checkpoint_every=EVERY)
    await busy(accounts)
    version = await aio.stream_version(stream_id(ACCOUNT_ID))
    for at in range(1, version):
        past = await accounts.as_of(ACCOUNT_ID, version=at)
        assert past == expected_view(folded(counted, ACCOUNT_ID, at)), at


async def test_a_read_of_the_past_folds_fewer_events_than_checkpoint_every(store) -> None:
    counted, aio = store
    accounts = Accounts(aio, checkpoint_every=EVERY)
    await busy(accounts, moves=200)
    for at in (15, 99, 100, 101, 157):
        counted.read_events.clear()
        await accounts.as_of(ACCOUNT_ID, version=at)
        assert sum(counted.read_events) < EVERY, (at, counted.read_events)


async def test_the_past_at_an_instant_is_the_fold_of_what_was_recorded_by_then(store) -> None:
    counted, aio = store
    accounts = Accounts(aio, checkpoint_every=EVERY)
    await busy(accounts)
    events = counted.inner.read_stream(stream_id(ACCOUNT_ID))
    for recorded in events[:-1]:
        # Every event of one append shares its time: the past at it holds all of them.
        upto = max(e.version for e in events if e.recorded_at == recorded.recorded_at)
        if upto == len(events):
            continue
        past = await accounts.as_of(ACCOUNT_ID, instant=recorded.recorded_at)
        assert past == expected_view(folded(counted, ACCOUNT_ID, upto)), recorded.version
        later = recorded.recorded_at + timedelta(microseconds=1)
        if all(e.recorded_at > later for e in events[upto:]):
            assert await accounts.as_of(ACCOUNT_ID, instant=later) == past


async def test_the_past_shows_the_reservations_open_then_with_their_times(store) -> None:
    counted, aio = store
    accounts = Accounts(aio, checkpoint_every=2)
    await accounts.execute(ACCOUNT_ID, lambda a: a.open("Ada", "EUR"))
    await accounts.execute(ACCOUNT_ID, lambda a: a.deposit(100, "opening"))
    await accounts.execute(ACCOUNT_ID, lambda a: a.reserve(30, "t-1"))
    held = await accounts.get(ACCOUNT_ID)
    await accounts.execute(ACCOUNT_ID, lambda a: a.capture("t-1"))
    (reserved,) = [e for e in counted.inner.read_stream(stream_id(ACCOUNT_ID)) if e.version == 3]
    past = await accounts.as_of(ACCOUNT_ID, version=3)
    assert [(ref, hold.amount, hold.reserved_at) for ref, hold in past.reservations] == [
        ("t-1", 30, reserved.recorded_at)
    ]
    assert past.reservations == held.reservations
    assert (past.balance, past.reserved, past.available) == (100, 30, 70)


async def test_beyond_the_present_is_the_present(store) -> None:
    _, aio = store
    accounts = Accounts(aio, checkpoint_every=EVERY)
    await busy(accounts, moves=12)
    present = await accounts.get(ACCOUNT_ID)
    assert await accounts.as_of(ACCOUNT_ID, version=present.version) == present
    assert await accounts.as_of(ACCOUNT_ID, version=present.version + 1_000) == present
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    assert await accounts.as_of(ACCOUNT_ID, instant=tomorrow) == present


async def test_before_the_opening_the_account_is_not_found(store) -> None:
    counted, aio = store
    accounts = Accounts(aio, checkpoint_every=1)
    # A refused credit is stored before the account is opened.
    with pytest.raises(AccountNotFound):
        await accounts.execute(ACCOUNT_ID, lambda a: a.credit(5, "t-0", "EUR"))
    await accounts.execute(ACCOUNT_ID, lambda a: a.open("Ada", "EUR"))
    await accounts.execute(ACCOUNT_ID, lambda a: a.deposit(5, "d-1"))
    first = counted.inner.read_stream(stream_id(ACCOUNT_ID))[0]
    with pytest.raises(AccountNotFound):
        await accounts.as_of(ACCOUNT_ID, version=1)
    with pytest.raises(AccountNotFound):
        await accounts.as_of(ACCOUNT_ID, instant=first.recorded_at)
    with pytest.raises(AccountNotFound):
        await accounts.as_of(ACCOUNT_ID, instant=first.recorded_at - timedelta(days=1))
    opened = await accounts.as_of(ACCOUNT_ID, version=2)
    assert (opened.status, opened.balance, opened.version) == (AccountStatus.OPEN, 0, 2)


async def test_an_account_never_opened_is_not_found_at_any_time(store) -> None:
    _, aio = store
    accounts = Accounts(aio)
    with pytest.raises(AccountNotFound):
        await accounts.as_of("nobody", version=3)
    with pytest.raises(AccountNotFound):
        await accounts.as_of("nobody", instant=datetime.now(UTC))


async def test_a_closed_account_was_open_before_it_closed(store) -> None:
    _, aio = store
    accounts = Accounts(aio, checkpoint_every=2)
    await accounts.execute(ACCOUNT_ID, lambda a: a.open("Ada", "EUR"))
    await accounts.execute(ACCOUNT_ID, lambda a: a.deposit(5, "d-1"))
    await accounts.execute(ACCOUNT_ID, lambda a: a.withdraw(5, "w-1"))
    await accounts.execute(ACCOUNT_ID, lambda a: a.close())
    assert (await accounts.as_of(ACCOUNT_ID, version=2)).status is AccountStatus.OPEN
    assert (await accounts.as_of(ACCOUNT_ID, version=9)).status is AccountStatus.CLOSED


async def test_a_read_saves_the_checkpoints_it_found_missing(store) -> None:
    counted, aio = store
    await busy(Accounts(aio, checkpoint_every=0), moves=60)  # written without checkpoints
    assert await aio.load_checkpoint(stream_id(ACCOUNT_ID)) is None
    reader = Accounts(aio, checkpoint_every=EVERY)
    counted.read_events.clear()
    first = await reader.as_of(ACCOUNT_ID, version=55)
    assert sum(counted.read_events) == 55
    assert first == expected_view(folded(counted, ACCOUNT_ID, 55))
    kept = await aio.load_checkpoint(stream_id(ACCOUNT_ID))
    assert kept.version == 50
    counted.read_events.clear()
    assert await reader.as_of(ACCOUNT_ID, version=55) == first
    assert sum(counted.read_events) == 5


async def test_a_checkpoint_that_cannot_be_used_means_folding_from_the_start(store) -> None:
    counted, aio = store
    accounts = Accounts(aio, checkpoint_every=EVERY)
    await busy(accounts, moves=20)
    checkpoints = counted.inner._checkpoints[stream_id(ACCOUNT_ID)]
    recorded_at, _ = checkpoints[10]
    checkpoints[10] = (recorded_at, '{"checkpoint": 99}')
    assert await accounts.as_of(ACCOUNT_ID, version=12) == expected_view(
        folded(counted, ACCOUNT_ID, 12)
    )


def test_checkpoint_every_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        Accounts(AsyncEventStore(InMemoryEventStore()), checkpoint_every=-1)
