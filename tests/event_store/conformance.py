"""The ``EventStore`` contract as tests, run against every backend.

A backend's test module subclasses ``EventStoreConformance`` and supplies the
``store_factory`` fixture: a callable returning a new handle (own connections) onto the
same, initially empty, database. Handles are closed by the fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_store import (
    AppendRequest,
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    NewEvent,
    OwnedByAnother,
    RecordedEvent,
)
from tests.event_store.common import INT64_MAX, INT64_MIN, ev, example_ids, json_values, summary
from tests.event_store.history_conformance import HistoryConformance
from tests.event_store.lease_conformance import LeaseConformance
from tests.event_store.snapshot_conformance import SnapshotConformance


@dataclass(frozen=True)
class Span:
    """Not a JSON value: a store refuses it rather than writing its fields."""

    start: int
    end: int


class EventStoreConformance(LeaseConformance, HistoryConformance, SnapshotConformance):
    @pytest.fixture
    def store_factory(self) -> Callable[[], EventStore]:
        raise NotImplementedError("a backend's test class provides store_factory")

    @pytest.fixture
    def store(self, store_factory: Callable[[], EventStore]) -> EventStore:
        store = store_factory()
        store.migrate()
        return store

    # --- append ------------------------------------------------------------------------

    def test_append_to_new_stream_numbers_versions_from_one(self, store: EventStore) -> None:
        recorded = store.append("s", 0, [ev(n=1), ev(n=2), ev(n=3)])
        assert [e.version for e in recorded] == [1, 2, 3]
        assert {e.stream_id for e in recorded} == {"s"}

    def test_append_assigns_increasing_positive_positions(self, store: EventStore) -> None:
        first = store.append("s", 0, [ev(), ev(), ev()])
        second = store.append("t", 0, [ev(), ev()])
        positions = [e.position for e in first + second]
        assert positions[0] > 0
        assert positions == sorted(set(positions))

    def test_append_continues_an_existing_stream(self, store: EventStore) -> None:
        store.append("s", 0, [ev(), ev()])
        recorded = store.append("s", 2, [ev(), ev()])
        assert [e.version for e in recorded] == [3, 4]

    def test_appended_events_read_back_equal(self, store: EventStore) -> None:
        recorded = store.append("s", 0, [ev("Opened", owner="ann"), ev("Deposited", amount=5)])
        assert store.read_stream("s") == recorded
        assert summary(recorded) == [
            ("s", 1, "Opened", {"owner": "ann"}),
            ("s", 2, "Deposited", {"amount": 5}),
        ]

    def test_an_append_returns_the_data_it_was_given_and_a_read_decodes_it(
        self, store: EventStore
    ) -> None:
        data = {"pair": (1, 2)}
        (recorded,) = store.append("s", 0, [NewEvent("Paired", data)])
        assert recorded.data is data  # not encoded and decoded again
        assert store.read_stream("s")[0].data == {"pair": [1, 2]}  # as JSON holds it

    def test_recorded_at_is_utc_and_shared_by_one_append(self, store: EventStore) -> None:
        recorded = store.append("s", 0, [ev(), ev(), ev()])
        stamps = {e.recorded_at for e in store.read_stream("s")}
        assert len(stamps) == 1
        (stamp,) = stamps
        assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
        assert recorded[0].recorded_at == stamp

    def test_recorded_at_is_the_time_of_the_append(self, store: EventStore) -> None:
        before = datetime.now(UTC)
        (recorded,) = store.append("s", 0, [ev()])
        after = datetime.now(UTC)
        slack = timedelta(seconds=1)
        assert before - slack <= recorded.recorded_at <= after + slack

    def test_streams_are_independent(self, store: EventStore) -> None:
        store.append("a", 0, [ev(), ev()])
        assert [e.version for e in store.append("b", 0, [ev()])] == [1]
        assert store.stream_version("a") == 2

    def test_empty_events_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.append("s", 0, [])
        assert store.read_all() == []

    def test_negative_expected_version_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.append("s", -1, [ev()])

    def test_overlong_stream_id_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.append("s" * 201, 0, [ev()])

    def test_tags_given_as_a_string_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.append("s", 0, [NewEvent("Happened", {}, "account:1")])  # type: ignore[arg-type]

    def test_data_that_is_not_json_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.append("s", 0, [ev(when=datetime.now(UTC))])
        with pytest.raises(ValueError):
            store.append("s", 0, [ev(x=float("nan"))])
        # Nested, beside nulls; a dataclass; text that is not Unicode, as a value and a key.
        for data in (
            {"a": [None, {"b": float("inf")}]},
            {"a": None, "b": -float("inf")},
            {"span": Span(1, 2)},
            {"text": "\ud800"},
            {"\udc00": 1},
        ):
            with pytest.raises(ValueError):
                store.append("s", 0, [NewEvent("Happened", data)])
        assert store.stream_version("s") == 0

    # --- data --------------------------------------------------------------------------

    def test_data_round_trips_unicode(self, store: EventStore) -> None:
        data = {"name": "Zoë Ångström", "note": "价格 €5 — ok 🚀", "ключ": '\u00a0\t\n"\\'}
        store.append("s", 0, [NewEvent("Named", data)])
        assert store.read_stream("s")[0].data == data

    def test_names_with_quotes_backslashes_braces_and_unicode_round_trip(
        self, store: EventStore
    ) -> None:
        name = "a \"b\" \\c {d,e} 'f' ü 🚀 NULL"
        recorded = store.append(name, 0, [NewEvent(name, {name: name}, (name, "{" + name))])
        (event,) = store.read_stream(name)
        assert recorded == [event]
        assert (event.stream_id, event.type, event.data) == (name, name, {name: name})
        assert store.read_tag(name) == [event]
        assert store.read_tag("{" + name) == [event]
        # The version check finds the stream by such a name, in a batch beside plain ones.
        (later, _) = store.append_batch(
            [AppendRequest(name, 1, [ev("Later")]), AppendRequest("plain", 0, [ev("First")])]
        )
        assert (later[0].stream_id, later[0].version) == (name, 2)
        for stale_or_behind in (1, 3):
            with pytest.raises(ConcurrencyConflict) as caught:
                store.append_batch([AppendRequest(name, stale_or_behind, [ev("Lost")])])
            assert caught.value.stream_id == name
        assert [e.type for e in store.read_stream(name)] == [name, "Later"]

    def test_data_round_trips_nested_structures(self, store: EventStore) -> None:
        data = {"a": {"b": {"c": [1, {"d": None}, [True, False]], "e": 1.5}}, "f": []}
        store.append("s", 0, [NewEvent("Nested", data)])
        assert store.read_stream("s")[0].data == data

    def test_data_round_trips_int64_extremes(self, store: EventStore) -> None:
        data = {"min": INT64_MIN, "max": INT64_MAX, "big": 10**30, "neg": -(10**30)}
        recorded = store.append("s", 0, [NewEvent("Big", data)])
        assert recorded[0].data == data
        assert store.read_stream("s")[0].data == data

    @settings(
        max_examples=25,
        deadline=None,
        # One fixture store serves all examples (each uses its own stream), and each
        # backend's subclass runs this same method.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(data=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
    def test_any_json_object_round_trips(self, store: EventStore, data: dict[str, Any]) -> None:
        stream_id = f"h-{next(example_ids)}"
        recorded = store.append(stream_id, 0, [NewEvent("Any", data)])
        assert recorded[0].data == data
        assert store.read_stream(stream_id)[0].data == data

    # --- read_stream / stream_version --------------------------------------------------

    def test_read_stream_after_a_version(self, store: EventStore) -> None:
        store.append("s", 0, [ev(n=n) for n in range(1, 6)])
        assert [e.version for e in store.read_stream("s", after_version=3)] == [4, 5]

    def test_read_stream_with_a_limit(self, store: EventStore) -> None:
        store.append("s", 0, [ev(n=n) for n in range(1, 6)])
        assert [e.version for e in store.read_stream("s", after_version=1, limit=2)] == [2, 3]

    def test_read_stream_only_returns_that_stream(self, store: EventStore) -> None:
        store.append("a", 0, [ev(), ev()])
        store.append("b", 0, [ev()])
        assert {e.stream_id for e in store.read_stream("a")} == {"a"}

    def test_read_stream_of_unknown_stream_is_empty(self, store: EventStore) -> None:
        assert store.read_stream("nobody") == []

    def test_stream_version_is_the_number_of_events(self, store: EventStore) -> None:
        store.append("s", 0, [ev(), ev()])
        store.append("s", 2, [ev()])
        assert store.stream_version("s") == 3

    def test_stream_version_of_unknown_stream_is_zero(self, store: EventStore) -> None:
        assert store.stream_version("nobody") == 0

    # --- optimistic concurrency ----------------------------------------------------------

    def test_expected_version_behind_is_conflict_and_stores_nothing(
        self, store: EventStore
    ) -> None:
        store.append("s", 0, [ev(), ev()])
        with pytest.raises(ConcurrencyConflict):
            store.append("s", 1, [ev(late=True)])
        assert store.stream_version("s") == 2
        assert all("late" not in e.data for e in store.read_all())

    def test_expected_version_ahead_is_conflict_and_stores_nothing(self, store: EventStore) -> None:
        store.append("s", 0, [ev()])
        with pytest.raises(ConcurrencyConflict):
            store.append("s", 3, [ev()])
        assert store.stream_version("s") == 1
        assert len(store.read_all()) == 1

    def test_expected_version_ahead_of_a_new_stream_is_conflict(self, store: EventStore) -> None:
        with pytest.raises(ConcurrencyConflict):
            store.append("s", 1, [ev()])
        assert store.read_all() == []

    def test_expected_version_zero_on_existing_stream_is_conflict(self, store: EventStore) -> None:
        store.append("s", 0, [ev()])
        with pytest.raises(ConcurrencyConflict):
            store.append("s", 0, [ev()])
        assert store.stream_version("s") == 1

    def test_conflict_names_stream_and_expected_version(self, store: EventStore) -> None:
        store.append("s", 0, [ev()])
        with pytest.raises(ConcurrencyConflict) as caught:
            store.append("s", 0, [ev()])
        assert (caught.value.stream_id, caught.value.expected_version) == ("s", 0)

    def test_store_keeps_working_after_a_conflict(self, store: EventStore) -> None:
        store.append("s", 0, [ev()])
        with pytest.raises(ConcurrencyConflict):
            store.append("s", 0, [ev()])
        assert [e.version for e in store.append("s", 1, [ev()])] == [2]
        assert [e.version for e in store.append("t", 0, [ev()])] == [1]

    def test_two_concurrent_appenders_on_one_stream_one_wins_each_round(
        self, store: EventStore, store_factory: Callable[[], EventStore]
    ) -> None:
        rounds = 50
        handles = [store, store_factory()]
        barrier = threading.Barrier(len(handles), timeout=30)
        won: list[list[bool]] = [[False] * rounds for _ in handles]

        def contend(who: int) -> None:
            for round_ in range(rounds):
                barrier.wait()
                try:
                    handles[who].append("contended", round_, [ev("Tick", by=who, round=round_)])
                    won[who][round_] = True
                except ConcurrencyConflict:
                    pass

        with ThreadPoolExecutor(len(handles)) as pool:
            for result in [pool.submit(contend, who) for who in range(len(handles))]:
                result.result()

        winners = [[w for w in range(len(handles)) if won[w][r]] for r in range(rounds)]
        assert all(len(w) == 1 for w in winners), winners
        stream = store.read_stream("contended")
        assert [e.version for e in stream] == list(range(1, rounds + 1))
        assert [e.data["by"] for e in stream] == [w[0] for w in winners]

    def test_concurrent_appends_to_distinct_streams_all_succeed(
        self, store: EventStore, store_factory: Callable[[], EventStore]
    ) -> None:
        handles = [store, store_factory(), store_factory()]

        def write(who: int) -> None:
            for n in range(20):
                handles[who].append(f"w{who}-{n}", 0, [ev(), ev()])

        with ThreadPoolExecutor(len(handles)) as pool:
            for result in [pool.submit(write, who) for who in range(len(handles))]:
                result.result()
        positions = [e.position for e in store.read_all(limit=1000)]
        assert len(positions) == len(handles) * 20 * 2
        assert positions == sorted(set(positions))

    # --- append_batch --------------------------------------------------------------------

    def test_append_batch_returns_results_in_request_order(self, store: EventStore) -> None:
        store.append("b", 0, [ev()])
        results = store.append_batch(
            [
                AppendRequest("c", 0, [ev(), ev()]),
                AppendRequest("b", 1, [ev()]),
                AppendRequest("a", 0, [ev()]),
            ]
        )
        assert [[(e.stream_id, e.version) for e in r] for r in results] == [
            [("c", 1), ("c", 2)],
            [("b", 2)],
            [("a", 1)],
        ]

    def test_append_batch_is_stored_as_returned(self, store: EventStore) -> None:
        results = store.append_batch(
            [AppendRequest("a", 0, [ev(n=1), ev(n=2)]), AppendRequest("b", 0, [ev(n=3)])]
        )
        assert store.read_stream("a") + store.read_stream("b") == results[0] + results[1]

    def test_append_batch_shares_one_recorded_at(self, store: EventStore) -> None:
        results = store.append_batch(
            [AppendRequest("a", 0, [ev()]), AppendRequest("b", 0, [ev(), ev()])]
        )
        assert len({e.recorded_at for r in results for e in r}) == 1

    def test_append_batch_with_one_conflict_stores_nothing(self, store: EventStore) -> None:
        store.append("taken", 0, [ev()])
        with pytest.raises(ConcurrencyConflict) as caught:
            store.append_batch(
                [
                    AppendRequest("fresh", 0, [ev(), ev()]),
                    AppendRequest("taken", 0, [ev()]),
                    AppendRequest("other", 0, [ev()]),
                ]
            )
        assert caught.value.stream_id == "taken"
        assert store.stream_version("fresh") == 0
        assert store.stream_version("other") == 0
        assert len(store.read_all()) == 1

    def test_append_batch_with_a_stream_behind_names_it_and_stores_nothing(
        self, store: EventStore
    ) -> None:
        store.append_batch([AppendRequest(s, 0, [ev(), ev()]) for s in ("a", "b", "c")])
        with pytest.raises(ConcurrencyConflict) as caught:
            store.append_batch(
                [
                    AppendRequest("a", 2, [ev()]),
                    AppendRequest("b", 3, [ev()]),  # b is at 2
                    AppendRequest("c", 2, [ev()]),
                    AppendRequest("new", 0, [ev()]),
                ]
            )
        assert (caught.value.stream_id, caught.value.expected_version) == ("b", 3)
        assert [store.stream_version(s) for s in ("a", "b", "c", "new")] == [2, 2, 2, 0]
        assert len(store.read_all()) == 6

    def test_large_append_batch_positions_and_tags_match_what_is_read(
        self, store: EventStore
    ) -> None:
        # More events and more tag rows than one insert statement of the SQL backends takes.
        store.append("s0", 0, [ev()])
        requests = [
            AppendRequest(f"s{n}", 1 if n == 0 else 0, [ev(n=n, tags=(f"t{n % 7}", "all"))])
            for n in range(150)
        ] + [AppendRequest("long", 0, [ev(n=n) for n in range(200)])]
        results = store.append_batch(requests)
        recorded = [e for r in results for e in r]
        assert [e.position for e in store.read_all(after_position=1, limit=1000)] == [
            e.position for e in recorded
        ]
        assert store.read_all(after_position=1, limit=1000) == recorded
        assert [e.position for e in recorded] == sorted({e.position for e in recorded})
        everything = store.read_tag("all", limit=1000)
        assert everything == list(reversed(recorded[:150]))
        assert [e.data["n"] for e in store.read_tag("t3", limit=1000)] == list(
            reversed(range(3, 150, 7))
        )

    def test_append_batch_with_the_same_stream_twice_is_value_error(
        self, store: EventStore
    ) -> None:
        with pytest.raises(ValueError):
            store.append_batch([AppendRequest("s", 0, [ev()]), AppendRequest("s", 1, [ev()])])
        assert store.read_all() == []

    def test_append_batch_with_an_empty_request_is_value_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.append_batch([AppendRequest("a", 0, [ev()]), AppendRequest("b", 0, [])])
        assert store.read_all() == []

    def test_append_batch_of_nothing_returns_nothing(self, store: EventStore) -> None:
        assert store.append_batch([]) == []

    # --- read_all ------------------------------------------------------------------------

    def test_read_all_is_in_global_order_across_streams(self, store: EventStore) -> None:
        store.append("a", 0, [ev(n=1)])
        store.append("b", 0, [ev(n=2), ev(n=3)])
        store.append("a", 1, [ev(n=4)])
        everything = store.read_all()
        assert [e.data["n"] for e in everything] == [1, 2, 3, 4]
        assert [e.position for e in everything] == sorted(e.position for e in everything)

    def test_read_all_after_a_position(self, store: EventStore) -> None:
        store.append("a", 0, [ev(n=n) for n in range(5)])
        everything = store.read_all()
        assert store.read_all(after_position=everything[1].position) == everything[2:]

    def test_read_all_with_a_limit(self, store: EventStore) -> None:
        store.append("a", 0, [ev(n=n) for n in range(3)])
        store.append("b", 0, [ev(n=n) for n in range(3)])
        everything = store.read_all()
        page = store.read_all(after_position=everything[0].position, limit=3)
        assert page == everything[1:4]

    def test_read_all_pages_through_everything(self, store: EventStore) -> None:
        for n in range(7):
            store.append(f"s{n}", 0, [ev(n=n)])
        seen: list[RecordedEvent] = []
        position = 0
        while page := store.read_all(after_position=position, limit=3):
            seen += page
            position = page[-1].position
        assert [e.data["n"] for e in seen] == list(range(7))

    def test_read_all_past_the_end_is_empty(self, store: EventStore) -> None:
        (last,) = store.append("a", 0, [ev()])
        assert store.read_all(after_position=last.position) == []

    # --- read_tag ------------------------------------------------------------------------

    def test_read_tag_is_newest_first(self, store: EventStore) -> None:
        store.append("a", 0, [ev(n=1, tags=("t",)), ev(n=2)])
        store.append("b", 0, [ev(n=3, tags=("t",))])
        store.append("a", 2, [ev(n=4, tags=("t",))])
        assert [e.data["n"] for e in store.read_tag("t")] == [4, 3, 1]

    def test_read_tag_before_a_position_paginates(self, store: EventStore) -> None:
        for n in range(7):
            store.append(f"s{n}", 0, [ev(n=n, tags=("t",))])
        seen: list[int] = []
        before = None
        while page := store.read_tag("t", start_after=before, limit=3):
            seen += [e.data["n"] for e in page]
            before = page[-1].position
        assert seen == [6, 5, 4, 3, 2, 1, 0]

    def test_read_tag_with_a_limit(self, store: EventStore) -> None:
        store.append("a", 0, [ev(n=n, tags=("t",)) for n in range(5)])
        assert [e.data["n"] for e in store.read_tag("t", limit=2)] == [4, 3]

    def test_an_event_with_several_tags_is_found_by_each(self, store: EventStore) -> None:
        store.append("a", 0, [ev(n=1, tags=("x", "y")), ev(n=2, tags=("y",))])
        assert [e.data["n"] for e in store.read_tag("x")] == [1]
        assert [e.data["n"] for e in store.read_tag("y")] == [2, 1]

    def test_a_tag_repeated_on_one_event_finds_it_once(self, store: EventStore) -> None:
        store.append("a", 0, [ev(n=1, tags=("x", "x"))])
        assert [e.data["n"] for e in store.read_tag("x")] == [1]

    def test_read_tag_returns_the_full_events(self, store: EventStore) -> None:
        recorded = store.append("a", 0, [ev("Tagged", tags=("x",), n=1)])
        assert store.read_tag("x") == recorded

    def test_read_tag_of_unknown_tag_is_empty(self, store: EventStore) -> None:
        store.append("a", 0, [ev(tags=("x",))])
        assert store.read_tag("nothing") == []

    def test_a_conflicting_append_leaves_no_tags(self, store: EventStore) -> None:
        store.append("a", 0, [ev(n=1)])
        with pytest.raises(ConcurrencyConflict):
            store.append("a", 0, [ev(n=2, tags=("x",))])
        assert store.read_tag("x") == []

    # --- owner ---------------------------------------------------------------------------

    def test_the_first_owner_claims_the_database_and_migrates_it_again(
        self, store_factory: Callable[[], EventStore]
    ) -> None:
        store = store_factory()
        store.migrate("account-service")
        store.append("a", 0, [ev()])
        store.migrate("account-service")
        store_factory().migrate("account-service")
        assert store.stream_version("a") == 1

    def test_another_owner_is_refused_naming_both_services(
        self, store_factory: Callable[[], EventStore]
    ) -> None:
        owner = store_factory()
        owner.migrate("account-service")
        recorded = owner.append("a", 0, [ev()])
        with pytest.raises(OwnedByAnother) as refused:
            store_factory().migrate("transfer-service")
        assert (refused.value.owner, refused.value.claimant) == (
            "account-service",
            "transfer-service",
        )
        assert "account-service" in str(refused.value)
        assert "transfer-service" in str(refused.value)
        assert isinstance(refused.value, EventStoreError)
        owner.migrate("account-service")  # the refusal changed nothing
        assert owner.read_all() == recorded

    def test_migrate_without_an_owner_neither_claims_nor_checks(
        self, store_factory: Callable[[], EventStore]
    ) -> None:
        store_factory().migrate()
        store_factory().migrate("transfer-service")
        store_factory().migrate()
        with pytest.raises(OwnedByAnother):
            store_factory().migrate("account-service")

    def test_of_owners_racing_to_claim_a_new_database_exactly_one_wins(
        self, store_factory: Callable[[], EventStore]
    ) -> None:
        owners = [f"service-{n}" for n in range(3)]
        handles = [store_factory() for _ in owners]

        def claim(index: int) -> str | None:
            try:
                handles[index].migrate(owners[index])
            except OwnedByAnother as refused:
                return refused.owner
            return owners[index]

        with ThreadPoolExecutor(len(handles)) as pool:
            seen = list(pool.map(claim, range(len(handles))))
        assert len(set(seen)) == 1 and seen[0] in owners

    @pytest.mark.parametrize("owner", ["", "x" * 101, "nul\x00"])
    def test_a_malformed_owner_is_value_error(self, store: EventStore, owner: str) -> None:
        with pytest.raises(ValueError):
            store.migrate(owner)

    # --- lifecycle, continued ------------------------------------------------------------

    def test_migrate_twice_is_harmless(self, store: EventStore) -> None:
        store.append("a", 0, [ev()])
        store.migrate()
        store.migrate()
        assert store.stream_version("a") == 1

    def test_concurrent_migrate_from_two_handles(
        self, store_factory: Callable[[], EventStore]
    ) -> None:
        handles = [store_factory() for _ in range(3)]
        with ThreadPoolExecutor(len(handles)) as pool:
            for result in [pool.submit(h.migrate) for h in handles]:
                result.result()
        handles[0].append("a", 0, [ev()])
        assert handles[-1].stream_version("a") == 1

    def test_ping_answers(self, store: EventStore) -> None:
        store.ping()

    def test_a_second_handle_sees_the_first_handles_events(
        self, store: EventStore, store_factory: Callable[[], EventStore]
    ) -> None:
        recorded = store.append("a", 0, [ev(n=1, tags=("x",))])
        other = store_factory()
        other.migrate()
        assert other.read_stream("a") == recorded
        assert other.read_tag("x") == recorded
        assert [e.version for e in other.append("a", 1, [ev(n=2)])] == [2]
        assert store.stream_version("a") == 2
