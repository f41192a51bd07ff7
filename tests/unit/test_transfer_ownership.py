"""Transfers owned through leases, several processes on one store: who drives a transfer,
who waits, who takes over, and how pending holds are posted, voided and expired. The
processes are ``Transfers`` instances on one in-memory event store; the account side is the
real account aggregate behind the port's fake."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from datetime import timedelta

import pytest

from event_store import AsyncEventStore, InMemoryEventStore, StoreUnavailable
from tests.unit.fakes import FakeAccounts
from transfer_service.application import TransferPending, TransferRefused, Transfers
from transfer_service.domain import Action, Leg, TransferNotPending, TransferState, requested
from transfer_service.process import Backoff, TransferProcess
from transfer_service.repository import StoredTransfers, stream_id

SRC = "22222222-2222-4222-8222-222222222222"
DST = "33333333-3333-4333-8333-333333333333"
T1 = "11111111-1111-4111-8111-111111111111"


async def _no_sleep(delay: float) -> None:
    await asyncio.sleep(0)


class Gate:
    """An account side that holds every chain until opened (a slow or unreachable peer)."""

    def __init__(self, accounts: FakeAccounts) -> None:
        self.accounts = accounts
        self.open = asyncio.Event()
        self.open.set()
        self._reached = asyncio.Event()
        self.arrived = 0  # chains that came to it

    async def reached(self) -> None:
        """Until a driver has come to the account side: its transfer recorded and claimed."""
        await asyncio.wait_for(self._reached.wait(), 10)

    def was_reached(self) -> bool:
        return self._reached.is_set()

    async def run(self, steps, reference, epoch, currency=""):
        self._reached.set()
        self.arrived += 1
        await self.open.wait()
        return await self.accounts.run(steps, reference, epoch, currency)

    async def run_many(self, chains):
        self._reached.set()
        await self.open.wait()
        async for wave in self.accounts.run_many(chains):
            yield wave


@pytest.fixture
async def store():
    async with AsyncEventStore(InMemoryEventStore()) as opened:
        yield opened


@pytest.fixture
def accounts() -> FakeAccounts:
    fake = FakeAccounts()
    fake.open(SRC, "EUR", 1000)
    fake.open(DST, "EUR", 0)
    return fake


def replica(store, port, *, lease_seconds=5.0, sweep=0.05) -> Transfers:
    repository = StoredTransfers(store, lease_seconds=lease_seconds)
    process = TransferProcess(port, repository, backoff=Backoff(sleep=_no_sleep, maximum=0.01))
    return Transfers(
        repository, process, sweep_interval=sweep, store_backoff=Backoff(0.01, maximum=0.05)
    )


async def _polled(process: Transfers, transfer_id: str, done) -> object:
    """The transfer as ``process`` reads it once ``done`` holds of it (or after 10 s)."""
    for _ in range(200):
        stored = await process.get(transfer_id)
        if done(stored):
            break
        await asyncio.sleep(0.05)
    return stored


async def _started_until_expired(process: Transfers) -> object:
    """T1 as ``process``, started (its sweeps running) and closed after, reads it once
    expired (or after 10 s)."""
    await process.start()
    try:
        return await _polled(process, T1, lambda t: t.state is TransferState.EXPIRED)
    finally:
        await process.close()


@contextlib.asynccontextmanager
async def _stopped_owner(store, accounts):
    """A process that recorded T1 and then neither renewed its lease nor got past the
    account side (as if frozen), its lease run out; the gate it is stuck at, to open.
    Closed on the way out."""
    gate = Gate(accounts)
    gate.open.clear()
    gone = replica(store, gate, lease_seconds=0.2)
    stuck = asyncio.create_task(gone.create(simple(), wait=5))
    await gate.reached()
    await asyncio.sleep(0.3)
    try:
        yield gate
    finally:
        await gone.close()
        await asyncio.gather(stuck, return_exceptions=True)


def simple(amount: int = 30, **options) -> object:
    return requested(T1, [Leg(SRC, DST, amount)], **options)


async def test_the_process_that_records_a_transfer_drives_it(store, accounts):
    one = replica(store, accounts)
    done = await one.create(simple())
    assert done.state is TransferState.COMPLETED
    assert await StoredTransfers(store).lease(T1) is None  # ended: no owner any more


async def test_another_process_waits_for_the_owner_and_answers_pending(store, accounts):
    gate = Gate(accounts)
    gate.open.clear()
    one, two = replica(store, gate), replica(store, accounts)
    driving = asyncio.create_task(one.create(simple()))
    await gate.reached()
    with pytest.raises(TransferPending):
        await two.create(simple(), wait=0.2)
    assert accounts.calls == []  # the second process never drove it
    gate.open.set()
    assert (await driving).state is TransferState.COMPLETED
    assert (await two.create(simple())).state is TransferState.COMPLETED
    assert accounts.balance(DST) == 30


async def test_a_transfer_whose_owner_stopped_renewing_is_taken_over(store, accounts):
    gate = Gate(accounts)
    gate.open.clear()
    one = replica(store, gate, lease_seconds=0.2)
    two = replica(store, accounts, lease_seconds=0.2)
    driving = asyncio.create_task(one.create(simple(), wait=5))
    await gate.reached()
    # The first process neither renews nor answers (as if frozen); the second takes over.
    await two.start()
    try:
        done = await two.create(simple(), wait=5)
    finally:
        await two.close()
    assert done.state is TransferState.COMPLETED
    gate.open.set()  # the old driver wakes up: fenced, it stores nothing and answers
    assert (
        await asyncio.wait_for(driving, 5)
    ).state is TransferState.COMPLETED  # the new owner's outcome
    assert accounts.balance(DST) == 30
    assert accounts.open_holds() == {}


async def test_a_fenced_driver_nobody_waits_for_ends_quietly(store, accounts, caplog):
    """Its caller was answered PENDING long ago; losing the transfer to its new owner is
    logged where it happens, not reported by the loop as an exception never retrieved."""
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    gate = Gate(accounts)
    gate.open.clear()
    one = replica(store, gate, lease_seconds=0.2)
    two = replica(store, accounts, lease_seconds=0.2)
    with pytest.raises(TransferPending):
        await one.create(simple(), wait=0.05)
    (driver,) = one._drivers.values()
    await two.start()
    try:
        assert (await two.create(simple(), wait=5)).state is TransferState.COMPLETED
    finally:
        await two.close()
    with caplog.at_level(logging.INFO, logger="transfer_service.application"):
        gate.open.set()
        await asyncio.wait([driver], timeout=5)
    assert driver.done() and not driver.cancelled()  # ended by OwnershipLost, logged:
    assert "its new owner drives it" in caplog.text
    del driver
    gc.collect()  # a task whose exception nobody retrieved is reported when collected
    await asyncio.sleep(0)
    assert reported == []
    assert accounts.balance(DST) == 30 and accounts.open_holds() == {}


async def test_a_process_closing_right_after_its_sweep_drives_nothing_it_took_up(store, accounts):
    gate = Gate(accounts)
    gate.open.clear()
    one = replica(store, gate)
    with pytest.raises(TransferPending):
        await one.create(simple(), wait=0.05)
    await one.close()  # the transfer is due for whoever comes next
    watched = Gate(accounts)
    two = replica(store, watched)
    await two.start()  # its sweep claims the transfer and starts taking it up
    await two.close()
    await asyncio.sleep(0.2)
    assert not watched.was_reached()  # closed before its driver reached the accounts
    assert await StoredTransfers(store).claim(T1) == 3  # due at once again
    gate.open.set()


class Broken:
    """An account side that fails in a way nothing expects."""

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, steps, reference, epoch, currency=""):
        self.calls += 1
        raise RuntimeError("no such thing")


async def test_a_driver_failing_unexpectedly_is_logged_once_wherever_it_started(
    store, accounts, caplog
):
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    first, second = Broken(), Broken()
    one = replica(store, first)
    with caplog.at_level(logging.ERROR, logger="transfer_service.application"):
        with pytest.raises(RuntimeError):
            await one.create(simple(), wait=5)  # the caller hears it
        await one.close()
        # Taken up by the next process's sweep (and again by its renewals, its driver having
        # failed): nobody waits for those drivers.
        two = replica(store, second)
        await two.start()
        for _ in range(200):
            if second.calls > 1:
                break
            await asyncio.sleep(0.01)
        await two.close()
        gc.collect()
        await asyncio.sleep(0)
    assert first.calls == 1 and second.calls > 1
    assert [r.getMessage() for r in caplog.records] == [f"transfer {T1}: its driver failed"] * (
        first.calls + second.calls
    )
    assert {r.exc_info[0] for r in caplog.records} == {RuntimeError}
    assert reported == []


async def test_a_transfer_whose_driver_keeps_failing_is_taken_up_less_and_less_often(store):
    """Taken up again after 2, 4, 8, 16 ... renewals with nothing driving it: retried for
    good, never in a tight loop."""
    broken = Broken()
    one = replica(store, broken, sweep=0.02)
    with pytest.raises(RuntimeError):
        await one.create(simple(), wait=5)
    await one.start()
    await asyncio.sleep(1.0)  # about 50 renewals: one failure every 2 would be 25 more
    await one.close()
    assert 3 <= broken.calls <= 8
    assert await StoredTransfers(store).lease(T1) is not None  # still unfinished, still owned


async def test_a_closed_process_takes_up_no_transfer(store, accounts):
    """A caller still waiting when the process closes is answered PENDING; the process
    does not claim the transfer again (that would keep it from the next owner)."""
    gate = Gate(accounts)
    gate.open.clear()
    one = replica(store, gate)
    answer = asyncio.create_task(one.create(simple(), wait=0.5))
    await gate.reached()
    await one.close()
    with pytest.raises(TransferPending):
        await answer
    assert one._drivers == {}
    assert await StoredTransfers(store).claim(T1) == 2  # due at once, for the next owner
    gate.open.set()


async def test_a_renewal_leaves_drivers_that_just_started_alone(store, accounts):
    one = replica(store, accounts)
    await one.start()
    try:
        done = await asyncio.gather(
            *(
                one.create(requested(f"{n:08d}-1111-4111-8111-111111111111", [Leg(SRC, DST, 1)]))
                for n in range(50)
            )
        )
    finally:
        await one.close()
    assert {t.state for t in done} == {TransferState.COMPLETED}


async def test_a_refused_transfer_answers_its_refusal_to_every_process(store, accounts):
    one, two = replica(store, accounts), replica(store, accounts)
    with pytest.raises(TransferRefused) as first:
        await one.create(simple(5000))
    with pytest.raises(TransferRefused) as again:
        await two.create(simple(5000))
    assert first.value.reason == again.value.reason == "INSUFFICIENT_FUNDS"


async def test_post_and_void_of_one_hold_from_two_processes_one_wins(store, accounts):
    one, two = replica(store, accounts), replica(store, accounts)
    held = await one.create(simple(pending=True))
    assert held.state is TransferState.PENDING
    outcomes = await asyncio.gather(one.post(T1, 10), two.void(T1), return_exceptions=True)
    won = [o for o in outcomes if not isinstance(o, Exception)]
    lost = [o for o in outcomes if isinstance(o, Exception)]
    assert len(won) == 1 and len(lost) == 1
    assert isinstance(lost[0], TransferNotPending)
    ended = won[0].state
    assert accounts.balance(DST) == (10 if ended is TransferState.COMPLETED else 0)
    assert accounts.open_holds() == {}


async def test_a_hold_expires_while_the_process_runs(store, accounts):
    one = replica(store, accounts)
    held = await one.create(simple(pending=True, expires_after=1_000_000))
    assert held.expires_at is not None
    stored = await _started_until_expired(one)
    assert stored.state is TransferState.EXPIRED
    assert accounts.open_holds() == {}
    assert stored.updated_at - held.expires_at < timedelta(seconds=2)


class Faltering(InMemoryEventStore):
    """A store whose appends fail while it is ``down``, as a database in an outage, and
    whose reads can turn slow."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0
        self.reads_before_down: int | None = None  # goes down after that many more reads
        self.rests_unanswered = 0
        self.appends_unanswered = 0
        self.reads_before_slow: int | None = None  # the read after that many takes a second
        self.slow_read_began = threading.Event()

    def _check(self) -> None:
        if self.down:
            self.refused += 1
            raise StoreUnavailable("the database is down")

    def append_batch(self, requests):
        self._check()
        appended = super().append_batch(requests)
        if self.appends_unanswered:  # stored, but the answer lost
            self.appends_unanswered -= 1
            raise StoreUnavailable("connection lost before the commit's answer")
        return appended

    def rest(self, key, epoch, until):
        self._check()
        rested = super().rest(key, epoch, until)
        if self.rests_unanswered:  # stored, but the answer lost: the caller must retry
            self.rests_unanswered -= 1
            raise StoreUnavailable("connection lost before the commit's answer")
        return rested

    def read_stream(self, stream_id, after_version=0, limit=None):
        if self.reads_before_down is not None:
            self.down = self.reads_before_down == 0
            self.reads_before_down -= 1
        if self.reads_before_slow is not None:
            self.reads_before_slow -= 1
            if self.reads_before_slow == -1:
                self.slow_read_began.set()
                time.sleep(1.0)
        self._check()
        return super().read_stream(stream_id, after_version, limit)


