"""The history half of the ``EventStore`` contract, run against every backend (mixed into
``EventStoreConformance``): checkpoints kept with the events and found by version or by
time, and tags read in either order between times."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from event_store import (
    AppendRequest,
    Checkpoint,
    ConcurrencyConflict,
    EventStore,
    NewCheckpoint,
    NewEvent,
    RecordedEvent,
)


def ev(n: int, tags: tuple[str, ...] = ()) -> NewEvent:
    return NewEvent("Happened", {"n": n}, tags)


def cp(version: int, **data: Any) -> NewCheckpoint:
    return NewCheckpoint(version, data)


def numbers(events: list[RecordedEvent]) -> list[int]:
    return [e.data["n"] for e in events]


def tagged_one_by_one(store: EventStore, count: int, tag: str = "t") -> list[RecordedEvent]:
    """``count`` events carrying ``tag``, each appended alone, at increasing times."""
    recorded: list[RecordedEvent] = []
    for n in range(count):
        recorded += store.append(f"s{n}", 0, [ev(n, (tag,))])
        while recorded[-1].recorded_at >= datetime.now(UTC):  # the next one, a later time
            time.sleep(0.0001)
    assert [e.recorded_at for e in recorded] == sorted({e.recorded_at for e in recorded})
    return recorded


class HistoryConformance:
    # --- checkpoints, kept by appends ---

    def test_a_stream_without_checkpoints_has_none(self, store: EventStore) -> None:
        store.append("s", 0, [ev(1)])
        assert store.load_checkpoint("s") is None
        assert store.load_checkpoint("s", version=1) is None
        assert store.load_checkpoint("nobody") is None

    def test_an_append_keeps_its_checkpoints_with_its_time(self, store: EventStore) -> None:
        recorded = store.append("s", 0, [ev(1), ev(2), ev(3)], checkpoints=[cp(2, n=2), cp(3, n=3)])
        when = recorded[0].recorded_at
        assert store.load_checkpoint("s") == Checkpoint("s", 3, {"n": 3}, when)
        assert store.load_checkpoint("s", version=2) == Checkpoint("s", 2, {"n": 2}, when)

    def test_the_nearest_checkpoint_at_or_below_a_version_is_found(self, store: EventStore) -> None:
        store.append("s", 0, [ev(n) for n in range(1, 11)], checkpoints=[cp(4, n=4), cp(8, n=8)])
        store.append("s", 10, [ev(11), ev(12)], checkpoints=[cp(12, n=12)])
        found = {v: store.load_checkpoint("s", version=v) for v in (3, 4, 7, 8, 11, 12, 99)}
        assert {v: c.version if c else None for v, c in found.items()} == {
            3: None,
            4: 4,
            7: 4,
            8: 8,
            11: 8,
            12: 12,
            99: 12,
        }

    def test_the_latest_checkpoint_recorded_by_a_time_is_found(self, store: EventStore) -> None:
        first = store.append("s", 0, [ev(1), ev(2)], checkpoints=[cp(2, n=2)])
        time.sleep(0.002)
        second = store.append("s", 2, [ev(3), ev(4)], checkpoints=[cp(3, n=3), cp(4, n=4)])
        before_both = first[0].recorded_at - timedelta(microseconds=1)
        assert store.load_checkpoint("s", time=before_both) is None
        assert store.load_checkpoint("s", time=first[0].recorded_at).version == 2
        between = second[0].recorded_at - timedelta(microseconds=1)
        assert store.load_checkpoint("s", time=between).version == 2
        # Two checkpoints of one append share its time: the higher version is the later.
        assert store.load_checkpoint("s", time=second[0].recorded_at).version == 4
        assert store.load_checkpoint("s", time=datetime.now(UTC) + timedelta(days=1)).version == 4

    def test_checkpoints_are_per_stream(self, store: EventStore) -> None:
        store.append_batch(
            [
                AppendRequest("a", 0, [ev(1)], checkpoints=[cp(1, of="a")]),
                AppendRequest("b", 0, [ev(1), ev(2)], checkpoints=[cp(2, of="b")]),
            ]
        )
        assert store.load_checkpoint("a").data == {"of": "a"}
        assert store.load_checkpoint("b").data == {"of": "b"}
        assert store.load_checkpoint("b", version=1) is None

    @pytest.mark.parametrize("versions", [[0], [4], [2, 1], [2, 2]])
    def test_a_checkpoint_at_a_version_the_append_does_not_write_is_value_error(
        self, store: EventStore, versions: list[int]
    ) -> None:
        store.append("s", 0, [ev(1)])
        with pytest.raises(ValueError):
            store.append("s", 1, [ev(2), ev(3)], checkpoints=[cp(v) for v in versions])
        assert store.stream_version("s") == 1
        assert store.load_checkpoint("s") is None

    def test_checkpoint_data_that_is_not_json_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.append("s", 0, [ev(1)], checkpoints=[cp(1, when=datetime.now(UTC))])
        assert store.stream_version("s") == 0
        assert store.load_checkpoint("s") is None

    def test_a_conflicting_append_keeps_no_checkpoint(self, store: EventStore) -> None:
        store.append("s", 0, [ev(1)])
        with pytest.raises(ConcurrencyConflict):
            store.append("s", 0, [ev(1)], checkpoints=[cp(1, lost=True)])
        assert store.load_checkpoint("s") is None

    def test_a_checkpoint_is_found_by_version_or_time_not_both(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.load_checkpoint("s", version=1, time=datetime.now(UTC))

    def test_a_naive_time_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.load_checkpoint("s", time=datetime.now())  # naive: no time zone

    def test_a_second_handle_sees_the_checkpoints(
        self, store: EventStore, store_factory: Callable[[], EventStore]
    ) -> None:
        store.append("s", 0, [ev(1)], checkpoints=[cp(1, n=1)])
        assert store_factory().load_checkpoint("s", version=1).data == {"n": 1}

    # --- checkpoints, saved after the fact ---

    def test_missing_checkpoints_are_saved_with_their_versions_times(
        self, store: EventStore
    ) -> None:
        first = store.append("s", 0, [ev(1), ev(2)])
        time.sleep(0.002)
        second = store.append("s", 2, [ev(3)])
        store.save_checkpoints("s", [cp(2, n=2), cp(3, n=3)])
        assert store.load_checkpoint("s", version=2) == Checkpoint(
            "s", 2, {"n": 2}, first[0].recorded_at
        )
        assert store.load_checkpoint("s") == Checkpoint("s", 3, {"n": 3}, second[0].recorded_at)
        assert store.load_checkpoint("s", time=first[0].recorded_at).version == 2

    def test_saving_keeps_a_checkpoint_already_there(self, store: EventStore) -> None:
        store.append("s", 0, [ev(1)], checkpoints=[cp(1, n="kept")])
        store.save_checkpoints("s", [cp(1, n="later")])
        assert store.load_checkpoint("s").data == {"n": "kept"}

    def test_saving_ignores_versions_the_stream_has_not_reached(self, store: EventStore) -> None:
        store.append("s", 0, [ev(1)])
        store.save_checkpoints("s", [cp(2, n=2)])
        store.save_checkpoints("nobody", [cp(1, n=1)])
        store.save_checkpoints("s", [])
        assert store.load_checkpoint("s") is None
        assert store.load_checkpoint("nobody") is None
        # Reached later, by an append of its own: that one's checkpoint is kept.
        store.append("s", 1, [ev(2)])
        store.save_checkpoints("s", [cp(2, n=2)])
        assert store.load_checkpoint("s").version == 2

    def test_saving_a_checkpoint_at_a_version_below_one_is_value_error(
        self, store: EventStore
    ) -> None:
        store.append("s", 0, [ev(1)])
        with pytest.raises(ValueError):
            store.save_checkpoints("s", [cp(0)])

    # --- tags, in either order, between times ---

    def test_read_tag_oldest_first(self, store: EventStore) -> None:
        store.append("a", 0, [ev(1, ("t",)), ev(2)])
        store.append("b", 0, [ev(3, ("t",))])
        store.append("a", 2, [ev(4, ("t",))])
        assert numbers(store.read_tag("t", oldest_first=True)) == [1, 3, 4]
        assert numbers(store.read_tag("t", oldest_first=True, limit=2)) == [1, 3]

    @pytest.mark.parametrize("oldest_first", [True, False])
    def test_read_tag_pages_through_everything_in_either_order(
        self, store: EventStore, oldest_first: bool
    ) -> None:
        store.append("a", 0, [ev(n, ("t",)) for n in range(4)])  # one time for all four
        for n in range(4, 9):
            store.append(f"s{n}", 0, [ev(n, ("t", "other"))])
        seen: list[int] = []
        cursor = None
        while page := store.read_tag("t", cursor, 3, oldest_first=oldest_first):
            seen += numbers(page)
            cursor = page[-1].position
        assert seen == (list(range(9)) if oldest_first else list(range(8, -1, -1)))

    def test_read_tag_between_times_is_exclusive_at_both_ends(self, store: EventStore) -> None:
        events = tagged_one_by_one(store, 6)
        after, before = events[1].recorded_at, events[4].recorded_at
        between = store.read_tag("t", recorded_after=after, recorded_before=before)
        assert numbers(between) == [3, 2]
        oldest = store.read_tag(
            "t", oldest_first=True, recorded_after=after, recorded_before=before
        )
        assert numbers(oldest) == [2, 3]
        assert numbers(store.read_tag("t", recorded_after=events[4].recorded_at)) == [5]
        assert numbers(store.read_tag("t", recorded_before=events[1].recorded_at)) == [0]
        assert store.read_tag("t", recorded_after=before, recorded_before=after) == []

    @pytest.mark.parametrize("oldest_first", [True, False])
    def test_read_tag_between_times_pages_within_them(
        self, store: EventStore, oldest_first: bool
    ) -> None:
        events = tagged_one_by_one(store, 9)
        bounds = {
            "recorded_after": events[1].recorded_at,
            "recorded_before": events[8].recorded_at,
        }
        seen: list[int] = []
        cursor = None
        while page := store.read_tag("t", cursor, 2, oldest_first=oldest_first, **bounds):
            seen += numbers(page)
            cursor = page[-1].position
        assert seen == (list(range(2, 8)) if oldest_first else list(range(7, 1, -1)))

    def test_read_tag_after_an_event_of_another_tag_goes_on_from_its_time(
        self, store: EventStore
    ) -> None:
        events = tagged_one_by_one(store, 3)
        (other,) = store.append("o", 0, [ev(9, ("other",))])
        assert numbers(store.read_tag("t", other.position)) == [2, 1, 0]
        assert store.read_tag("t", other.position, oldest_first=True) == []
        assert numbers(store.read_tag("t", events[1].position, oldest_first=True)) == [2]

    def test_read_tag_after_a_position_with_no_event_is_value_error(
        self, store: EventStore
    ) -> None:
        (event,) = store.append("a", 0, [ev(1, ("t",))])
        with pytest.raises(ValueError):
            store.read_tag("t", event.position + 1000)

    def test_read_tag_with_a_naive_time_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.read_tag("t", recorded_after=datetime.now())  # naive: no time zone
