"""The lease half of the ``EventStore`` contract, run against every backend (mixed into
``EventStoreConformance``): leases written by appends, claimed, renewed, handed back."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from event_store import (
    AppendRequest,
    ConcurrencyConflict,
    EventStore,
    Lease,
    LeaseChange,
    LeaseLost,
    LeaseWrite,
    NewEvent,
)

EVENT = (NewEvent("Happened", {"n": 1}),)
NOW = 1_000_000_000


def created(store: EventStore, key: str = "work-1", owner: str = "a", until: int = NOW) -> None:
    store.append(key, 0, EVENT, LeaseWrite(LeaseChange.CREATE, owner=owner, until=until))


class LeaseConformance:
    # --- written by appends ---

    def test_an_append_creates_its_streams_lease_at_epoch_one(self, store: EventStore) -> None:
        created(store)
        assert store.lease("work-1") == Lease("work-1", "a", 1, NOW)

    def test_creating_a_lease_that_exists_is_a_conflict_and_stores_nothing(
        self, store: EventStore
    ) -> None:
        created(store)
        with pytest.raises(ConcurrencyConflict):
            store.append("work-1", 0, EVENT, LeaseWrite(LeaseChange.CREATE, owner="b", until=5))
        assert store.stream_version("work-1") == 1
        assert store.lease("work-1") == Lease("work-1", "a", 1, NOW)

    def test_an_append_that_keeps_the_lease_at_its_epoch_is_stored(self, store: EventStore) -> None:
        created(store)
        store.append("work-1", 1, EVENT, LeaseWrite(LeaseChange.KEEP, 1))
        assert store.stream_version("work-1") == 2

    @pytest.mark.parametrize("change", [LeaseChange.KEEP, LeaseChange.REST, LeaseChange.DROP])
    def test_an_append_at_an_older_epoch_is_lease_lost_and_stores_nothing(
        self, store: EventStore, change: LeaseChange
    ) -> None:
        created(store)
        assert store.claim("work-1", "b", NOW + 1, NOW + 100) == 2
        with pytest.raises(LeaseLost):
            store.append("work-1", 1, EVENT, LeaseWrite(change, 1, until=7))
        assert store.stream_version("work-1") == 1
        assert store.lease("work-1") == Lease("work-1", "b", 2, NOW + 100)

    def test_an_append_on_a_dropped_lease_is_lease_lost(self, store: EventStore) -> None:
        created(store)
        store.append("work-1", 1, EVENT, LeaseWrite(LeaseChange.DROP, 1))
        assert store.lease("work-1") is None
        with pytest.raises(LeaseLost):
            store.append("work-1", 2, EVENT, LeaseWrite(LeaseChange.KEEP, 1))

    def test_rest_hands_the_lease_back_until_it_falls_due(self, store: EventStore) -> None:
        created(store)
        store.append("work-1", 1, EVENT, LeaseWrite(LeaseChange.REST, 1, until=NOW + 50))
        assert store.lease("work-1") == Lease("work-1", "", 1, NOW + 50)

    def test_a_batch_with_one_lost_lease_stores_nothing(self, store: EventStore) -> None:
        created(store, "work-1")
        created(store, "work-2")
        store.claim("work-2", "b", NOW + 1, NOW + 100)
        with pytest.raises(LeaseLost):
            store.append_batch(
                [
                    AppendRequest("work-1", 1, EVENT, LeaseWrite(LeaseChange.DROP, 1)),
                    AppendRequest("work-2", 1, EVENT, LeaseWrite(LeaseChange.KEEP, 1)),
                ]
            )
        assert store.lease("work-1") is not None
        assert store.stream_version("work-1") == 1

    def test_a_batch_writes_every_lease(self, store: EventStore) -> None:
        store.append_batch(
            [
                AppendRequest(
                    f"w-{n}", 0, EVENT, LeaseWrite(LeaseChange.CREATE, owner="a", until=n)
                )
                for n in range(3)
            ]
        )
        store.append_batch(
            [
                AppendRequest("w-0", 1, EVENT, LeaseWrite(LeaseChange.DROP, 1)),
                AppendRequest("w-1", 1, EVENT, LeaseWrite(LeaseChange.REST, 1, until=9)),
                AppendRequest("w-2", 1, EVENT, LeaseWrite(LeaseChange.KEEP, 1)),
            ]
        )
        assert store.lease("w-0") is None
        assert store.lease("w-1") == Lease("w-1", "", 1, 9)
        assert store.lease("w-2") == Lease("w-2", "a", 1, 2)

    def test_a_lease_write_needs_an_epoch(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            store.append("w", 0, EVENT, LeaseWrite(LeaseChange.KEEP, 0))

    # --- claims ---

    def test_a_live_lease_of_another_owner_is_not_claimed(self, store: EventStore) -> None:
        created(store, until=NOW)
        assert store.claim("work-1", "b", NOW - 1, NOW + 100) is None
        assert store.lease("work-1") == Lease("work-1", "a", 1, NOW)

    def test_an_expired_lease_is_claimed_at_the_next_epoch(self, store: EventStore) -> None:
        created(store, until=NOW)
        assert store.claim("work-1", "b", NOW, NOW + 100) == 2
        assert store.lease("work-1") == Lease("work-1", "b", 2, NOW + 100)

    def test_a_lease_at_rest_is_claimed_whenever(self, store: EventStore) -> None:
        created(store)
        store.append("work-1", 1, EVENT, LeaseWrite(LeaseChange.REST, 1, until=NOW * 2))
        assert store.claim("work-1", "b", NOW, NOW + 100) == 2

    def test_the_holder_claims_again_at_the_same_epoch(self, store: EventStore) -> None:
        created(store, until=NOW)
        assert store.claim("work-1", "a", NOW - 5, NOW + 100) == 1
        assert store.lease("work-1") == Lease("work-1", "a", 1, NOW + 100)

    def test_no_lease_no_claim(self, store: EventStore) -> None:
        assert store.claim("nothing", "a", NOW, NOW + 1) is None

    def test_claim_due_takes_the_due_leases_of_others_oldest_first(self, store: EventStore) -> None:
        created(store, "w-late", owner="x", until=NOW - 1)
        created(store, "w-early", owner="x", until=NOW - 9)
        created(store, "w-live", owner="x", until=NOW + 9)
        created(store, "w-mine", owner="me", until=NOW - 20)
        assert store.claim_due("me", NOW, NOW + 100, limit=1) == [("w-early", 2)]
        assert store.claim_due("me", NOW, NOW + 100, limit=10) == [("w-late", 2)]
        assert store.lease("w-live") == Lease("w-live", "x", 1, NOW + 9)

    def test_claimers_at_the_same_moment_split_the_due_leases(
        self, store_factory: Callable[[], EventStore], store: EventStore
    ) -> None:
        for n in range(40):
            created(store, f"w-{n}", owner="gone", until=NOW - n)
        others = [store_factory() for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            got = list(
                pool.map(
                    lambda pair: pair[1].claim_due(f"c{pair[0]}", NOW, NOW + 100, 40),
                    enumerate(others),
                )
            )
        for other in others:
            other.close()
        keys = [key for claimed in got for key, _ in claimed]
        assert sorted(keys) == sorted(f"w-{n}" for n in range(40))

    def test_renew_moves_every_lease_of_the_owner(self, store: EventStore) -> None:
        created(store, "w-1", owner="a", until=NOW)
        created(store, "w-2", owner="a", until=NOW)
        created(store, "w-3", owner="b", until=NOW)
        assert store.renew("a", NOW + 500) == {"w-1": 1, "w-2": 1}
        assert store.lease("w-1") == Lease("w-1", "a", 1, NOW + 500)
        assert store.lease("w-3") == Lease("w-3", "b", 1, NOW)

    def test_rest_is_refused_at_another_epoch(self, store: EventStore) -> None:
        created(store)
        assert not store.rest("work-1", 2, NOW)
        assert store.rest("work-1", 1, NOW + 7)
        assert store.lease("work-1") == Lease("work-1", "", 1, NOW + 7)

    def test_abandon_makes_the_owners_leases_due(self, store: EventStore) -> None:
        created(store, "w-1", owner="a", until=NOW * 2)
        assert store.abandon("a", NOW) == 1
        assert store.claim_due("b", NOW, NOW + 1, 10) == [("w-1", 2)]

    def test_abandon_of_everyone_leaves_the_leases_at_rest_alone(self, store: EventStore) -> None:
        created(store, "w-1", owner="a", until=NOW * 2)
        created(store, "w-2", owner="b", until=NOW * 2)
        created(store, "w-3", owner="b", until=NOW * 2)
        store.append("w-3", 1, EVENT, LeaseWrite(LeaseChange.REST, 1, until=NOW * 3))
        assert store.abandon(None, NOW) == 2
        assert sorted(store.claim_due("c", NOW, NOW + 1, 10)) == [("w-1", 2), ("w-2", 2)]