async def _expired_once_back(process: Transfers, faltering: Faltering) -> object:
    """Lets the outage last a moment, ends it, and reads T1 once it has expired."""
    await asyncio.sleep(0.2)
    faltering.down = False
    return await _polled(process, T1, lambda t: t.state is TransferState.EXPIRED)


@contextlib.asynccontextmanager
async def _a_hold_on_a_faltering_store(accounts):
    """One process on a store that can go down, T1 a pending hold that falls due in
    0.3 s; the process closed on the way out."""
    faltering = Faltering()
    async with AsyncEventStore(faltering) as store:
        one = replica(store, accounts)
        await one.create(simple(pending=True, expires_after=300_000))
        try:
            yield faltering, one
        finally:
            await one.close()


async def test_a_hold_falling_due_in_an_outage_expires_when_the_store_is_back(accounts):
    async with _a_hold_on_a_faltering_store(accounts) as (faltering, one):
        faltering.down = True
        await one.start()  # the sweep takes the hold up when due; its expiry is refused
        for _ in range(200):
            if faltering.refused:
                break
            await asyncio.sleep(0.01)
        assert faltering.refused
        stored = await _expired_once_back(one, faltering)
    assert stored.state is TransferState.EXPIRED
    assert accounts.open_holds() == {} and accounts.balance(SRC) == 1000


