"""The snapshot half of the ``EventStore`` contract, run against every backend (mixed into
``EventStoreConformance``): one snapshot per stream, the newest kept."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_store import EventStore, Snapshot
from tests.event_store.common import INT64_MAX, INT64_MIN, ev, example_ids, json_values


class SnapshotConformance:
    def test_a_stream_without_a_snapshot_has_none(self, store: EventStore) -> None:
        store.append("s", 0, [ev()])
        assert store.load_snapshot("s") is None
        assert store.load_snapshot("nobody") is None

    def test_a_saved_snapshot_loads_back(self, store: EventStore) -> None:
        store.append("s", 0, [ev(), ev(), ev()])
        store.save_snapshot("s", 3, {"balance": 7, "refs": ["a", "b"]})
        assert store.load_snapshot("s") == Snapshot("s", 3, {"balance": 7, "refs": ["a", "b"]})

    def test_a_newer_snapshot_replaces_the_older(self, store: EventStore) -> None:
        store.save_snapshot("s", 2, {"n": 2})
        store.save_snapshot("s", 5, {"n": 5})
        assert store.load_snapshot("s") == Snapshot("s", 5, {"n": 5})

    def test_an_older_snapshot_is_ignored(self, store: EventStore) -> None:
        store.save_snapshot("s", 5, {"n": 5})
        store.save_snapshot("s", 2, {"n": 2})
        assert store.load_snapshot("s") == Snapshot("s", 5, {"n": 5})

    def test_a_snapshot_at_the_same_version_keeps_the_first(self, store: EventStore) -> None:
        store.save_snapshot("s", 5, {"n": "first"})
        store.save_snapshot("s", 5, {"n": "second"})
        assert store.load_snapshot("s") == Snapshot("s", 5, {"n": "first"})

    def test_snapshots_are_per_stream(self, store: EventStore) -> None:
        store.save_snapshot("a", 1, {"n": "a"})
        store.save_snapshot("b", 9, {"n": "b"})
        assert store.load_snapshot("a") == Snapshot("a", 1, {"n": "a"})
        assert store.load_snapshot("b") == Snapshot("b", 9, {"n": "b"})

    def test_snapshots_leave_the_events_alone(self, store: EventStore) -> None:
        recorded = store.append("s", 0, [ev(n=1, tags=("x",)), ev(n=2)])
        store.save_snapshot("s", 2, {"n": 2})
        assert store.read_stream("s") == recorded
        assert store.read_all() == recorded
        assert store.read_tag("x") == recorded[:1]
        assert store.stream_version("s") == 2
        assert [e.version for e in store.append("s", 2, [ev()])] == [3]

    def test_a_big_snapshot_round_trips(self, store: EventStore) -> None:
        data = {
            "format": 1,
            "deposits": {f"ref-{n:06d}-{'é' * (n % 3)}": n for n in range(100_000)},
            "holds": [["r", INT64_MAX, "2024-06-01T12:00:00.000001+00:00"], ["q", 1, None]],
            "nested": {"a": [{"b": None}, True, 1.5, INT64_MIN], "ключ": "价格 €5 🚀"},
        }
        store.save_snapshot("s", 100_000, data)
        loaded = store.load_snapshot("s")
        assert loaded is not None
        assert loaded.version == 100_000
        assert loaded.data == data
        assert list(loaded.data["deposits"]) == list(data["deposits"])

    def test_a_snapshot_with_a_huge_version_round_trips(self, store: EventStore) -> None:
        store.save_snapshot("s", INT64_MAX, {})
        assert store.load_snapshot("s") == Snapshot("s", INT64_MAX, {})

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(data=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
    def test_any_json_object_round_trips_as_a_snapshot(
        self, store: EventStore, data: dict[str, Any]
    ) -> None:
        stream_id = f"h-{next(example_ids)}"
        store.save_snapshot(stream_id, 1, data)
        assert store.load_snapshot(stream_id) == Snapshot(stream_id, 1, data)

    def test_a_mutated_snapshot_does_not_change_the_store(self, store: EventStore) -> None:
        store.save_snapshot("s", 1, {"items": [1]})
        loaded = store.load_snapshot("s")
        assert loaded is not None
        loaded.data["items"].append(2)
        assert store.load_snapshot("s") == Snapshot("s", 1, {"items": [1]})

    @pytest.mark.parametrize("version", [0, -1, True, 1.0, "3"])
    def test_a_snapshot_version_that_is_not_positive_is_value_error(
        self, store: EventStore, version: Any
    ) -> None:
        with pytest.raises(ValueError):
            store.save_snapshot("s", version, {})
        assert store.load_snapshot("s") is None

    def test_snapshot_data_that_is_not_json_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.save_snapshot("s", 1, {"when": datetime.now(UTC)})
        with pytest.raises(ValueError):
            store.save_snapshot("s", 1, {"x": float("nan")})
        with pytest.raises(ValueError):
            store.save_snapshot("s", 1, ["not", "a", "mapping"])  # type: ignore[arg-type]
        assert store.load_snapshot("s") is None

    def test_a_snapshot_of_an_overlong_stream_id_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.save_snapshot("s" * 201, 1, {})

    def test_a_second_handle_sees_the_snapshot(
        self, store: EventStore, store_factory: Callable[[], EventStore]
    ) -> None:
        store.save_snapshot("s", 4, {"n": 4})
        other = store_factory()
        other.migrate()
        assert other.load_snapshot("s") == Snapshot("s", 4, {"n": 4})
        other.save_snapshot("s", 6, {"n": 6})
        assert store.load_snapshot("s") == Snapshot("s", 6, {"n": 6})

    def test_concurrent_snapshots_keep_the_highest_version(
        self, store: EventStore, store_factory: Callable[[], EventStore]
    ) -> None:
        handles = [store, store_factory(), store_factory()]
        versions = list(range(1, 61))

        def save(who: int) -> None:
            for version in versions[who :: len(handles)]:
                handles[who].save_snapshot("s", version, {"v": version})

        with ThreadPoolExecutor(len(handles)) as pool:
            for result in [pool.submit(save, who) for who in range(len(handles))]:
                result.result()
        assert store.load_snapshot("s") == Snapshot("s", 60, {"v": 60})
