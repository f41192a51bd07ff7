"""Snapshots of the account aggregate: the whole state, and nothing but the state.

Random histories are made the way the application makes them (decide, then apply, with
the time of each reservation as the store would record it). A snapshot taken at any
point, stored as JSON and read back, continued with the rest of the events, must equal
the account folded from every event. The application saves snapshots in the background,
loads from them, and never trusts one it cannot read.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from account_service import codec
from account_service.application import Accounts
from account_service.domain import (
    SNAPSHOT_FORMAT,
    Account,
    AccountEvent,
    AccountOpened,
    Deposited,
    ReferenceReused,
    Reserved,
    SnapshotUnusable,
)
from account_service.mailboxes import ContentionTooHigh
from account_service.streams import stream_id
from event_store import AsyncEventStore, InMemoryEventStore, RecordedEvent, StoreUnavailable
from event_store.port import decode_data, encode_data
from shared_kernel.errors import DomainError
from tests.unit.test_account_properties import ACCOUNT_ID, commands, preludes

START = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

# When each event was recorded: the store's UTC microseconds, or unknown (None, as for
# an event applied before its append returned).
instants = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=10**12).map(lambda n: START + timedelta(microseconds=n)),
)
histories = st.integers(min_value=0, max_value=80).flatmap(
    lambda n: st.lists(st.tuples(commands, instants), min_size=n, max_size=n)
)


def run(prelude: list[tuple], script: list[tuple[tuple, datetime | None]]) -> list:
    """The events the commands produce, each with the time it was recorded."""
    account = Account.empty(ACCOUNT_ID)
    recorded: list[tuple[AccountEvent, datetime | None]] = []
    for command, at in [*((c, START) for c in prelude), *script]:
        name, *args = command
        try:
            events = getattr(account, name)(*args)
        except DomainError:
            continue
        for event in events:
            account.apply(event, at)
            recorded.append((event, at))
    return recorded


def replay(recorded: list[tuple[AccountEvent, datetime | None]], into: Account) -> Account:
    for event, at in recorded:
        into.apply(event, at)
    return into


def through_json(data: dict[str, Any]) -> dict[str, Any]:
    """What a store hands back: the snapshot as its stored JSON text, decoded."""
    return decode_data(encode_data(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prelude=preludes, script=histories, data=st.data())
def test_a_snapshot_continued_with_the_rest_equals_the_full_replay(prelude, script, data):
    recorded = run(prelude, script)
    cut = data.draw(st.integers(min_value=0, max_value=len(recorded)), label="cut")
    whole = replay(recorded, Account.empty(ACCOUNT_ID))

    before = replay(recorded[:cut], Account.empty(ACCOUNT_ID))
    snapshot = before.to_snapshot()
    assert snapshot["format"] == SNAPSHOT_FORMAT
    assert snapshot["version"] == cut
    restored = Account.from_snapshot(ACCOUNT_ID, through_json(snapshot))
    assert restored == before
    assert restored.to_snapshot() == snapshot

    continued = replay(recorded[cut:], restored)
    assert continued == whole
    # Same answers to every command afterwards, refusals included.
    for command, _ in script[-10:]:
        name, *args = command
        assert _answer(continued, name, args) == _answer(whole, name, args)


def _answer(account: Account, name: str, args: list) -> object:
    try:
        return getattr(account, name)(*args)
    except DomainError as error:
        return type(error), str(error)


@settings(max_examples=200, deadline=None)
@given(prelude=preludes, script=histories)
def test_from_snapshot_of_to_snapshot_is_equal_for_any_state(prelude, script):
    account = replay(run(prelude, script), Account.empty(ACCOUNT_ID))
    assert Account.from_snapshot(ACCOUNT_ID, account.to_snapshot()) == account
    assert Account.from_snapshot(ACCOUNT_ID, through_json(account.to_snapshot())) == account


@settings(max_examples=100, deadline=None)
@given(prelude=preludes, script=histories)
def test_a_copy_is_equal_and_independent(prelude, script):
    recorded = run(prelude, script)
    account = replay(recorded, Account.empty(ACCOUNT_ID))
    twin = account.copy()
    assert twin == account
    frozen = account.to_snapshot()
    twin.apply(Deposited(1, "after-the-copy"))
    twin.apply(Reserved(1, "hold-after-the-copy"), START)
    assert account.to_snapshot() == frozen


def test_the_snapshot_of_an_account_that_does_not_exist() -> None:
    empty = Account.empty(ACCOUNT_ID)
    restored = Account.from_snapshot(ACCOUNT_ID, through_json(empty.to_snapshot()))
    assert restored == empty
    assert not restored.exists


def test_reservation_times_keep_their_instant_and_zone() -> None:
    account = Account.empty(ACCOUNT_ID)
    account.apply(AccountOpened(ACCOUNT_ID, "Ada", "EUR"))
    account.apply(Deposited(100, "d"))
    zone = timezone(timedelta(hours=5, minutes=30))
    times = [
        datetime(2024, 6, 1, 12, 0, 0, 1, tzinfo=UTC),
        datetime(2024, 6, 1, 12, 0, tzinfo=zone),
        datetime(2024, 6, 1, 12, 0, 0, 999_999),  # naive
        None,
    ]
    for n, at in enumerate(times):
        account.apply(Reserved(1, f"r{n}"), at)
    restored = Account.from_snapshot(ACCOUNT_ID, through_json(account.to_snapshot()))
    assert [hold.reserved_at for hold in restored.holds.values()] == times
    assert [
        hold.reserved_at.utcoffset() if hold.reserved_at else None
        for hold in restored.holds.values()
    ] == [at.utcoffset() if at else None for at in times]
    assert list(restored.holds) == ["r0", "r1", "r2", "r3"]
    assert restored.reserved == 4


def _holds_with_and_without_times() -> Account:
    account = Account.empty(ACCOUNT_ID)
    account.apply(AccountOpened(ACCOUNT_ID, "Ada", "EUR"))
    account.apply(Deposited(100, "d"))
    account.apply(Reserved(1, "no-time"))
    account.apply(Reserved(1, "no-expiry"), START)
    account.apply(Reserved(1, "both", 1, 1_900_000_000_000_000), START)
    return account


def test_a_snapshot_writes_no_null_for_the_times_a_hold_lacks() -> None:
    # A null sends the whole snapshot through the store's exact, slower JSON encoder.
    account = _holds_with_and_without_times()
    encoded = encode_data(account.to_snapshot())
    assert "null" not in encoded
    assert Account.from_snapshot(ACCOUNT_ID, decode_data(encoded)) == account


def test_a_snapshot_of_format_2_with_null_times_is_still_read() -> None:
    account = _holds_with_and_without_times()
    second = account.to_snapshot()
    second["format"] = 2
    second["holds"] = [[r, a, t or None, e or None] for r, a, t, e in second["holds"]]
    assert second["holds"][0][2:] == [None, None]
    assert Account.from_snapshot(ACCOUNT_ID, decode_data(encode_data(second))) == account


def test_a_big_account_round_trips() -> None:
    account = Account.empty(ACCOUNT_ID)
    account.apply(AccountOpened(ACCOUNT_ID, "Ada", "EUR"))
    for n in range(20_000):
        account.apply(Deposited(n + 1, f"load-{n}"))
    restored = Account.from_snapshot(ACCOUNT_ID, through_json(account.to_snapshot()))
    assert restored == account
    assert restored.version == 20_001


# --------------------------------------------------------------------------- refusals


def _opened() -> dict[str, Any]:
    account = Account.empty(ACCOUNT_ID)
    account.apply(AccountOpened(ACCOUNT_ID, "Ada", "EUR"))
    account.apply(Deposited(100, "d"))
    account.apply(Reserved(30, "r"), START)
    return account.to_snapshot()


@pytest.mark.parametrize("found", [None, 0, 4, "1", 1.0, True])
def test_an_unknown_format_is_unusable(found: object) -> None:
    data = _opened()
    if found is None:
        del data["format"]
    else:
        data["format"] = found
    with pytest.raises(SnapshotUnusable, match="format"):
        Account.from_snapshot(ACCOUNT_ID, data)


def _set(path: tuple, value: object):
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


CORRUPTIONS = {
    "another account": _set(("account_id",), "someone-else"),
    "version missing": _set(("version",), KeyError),
    "version a string": _set(("version",), "3"),
    "version negative": _set(("version",), -1),
    "version a bool": _set(("version",), True),
    "balance a float": _set(("balance",), 100.0),
    "owner a number": _set(("owner",), 7),
    "status unknown": _set(("status",), "frozen"),
    "opened at version 0": _set(("version",), 0),
    "holds not a list": _set(("holds",), {"r": 30}),
    "hold too short": _set(("holds", 0), ["r", 30]),
    "hold amount a string": _set(("holds", 0, 1), "30"),
    "hold time not a time": _set(("holds", 0, 2), "yesterday"),
    "hold time a number": _set(("holds", 0, 2), 1717243200),
    "deposits an object": _set(("deposits",), {"d": 100}),
    "deposits of three lists": _set(("deposits",), [["d"], [100], []]),
    "deposit amount a float": _set(("deposits", 1, 0), 100.5),
    "deposit amount a bool": _set(("deposits", 1, 0), True),
    "deposit reference a number": _set(("deposits", 0, 0), 1),
    "deposit without its amount": _set(("deposits", 1), []),
    "deposit reference twice": _set(("deposits",), [["d", "d"], [100, 100]]),
    "credits missing": _set(("credits",), KeyError),
    "settled twice": lambda data: data.update(captured=[["x"], [1]], released=[["x"], [1]]),
    "hold listed twice": lambda data: data["holds"].append(list(data["holds"][0])),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_malformed_snapshot_is_unusable(corrupt) -> None:
    data = copy.deepcopy(_opened())
    corrupt(data)
    with pytest.raises(SnapshotUnusable):
        Account.from_snapshot(ACCOUNT_ID, data)


@pytest.mark.parametrize("data", [None, [], "snapshot", 1])
def test_a_snapshot_that_is_not_an_object_is_unusable(data: object) -> None:
    with pytest.raises(SnapshotUnusable):
        Account.from_snapshot(ACCOUNT_ID, data)  # type: ignore[arg-type]


def test_unusable_is_a_value_error() -> None:
    assert issubclass(SnapshotUnusable, ValueError)


# --------------------------------------------------------------------------- the application


class Watched:
    """An in-memory store that records every snapshot saved and every stream read, and
    can hold saves back or make them fail."""

    def __init__(self, inner: InMemoryEventStore | None = None) -> None:
        self.inner = inner or InMemoryEventStore()
        self.saved: list[tuple[str, int, dict[str, Any]]] = []
        self.reads: list[tuple[str, int]] = []
        self.gate: threading.Event | None = None
        self.fail_with: Exception | None = None
        self.saving = 0
        self.most_saving = 0
        self._lock = threading.Lock()

    def save_snapshot(self, stream_id: str, version: int, data: Mapping[str, Any]) -> None:
        with self._lock:
            self.saving += 1
            self.most_saving = max(self.most_saving, self.saving)
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
            if self.fail_with is not None:
                raise self.fail_with
            self.saved.append((stream_id, version, copy.deepcopy(dict(data))))
            self.inner.save_snapshot(stream_id, version, data)
        finally:
            with self._lock:
                self.saving -= 1

    def read_stream(
        self, stream_id: str, after_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        self.reads.append((stream_id, after_version))
        return self.inner.read_stream(stream_id, after_version, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
async def watched() -> AsyncIterator[tuple[Watched, AsyncEventStore]]:
    store = Watched()
    aio = AsyncEventStore(store)  # type: ignore[arg-type]
    await aio.start()
    yield store, aio
    await aio.close()


def _deposit(n: int) -> Callable[[Account], list[AccountEvent]]:
    return lambda account: account.deposit(1 + n % 5, f"d-{n}")


async def _open_and_deposit(
    accounts: Accounts, deposits: int, first: int = 0, *, settle: bool = False
) -> None:
    """``settle``: each command waits for the snapshots it made due to be stored. Without
    it a save still running when the next falls due defers that one (as it should), so
    the versions saved depend on the machine's speed."""
    await accounts.execute(ACCOUNT_ID, lambda account: account.open("Ada", "EUR"))
    for n in range(first, first + deposits):
        await accounts.execute(ACCOUNT_ID, _deposit(n))
        if settle:
            await _saves_finished(accounts)