async def test_a_decision_refused_by_an_outage_leaves_the_hold_to_expire(accounts):
    async with _a_hold_on_a_faltering_store(accounts) as (faltering, one):
        await one.start()
        faltering.down = True
        # Claimed for the post; neither the post nor the lease's return to rest stored.
        with pytest.raises(StoreUnavailable):
            await one.post(T1, 0)
        stored = await _expired_once_back(one, faltering)
    assert stored.state is TransferState.EXPIRED
    assert accounts.open_holds() == {} and accounts.balance(SRC) == 1000


async def test_a_transfer_claimed_from_a_stopped_owner_in_an_outage_is_still_driven(accounts):
    faltering = Faltering()
    async with AsyncEventStore(faltering) as store, _stopped_owner(store, accounts):
        two = replica(store, accounts, lease_seconds=0.2)
        try:
            # A repeat of the request: read once, then the claim; the read after it fails.
            faltering.reads_before_down = 1
            with pytest.raises(StoreUnavailable):
                await two.create(simple(), wait=5)
            await two.start()  # renews what it owns; its sweep takes up only others' leases
            await asyncio.sleep(0.2)
            faltering.reads_before_down, faltering.down = None, False
            stored = await _polled(two, T1, lambda t: t.state is TransferState.COMPLETED)
        finally:
            await two.close()
    assert stored.state is TransferState.COMPLETED
    assert accounts.balance(DST) == 30 and accounts.open_holds() == {}


