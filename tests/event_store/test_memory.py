"""The in-memory store against the conformance suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from event_store import EventStore, InMemoryEventStore, NewEvent, open_store
from tests.event_store.conformance import EventStoreConformance


class TestInMemoryEventStore(EventStoreConformance):
    @pytest.fixture
    def store_factory(self) -> Iterator[Callable[[], EventStore]]:
        # One instance is the whole "database": every handle is the same object.
        store = InMemoryEventStore()
        yield lambda: store
        store.close()


def test_open_store_memory_url() -> None:
    assert isinstance(open_store("memory://"), InMemoryEventStore)


def test_memory_stores_are_separate() -> None:
    first, second = open_store("memory://"), open_store("memory://")
    first.append("a", 0, [NewEvent("Happened", {})])
    assert second.stream_version("a") == 0


def test_mutating_returned_data_does_not_change_the_store() -> None:
    store = InMemoryEventStore()
    (recorded,) = store.append("a", 0, [NewEvent("Happened", {"items": [1]})])
    recorded.data["items"].append(2)
    store.read_stream("a")[0].data["items"].append(3)
    assert store.read_stream("a")[0].data == {"items": [1]}


def test_unknown_url_scheme_is_value_error() -> None:
    with pytest.raises(ValueError, match="unsupported event store URL"):
        open_store("mysql://localhost/db")