async def _saves_finished(accounts: Accounts) -> None:
    # The background saves, read from inside: no caller of the service waits for them.
    while pending := set(accounts._snapshots._saving):
        await asyncio.wait(pending, timeout=10)


def _replayed(store: Watched, version: int) -> Account:
    account = Account.empty(ACCOUNT_ID)
    for recorded in store.inner.read_stream(stream_id(ACCOUNT_ID), 0, version):
        account.apply(codec.decode(recorded.type, _event_data(recorded)), recorded.recorded_at)
    return account


def _event_data(recorded: RecordedEvent) -> dict[str, Any]:
    return {k: v for k, v in recorded.data.items() if not k.endswith("_after")}


def assert_every_snapshot_is_the_fold_of_its_events(store: Watched) -> None:
    assert store.saved
    for saved_stream, version, data in store.saved:
        assert saved_stream == stream_id(ACCOUNT_ID)
        assert Account.from_snapshot(ACCOUNT_ID, data) == _replayed(store, version)


async def test_snapshots_are_saved_as_the_account_grows(watched) -> None:
    store, aio = watched
    accounts = Accounts(aio, snapshot_every=10)
    await _open_and_deposit(accounts, 34, settle=True)  # 35 events
    await accounts.close()
    assert [version for _, version, _ in store.saved] == [10, 20, 30]
    assert_every_snapshot_is_the_fold_of_its_events(store)