@pytest.mark.parametrize("batched", [False, True])
async def test_requests_stored_but_unanswered_are_driven_with_no_retry(accounts, batched):
    """The commit of the requests went through, its answer was lost: the caller heard
    UNAVAILABLE and never comes back; the transfers, leased here, are still driven."""
    ids = [f"{n:08d}-1111-4111-8111-111111111111" for n in range(3 if batched else 1)]
    requests = [requested(transfer_id, [Leg(SRC, DST, 10)]) for transfer_id in ids]
    faltering = Faltering()
    async with AsyncEventStore(faltering) as store:
        one = replica(store, accounts)
        faltering.appends_unanswered = 1
        if batched:
            answers = await one.create_many(requests)
            assert all(isinstance(answer, StoreUnavailable) for answer in answers)
        else:
            with pytest.raises(StoreUnavailable):
                await one.create(requests[0])
        await one.start()
        try:
            done = [await _polled(one, t, lambda t: t.is_terminal) for t in ids]
        finally:
            await one.close()
    assert {t.state for t in done} == {TransferState.COMPLETED}
    assert accounts.balance(DST) == 10 * len(ids) and accounts.open_holds() == {}


async def test_a_claim_slow_to_reach_its_driver_is_driven_once(accounts, caplog):
    """A caller's claim whose read then takes many renewals: the renewals take the lease
    up meanwhile, and the caller, once its read returns, joins or follows that driver;
    the money moves once."""
    faltering = Faltering()
    async with AsyncEventStore(faltering) as store, _stopped_owner(store, accounts):
        two = replica(store, accounts, lease_seconds=0.2)
        faltering.reads_before_slow = 1  # a repeat's first read, the claim, a slow read
        repeat = asyncio.create_task(two.create(simple(), wait=5))
        try:
            assert await asyncio.to_thread(faltering.slow_read_began.wait, 10)
            await two.start()  # its renewals see the lease, and nothing here driving it
            with caplog.at_level(logging.WARNING, logger="transfer_service.application"):
                done = await repeat
        finally:
            await two.close()
    assert done.state is TransferState.COMPLETED
    assert "owned here, nothing driving it" in caplog.text
    assert accounts.balance(DST) == 30 and accounts.balance(SRC) == 970
    assert accounts.open_holds() == {}