async def test_a_cold_load_starts_from_the_snapshot(watched) -> None:
    store, aio = watched
    first = Accounts(aio, snapshot_every=10)
    await _open_and_deposit(first, 34, settle=True)
    await first.close()
    expected = await first.get(ACCOUNT_ID)

    store.reads.clear()
    second = Accounts(aio, snapshot_every=10)
    assert await second.get(ACCOUNT_ID) == expected
    assert store.reads == [(stream_id(ACCOUNT_ID), 30)]
    # The memory of the references folded into the snapshot is there.
    assert await second.execute(ACCOUNT_ID, _deposit(3)) == await second.execute(
        ACCOUNT_ID, _existing_view
    )
    with pytest.raises(ReferenceReused):
        await second.execute(ACCOUNT_ID, lambda account: account.deposit(99, "d-3"))


def _existing_view(account: Account) -> list[AccountEvent]:
    return []


async def test_an_unusable_snapshot_means_a_full_replay(watched, caplog) -> None:
    store, aio = watched
    first = Accounts(aio, snapshot_every=0)
    await _open_and_deposit(first, 12)
    expected = await first.get(ACCOUNT_ID)
    for version, data in [
        (5, {"format": 2}),
        (6, {**_replayed(store, 6).to_snapshot(), "balance": "lots"}),
        (50, _replayed(store, 13).to_snapshot()),  # stored under another version
        (80, {**_replayed(store, 13).to_snapshot(), "version": 80}),  # ahead of the stream
    ]:
        store.inner._snapshots.clear()
        store.inner.save_snapshot(stream_id(ACCOUNT_ID), version, data)
        store.reads.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="account_service.snapshots"):
            assert await Accounts(aio, snapshot_every=0).get(ACCOUNT_ID) == expected
        assert (stream_id(ACCOUNT_ID), 0) in store.reads, (version, data)
        assert caplog.records, (version, data)


async def test_commands_do_not_wait_for_a_snapshot_being_saved(watched) -> None:
    store, aio = watched
    store.gate = threading.Event()
    accounts = Accounts(aio, snapshot_every=5)
    await asyncio.wait_for(_open_and_deposit(accounts, 40), 10)  # with the first save stuck
    assert store.most_saving == 1
    assert store.saved == []
    store.gate.set()
    for _ in range(500):
        if len(store.saved) == 2:
            break
        await asyncio.sleep(0.01)
    await accounts.close()
    # One save in flight for the account at a time; when it is done, the one due since.
    assert [version for _, version, _ in store.saved] == [5, 41]
    assert_every_snapshot_is_the_fold_of_its_events(store)


async def test_a_failed_save_is_logged_and_tried_again_later(watched, caplog) -> None:
    store, aio = watched
    store.fail_with = StoreUnavailable("disk full")
    accounts = Accounts(aio, snapshot_every=10)
    with caplog.at_level(logging.WARNING, logger="account_service.snapshots"):
        await _open_and_deposit(accounts, 14, settle=True)
    assert "not saved" in caplog.text
    assert store.saved == []
    store.fail_with = None
    await _open_and_deposit(accounts, 10, first=14)  # versions 16..25: due again at 20
    await accounts.close()
    assert [version for _, version, _ in store.saved] == [20]
    assert_every_snapshot_is_the_fold_of_its_events(store)