async def test_a_hold_whose_return_to_rest_went_unanswered_still_expires(accounts):
    """The driver that placed the hold stored its return to rest but never heard so: it
    tries again, and the hold still falls due and expires."""
    faltering = Faltering()
    async with AsyncEventStore(faltering) as store:
        one = replica(store, accounts)
        faltering.rests_unanswered = 1
        held = await one.create(simple(pending=True, expires_after=300_000), wait=5)
        assert held.state is TransferState.PENDING and faltering.rests_unanswered == 0
        await one.start()
        try:
            stored = await _polled(one, T1, lambda t: t.state is TransferState.EXPIRED)
        finally:
            await one.close()
    assert stored.state is TransferState.EXPIRED
    assert accounts.open_holds() == {} and accounts.balance(SRC) == 1000


async def test_a_sweep_that_claims_a_transfer_from_its_own_stale_driver_drives_it(store, accounts):
    """A driver here at epoch 1, stuck at the account side, while the transfer's lease fell
    due (say its return to rest was stored unanswered, and the hold expired): the sweep
    claims it at epoch 2 and must drive it at that epoch, not count on the stale driver,
    which is fenced at its next step."""
    gate = Gate(accounts)
    gate.open.clear()
    one = replica(store, gate)
    with pytest.raises(TransferPending):
        await one.create(simple(), wait=0.05)
    await gate.reached()
    assert await store.rest(stream_id(T1), 1, 0)  # due at once, nobody's
    assert await one._sweep() == 1  # claimed here, at epoch 2
    gate.open.set()
    stored = await _polled(one, T1, lambda t: t.is_terminal)
    assert stored.state is TransferState.COMPLETED
    assert (await StoredTransfers(store).lease(T1)) is None
    assert accounts.balance(DST) == 30 and accounts.open_holds() == {}
    await one.close()


async def test_a_lease_owned_here_with_nothing_driving_it_is_taken_up(store, accounts, caplog):
    """Whatever path claimed a transfer here and then ended without a driver (each known
    one hands its claim to a take-up), the renewals must not keep it here for good: a lease
    owned with nothing driving it at two renewals in a row is taken up."""
    async with _stopped_owner(store, accounts) as gate:
        repository = StoredTransfers(store, lease_seconds=0.2)
        process = TransferProcess(accounts, repository, backoff=Backoff(sleep=_no_sleep))
        two = Transfers(repository, process, sweep_interval=0.05)
        assert await repository.claim(T1) == 2  # claimed, and nothing drives it
        await two.start()
        try:
            with caplog.at_level(logging.WARNING, logger="transfer_service.application"):
                stored = await _polled(two, T1, lambda t: t.is_terminal)
        finally:
            await two.close()
        gate.open.set()  # the stale driver is fenced at its next step
    assert stored.state is TransferState.COMPLETED
    assert "owned here, nothing driving it" in caplog.text
    assert await StoredTransfers(store).lease(T1) is None
    assert accounts.balance(DST) == 30 and accounts.balance(SRC) == 970
    assert accounts.open_holds() == {}


async def test_leases_with_nothing_driving_them_are_taken_up_a_few_at_a_time(store, accounts):
    ids = [f"{n:08d}-1111-4111-8111-111111111111" for n in range(5)]
    stuck = Gate(accounts)
    stuck.open.clear()
    gone = replica(store, stuck, lease_seconds=0.2)
    for transfer_id in ids:
        with pytest.raises(TransferPending):
            await gone.create(requested(transfer_id, [Leg(SRC, DST, 10)]), wait=0.01)
    await asyncio.sleep(0.3)  # their leases run out
    gate = Gate(accounts)
    gate.open.clear()
    repository = StoredTransfers(store, lease_seconds=0.2)
    process = TransferProcess(gate, repository, backoff=Backoff(sleep=_no_sleep))
    two = Transfers(repository, process, sweep_interval=0.02, resume_concurrency=2)
    assert [await repository.claim(transfer_id) for transfer_id in ids] == [2] * 5
    await two.start()
    try:
        await asyncio.sleep(0.4)  # about 20 renewals
        assert gate.arrived == 2  # two taken up, held at the account side; three wait
        gate.open.set()
        done = [await _polled(two, t, lambda t: t.is_terminal) for t in ids]
    finally:
        await two.close()
        await gone.close()
    assert {t.state for t in done} == {TransferState.COMPLETED}
    assert accounts.balance(DST) == 50 and accounts.balance(SRC) == 950
    assert accounts.open_holds() == {}


async def test_a_new_process_finds_holds_that_expired_while_none_ran(store, accounts):
    one = replica(store, accounts)
    await one.create(simple(pending=True, expires_after=1_000_000))
    await asyncio.sleep(1.1)
    two = replica(store, accounts)
    stored = await _started_until_expired(two)  # the first sweep runs before start returns
    assert stored.state is TransferState.EXPIRED


async def test_a_sole_owner_takes_every_earlier_lease_at_start(store, accounts):
    gate = Gate(accounts)
    gate.open.clear()
    gone = replica(store, gate)
    never_answered = asyncio.create_task(gone.create(simple()))
    await gate.reached()
    repository = StoredTransfers(store)
    process = TransferProcess(accounts, repository, backoff=Backoff(sleep=_no_sleep))
    restarted = Transfers(repository, process, sole_owner=True)
    await restarted.start()
    try:
        stored = await _polled(restarted, T1, lambda t: t.is_terminal)
    finally:
        await restarted.close()
    assert stored.state is TransferState.COMPLETED
    never_answered.cancel()