async def test_snapshots_space_out_as_the_account_remembers_more(watched) -> None:
    # A snapshot's size grows with every reference the account remembers; it is taken at
    # least a tenth of that many events after the previous one, so its cost per event
    # stays bounded on an account that lives long.
    store, aio = watched
    accounts = Accounts(aio, snapshot_every=2)
    await _open_and_deposit(accounts, 80, settle=True)
    await accounts.close()
    versions = [version for _, version, _ in store.saved]

    def due(version: int, since: int) -> bool:
        remembered = version - 1  # one deposit reference per event after the opening
        return version - since >= max(2, remembered // 10)

    # Each snapshot at the first version due after the one before, and none due at the end.
    assert versions[0] == 2
    for before, after in itertools.pairwise([*versions, 82]):
        assert after == 82 or due(after, before), versions
        assert not any(due(v, before) for v in range(before + 1, after)), versions
    assert versions[-1] - versions[-2] > 2
    assert_every_snapshot_is_the_fold_of_its_events(store)


async def test_snapshot_every_zero_saves_none(watched) -> None:
    store, aio = watched
    accounts = Accounts(aio, snapshot_every=0)
    await _open_and_deposit(accounts, 30)
    await accounts.close()
    assert store.saved == []


async def test_no_snapshot_after_close(watched) -> None:
    store, aio = watched
    accounts = Accounts(aio, snapshot_every=3)
    await accounts.close()
    await _open_and_deposit(accounts, 10)
    assert store.saved == []


async def test_snapshots_of_two_writers_racing_on_one_account_are_all_true(watched) -> None:
    """Two services on one database: appends conflict, accounts are reloaded, and every
    snapshot either writes must still be the fold of the stored events up to it."""
    store, aio = watched
    one, two = Accounts(aio, snapshot_every=3), Accounts(aio, snapshot_every=4)
    await one.execute(ACCOUNT_ID, lambda account: account.open("Ada", "EUR"))

    async def deposits(accounts: Accounts, first: int) -> None:
        for n in range(first, first + 40):
            while True:
                try:
                    await accounts.execute(ACCOUNT_ID, _deposit(n))
                    break
                except ContentionTooHigh:  # the caller may retry, and does
                    await asyncio.sleep(0)

    await asyncio.gather(deposits(one, 0), deposits(two, 1000))
    await one.close()
    await two.close()
    assert_every_snapshot_is_the_fold_of_its_events(store)
    final = await Accounts(aio).get(ACCOUNT_ID)
    assert final.version == 81
    # Newest snapshot kept.
    kept = store.inner.load_snapshot(stream_id(ACCOUNT_ID))
    assert kept is not None
    assert kept.version == max(version for _, version, _ in store.saved)


def test_snapshot_every_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        Accounts(AsyncEventStore(InMemoryEventStore()), snapshot_every=-1)