async def test_a_resting_hold_claimed_by_a_waiting_caller_still_expires(store, accounts):
    """A caller on another process reads the transfer before its hold is placed and claims
    it just after it rests: what that process drives is the rest itself, so the lease goes
    back to rest instead of being renewed there forever (the hold would never expire)."""
    one, two = replica(store, accounts), replica(store, accounts)
    await one.create(simple(pending=True, expires_after=1_000_000))
    epoch = await two._repository.claim(T1)  # the claim the waiting caller makes
    assert epoch is not None
    assert (await two._driver(await two._load(T1), epoch)).state is TransferState.PENDING
    stored = await _started_until_expired(two)
    assert stored.state is TransferState.EXPIRED
    assert accounts.open_holds() == {}


async def test_a_batch_answers_each_item_in_order_and_pending_for_those_still_running(
    store, accounts
):
    gate = Gate(accounts)
    one = replica(store, gate)
    done = await one.create_many([simple(10)])
    assert [t.state for t in done] == [TransferState.COMPLETED]
    gate.open.clear()
    second = requested("44444444-4444-4444-8444-444444444444", [Leg(SRC, DST, 20)])
    third = requested("55555555-5555-4555-8555-555555555555", [Leg(SRC, DST, 5000)])
    answers = await one.create_many([second, third], wait=0.1)
    assert [type(a) for a in answers] == [TransferPending, TransferPending]
    gate.open.set()
    again = await one.create_many([second, third])  # a repeat: the same transfers' outcomes
    assert again[0].state is TransferState.COMPLETED
    assert isinstance(again[1], TransferRefused) and again[1].reason == "INSUFFICIENT_FUNDS"
    assert accounts.balance(DST) == 30 and accounts.balance(SRC) == 970


async def test_a_batch_item_held_up_in_the_batch_pass_is_driven_on_by_itself(store, accounts):
    one = replica(store, accounts)
    accounts.fail_next(Action.CREDIT)  # one chain of the pass goes unanswered
    items = [
        requested(f"{n}4444444-4444-4444-8444-444444444444", [Leg(SRC, DST, 10)])
        for n in range(1, 4)
    ]
    answers = await one.create_many(items)
    assert [a.state for a in answers] == [TransferState.COMPLETED] * 3
    assert accounts.balance(DST) == 30 and accounts.balance(SRC) == 970
    assert accounts.open_holds() == {}
    await asyncio.sleep(0.01)  # the pass ends once its last driver has answered
    assert not one._drivers and not one._together  # every driver and pass forgotten


async def test_a_repeat_of_a_batch_item_still_running_waits_for_the_same_driver(store, accounts):
    gate = Gate(accounts)
    one = replica(store, gate)
    gate.open.clear()
    item = requested("64444444-4444-4444-8444-444444444444", [Leg(SRC, DST, 10)])
    first = asyncio.create_task(one.create_many([item]))
    await gate.reached()
    repeat = asyncio.create_task(one.create(item))
    await asyncio.sleep(0.05)
    assert not repeat.done()
    gate.open.set()
    (answer,) = await first
    assert answer.state is TransferState.COMPLETED
    assert (await repeat).state is TransferState.COMPLETED
    assert accounts.balance(DST) == 10 and accounts.open_holds() == {}


async def test_closing_while_a_batch_pass_waits_leaves_its_transfers_to_the_next_owner(
    store, accounts
):
    gate = Gate(accounts)
    one = replica(store, gate)
    gate.open.clear()
    item = requested("74444444-4444-4444-8444-444444444444", [Leg(SRC, DST, 10)])
    answers = asyncio.create_task(one.create_many([item], wait=5))
    await gate.reached()
    await one.close()
    assert not one._together
    await asyncio.wait_for(answers, 5)  # answered (pending or taken over), not left hanging
    gate.open.set()
    two = replica(store, accounts)
    await two.start()
    try:
        stored = await _polled(two, item.transfer_id, lambda t: t.is_terminal)
    finally:
        await two.close()
    assert stored.state is TransferState.COMPLETED
    assert accounts.balance(DST) == 10 and accounts.open_holds() == {}
