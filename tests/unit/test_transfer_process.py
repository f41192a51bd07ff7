"""The transfer process against in-memory fakes of its ports (the account side runs the real
account aggregate): outcomes, faults, restarts, stale drivers, legs and pending holds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.fakes import FakeAccounts, InMemoryTransferRepository
from transfer_service.domain import (
    Action,
    Applied,
    Leg,
    Refused,
    Transfer,
    TransferCompleted,
    TransferCredited,
    TransferFailed,
    TransferRefused,
    TransferReserved,
    TransferState,
    Undecided,
    requested,
)
from transfer_service.process import (
    AFTER_CAPTURE_ANSWERED,
    AFTER_RECORD_REFUSED,
    AFTER_RECORD_REQUESTED,
    AFTER_RESERVE_ANSWERED,
    POINTS,
    Backoff,
    OwnershipLost,
    TransferProcess,
)

TID = "11111111-1111-4111-8111-111111111111"
SRC = "22222222-2222-4222-8222-222222222222"
DST = "33333333-3333-4333-8333-333333333333"
FEE = "44444444-4444-4444-8444-444444444444"
OTHER = "55555555-5555-4555-8555-555555555555"
AMOUNT = 300


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Crash(Exception):
    """The process dying at a crash point."""


class World:
    def __init__(self, *, src_balance: int = 1000) -> None:
        self.accounts = FakeAccounts()
        self.accounts.open(SRC, "EUR", src_balance)
        self.accounts.open(DST, "EUR", 50)
        self.repo = InMemoryTransferRepository()
        self.sleep = RecordingSleep()
        self.points: list[str] = []
        self.retries: list[tuple[str, str, Exception]] = []
        self.backoff = Backoff(sleep=self.sleep, random=lambda: 1.0)
        self.process = self.new_process()

    def new_process(self, crash_at: str | None = None) -> TransferProcess:
        def crash_point(point: str) -> None:
            self.points.append(point)
            if point == crash_at:
                raise Crash(point)

        return TransferProcess(
            self.accounts,
            self.repo,
            backoff=self.backoff,
            crash_point=crash_point,
            on_retry=lambda *retry: self.retries.append(retry),
        )

    async def request(self, *legs: Leg, pending: bool = False, expires_after: int = 0) -> Transfer:
        legs = legs or (Leg(SRC, DST, AMOUNT),)
        event = requested(TID, legs, pending=pending, expires_after=expires_after)
        return await self.process.record(Transfer.empty(TID), [event], 1)

    async def run(self, *legs: Leg, pending: bool = False) -> Transfer:
        transfer = await self.request(*legs, pending=pending)
        return await self.process.drive(transfer, 1)

    async def decide(self, events: list, epoch: int = 1) -> Transfer:
        transfer = await self.repo.load(TID)
        assert transfer is not None
        return await self.process.record(transfer, events, epoch)

    def total(self) -> int:
        return self.accounts.total_balance()


# --- simple transfers --------------------------------------------------------------------


async def test_a_transfer_is_one_chain_and_two_records():
    world = World()
    done = await world.run()
    assert done.state is TransferState.COMPLETED
    assert (done.currency, done.posted_amount) == ("EUR", AMOUNT)
    assert world.accounts.actions_called() == ["reserve", "credit", "capture"]
    assert world.repo.record_calls == 2
    assert world.repo.events(TID)[1:] == [
        TransferReserved("EUR"),
        TransferCredited(),
        TransferCompleted(),
    ]
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (700, 350)
    assert world.accounts.open_holds() == {}


async def test_every_step_carries_the_reference_and_the_epoch():
    world = World()
    transfer = await world.request()
    world.repo.epochs[TID] = 7
    await world.process.drive(transfer, 7)
    assert {(c.reference, c.epoch) for c in world.accounts.calls} == {(TID, 7)}


async def test_insufficient_funds_fails_and_moves_nothing():
    world = World(src_balance=100)
    done = await world.run()
    assert (done.state, done.failure_reason) == (TransferState.FAILED, "INSUFFICIENT_FUNDS")
    assert world.accounts.actions_called() == ["reserve"]
    assert world.total() == 150


async def test_a_refused_credit_is_recorded_before_the_hold_is_released():
    world = World()
    world.accounts.open(OTHER, "EUR", 0, closed=True)
    done = await world.run(Leg(SRC, OTHER, AMOUNT))
    assert (done.state, done.failure_reason) == (TransferState.FAILED, "ACCOUNT_CLOSED")
    assert world.accounts.actions_called() == ["reserve", "credit", "release"]
    events = world.repo.events(TID)
    assert TransferRefused("ACCOUNT_CLOSED", "credit", 0) in events
    assert world.accounts.balance(SRC) == 1000
    assert world.accounts.open_holds() == {}


async def test_a_credit_in_another_currency_fails_with_currency_mismatch():
    world = World()
    world.accounts.open(OTHER, "USD", 0)
    done = await world.run(Leg(SRC, OTHER, AMOUNT))
    assert done.failure_reason == "CURRENCY_MISMATCH"
    assert world.accounts.balance(SRC) == 1000


# --- faults ------------------------------------------------------------------------------


async def test_an_unanswered_step_is_retried_with_backoff_until_decided():
    world = World()
    world.accounts.fail_next(Action.CREDIT, times=3)
    done = await world.run()
    assert done.state is TransferState.COMPLETED
    assert world.sleep.delays == [0.05, 0.1, 0.2]
    assert [step for _, step, _ in world.retries] == ["credit"] * 3
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (700, 350)


async def test_an_answer_lost_after_the_effect_is_answered_the_same_on_repeat():
    world = World()
    world.accounts.fail_next(Action.CAPTURE, after_effect=True)
    done = await world.run()
    assert done.state is TransferState.COMPLETED
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (700, 350)


async def test_a_refusal_lost_on_the_way_is_refused_again():
    world = World(src_balance=100)
    world.accounts.fail_next(Action.RESERVE, after_effect=True)

    async def funds_arrive_before_the_retry(delay: float) -> None:
        world.accounts.deposit(SRC, 1000, "meanwhile")

    world.backoff = Backoff(sleep=funds_arrive_before_the_retry, random=lambda: 1.0)
    world.process = world.new_process()
    done = await world.run()
    assert (done.state, done.failure_reason) == (TransferState.FAILED, "INSUFFICIENT_FUNDS")
    assert world.accounts.balance(SRC) == 1100


# --- restarts ----------------------------------------------------------------------------


@pytest.mark.parametrize("point", [AFTER_RESERVE_ANSWERED, AFTER_CAPTURE_ANSWERED])
async def test_a_restart_from_the_request_finishes_it_once(point):
    world = World()
    transfer = await world.request()
    with pytest.raises(Crash):
        await world.new_process(crash_at=point).drive(transfer, 1)
    stored = await world.repo.load(TID)
    assert stored is not None and stored.state is TransferState.REQUESTED
    done = await world.new_process().drive(stored, 1)
    assert done.state is TransferState.COMPLETED
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (700, 350)
    assert world.accounts.open_holds() == {}


async def test_a_reserve_settled_already_completes_from_the_settle_phase():
    # The capture happened before the record: a repeat reserve answers RESERVATION_SETTLED.
    world = World()
    transfer = await world.request()
    with pytest.raises(Crash):
        await world.new_process(crash_at=AFTER_CAPTURE_ANSWERED).drive(transfer, 1)
    stored = await world.repo.load(TID)
    world.accounts.calls.clear()
    done = await world.new_process().drive(stored, 1)
    assert world.accounts.actions_called() == ["reserve", "capture"]
    assert done.state is TransferState.COMPLETED


async def test_a_restart_after_the_refusal_record_releases_and_fails():
    world = World()
    world.accounts.open(OTHER, "EUR", 0, closed=True)
    transfer = await world.request(Leg(SRC, OTHER, AMOUNT))
    with pytest.raises(Crash):
        await world.new_process(crash_at=AFTER_RECORD_REFUSED).drive(transfer, 1)
    assert world.accounts.open_holds() == {SRC: {TID: AMOUNT}}
    stored = await world.repo.load(TID)
    done = await world.new_process().drive(stored, 1)
    assert done.state is TransferState.FAILED
    assert world.accounts.open_holds() == {}


# --- many drivers ------------------------------------------------------------------------


async def test_a_stale_driver_cannot_turn_a_refusal_into_a_credit():
    # Driver 2 fails the transfer (the target does not exist yet); the client opens the
    # target; driver 1, retrying from its old copy, gets the same refusal.
    world = World()
    transfer = await world.request(Leg(SRC, OTHER, AMOUNT))
    stale = Transfer.from_events(TID, [(e, None) for e in world.repo.events(TID)])
    epoch = world.repo.take_over(TID)
    done = await world.process.drive(transfer, epoch)
    assert (done.state, done.failure_reason) == (TransferState.FAILED, "ACCOUNT_NOT_FOUND")
    world.accounts.open(OTHER, "EUR", 0)
    with pytest.raises(OwnershipLost):
        await world.new_process().drive(stale, 1)
    assert world.accounts.balance(OTHER) == 0
    assert world.accounts.balance(SRC) == 1000
    assert world.accounts.open_holds() == {}


async def test_a_driver_whose_record_is_refused_for_its_epoch_stops():
    world = World()
    transfer = await world.request()
    world.repo.take_over(TID)
    with pytest.raises(OwnershipLost):
        await world.process.drive(transfer, 1)
    stored = await world.repo.load(TID)
    assert stored.state is TransferState.REQUESTED


async def test_a_step_fenced_by_a_newer_epoch_stops_the_driver():
    world = World()
    transfer = await world.request()
    world.repo.epochs[TID] = 3
    await world.process.drive(transfer, 3)  # the transfer's newest driver ends it
    world.accounts.calls.clear()
    with pytest.raises(OwnershipLost):
        await world.new_process().drive(
            Transfer.from_events(TID, [(world.repo.events(TID)[0], None)]), 2
        )
    assert world.accounts.actions_called() == ["reserve"]


# --- multi-leg ---------------------------------------------------------------------------


async def test_a_payment_with_a_fee_moves_every_leg():
    world = World()
    world.accounts.open(FEE, "EUR", 0)
    done = await world.run(Leg(SRC, DST, 200), Leg(SRC, FEE, 5))
    assert done.state is TransferState.COMPLETED
    assert world.accounts.actions_called() == [
        "reserve",
        "hold_credit",
        "credit",
        "confirm_credit",
        "capture",
    ]
    assert [world.accounts.balance(a) for a in (SRC, DST, FEE)] == [795, 250, 5]
    assert world.accounts.open_holds() == {}


async def test_one_refused_leg_fails_every_leg_and_undoes_every_hold():
    world = World()
    world.accounts.open(OTHER, "EUR", 10)
    world.accounts.open(FEE, "EUR", 0)
    done = await world.run(Leg(SRC, DST, 200), Leg(OTHER, FEE, 50))
    assert (done.state, done.failure_reason) == (TransferState.FAILED, "INSUFFICIENT_FUNDS")
    assert world.repo.events(TID)[1] == TransferRefused("INSUFFICIENT_FUNDS", "hold", 1)
    assert world.accounts.actions_called() == ["reserve", "reserve", "release"]
    assert world.accounts.open_holds() == {}
    assert world.total() == 1060


async def test_a_refused_last_credit_cancels_the_held_credits():
    world = World()
    world.accounts.open(FEE, "EUR", 0, closed=True)
    done = await world.run(Leg(SRC, DST, 200), Leg(SRC, FEE, 5))
    assert done.failure_reason == "ACCOUNT_CLOSED"
    assert world.accounts.actions_called() == [
        "reserve",
        "hold_credit",
        "credit",
        "cancel_credit",
        "release",
    ]
    assert [world.accounts.balance(a) for a in (SRC, DST)] == [1000, 50]
    assert world.accounts.open_holds() == {}


async def test_legs_in_two_currencies_fail_with_currency_mismatch():
    world = World()
    world.accounts.open(OTHER, "USD", 500)
    done = await world.run(Leg(SRC, DST, 10), Leg(OTHER, DST, 10))
    assert done.failure_reason == "CURRENCY_MISMATCH"
    assert world.accounts.open_holds() == {}
    assert world.total() == 1550


# --- pending transfers -------------------------------------------------------------------


async def test_a_pending_transfer_rests_after_the_hold():
    world = World()
    held = await world.run(pending=True)
    assert held.state is TransferState.PENDING
    assert held.at_rest
    assert world.accounts.open_holds() == {SRC: {TID: AMOUNT}}


async def test_a_full_post_credits_and_captures():
    world = World()
    await world.run(pending=True)
    posting = await world.decide((await world.repo.load(TID)).post(0))
    done = await world.process.drive(posting, 1)
    assert (done.state, done.posted_amount) == (TransferState.COMPLETED, AMOUNT)
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (700, 350)


async def test_a_partial_post_moves_part_and_releases_the_rest():
    world = World()
    await world.run(pending=True)
    posting = await world.decide((await world.repo.load(TID)).post(120))
    done = await world.process.drive(posting, 1)
    assert (done.state, done.posted_amount) == (TransferState.COMPLETED, 120)
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (880, 170)
    assert world.accounts.open_holds() == {}


async def test_a_void_releases_the_hold():
    world = World()
    await world.run(pending=True)
    voiding = await world.decide((await world.repo.load(TID)).void())
    done = await world.process.drive(voiding, 1)
    assert done.state is TransferState.VOIDED
    assert world.accounts.open_holds() == {}
    assert world.accounts.balance(SRC) == 1000


async def test_an_expired_hold_is_released():
    world = World()
    transfer = await world.request(pending=True, expires_after=1_000_000)
    held = await world.process.drive(transfer, 1)
    assert held.expire(held.created_at) == []
    expiring = await world.decide(held.expire(datetime(2030, 1, 1, tzinfo=UTC)))
    done = await world.process.drive(expiring, 1)
    assert done.state is TransferState.EXPIRED
    assert world.accounts.open_holds() == {}


async def test_a_post_to_a_target_closed_meanwhile_releases_and_fails():
    world = World()
    await world.run(pending=True)
    world.accounts.withdraw(DST, 50, "empty it")
    world.accounts.close(DST)
    posting = await world.decide((await world.repo.load(TID)).post(0))
    done = await world.process.drive(posting, 1)
    assert (done.state, done.failure_reason) == (TransferState.FAILED, "ACCOUNT_CLOSED")
    assert world.accounts.open_holds() == {}
    assert world.accounts.balance(SRC) == 1000


async def test_a_stale_reserve_after_a_void_cannot_place_the_hold_again():
    world = World()
    await world.run(pending=True)
    voiding = await world.decide((await world.repo.load(TID)).void())
    await world.process.drive(voiding, 1)
    answers = await world.accounts.run(
        Transfer.from_events(TID, [(world.repo.events(TID)[0], None)]).next_steps()[0][1], TID, 1
    )
    assert isinstance(answers[0], Refused) and answers[0].reason == "RESERVATION_SETTLED"
    assert world.accounts.open_holds() == {}


# --- crash points and random faults -----------------------------------------------------


async def test_the_crash_points_are_named_once_each():
    assert len(POINTS) == len(set(POINTS))
    world = World()
    await world.run()
    assert world.points[:2] == [AFTER_RECORD_REQUESTED, AFTER_RESERVE_ANSWERED]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    faults=st.lists(
        st.tuples(st.sampled_from(list(Action)), st.booleans()), min_size=0, max_size=6
    ),
    crash=st.sampled_from([None, *POINTS]),
    legs=st.sampled_from(["one", "fee", "closed-fee"]),
)
def test_faults_and_a_restart_never_create_or_destroy_money(faults, crash, legs):
    async def scenario() -> None:
        world = World()
        world.accounts.open(FEE, "EUR", 0, closed=legs == "closed-fee")
        plan = (Leg(SRC, DST, AMOUNT),) if legs == "one" else (Leg(SRC, DST, 200), Leg(SRC, FEE, 5))
        for action, after in faults:
            world.accounts.fail_next(action, after_effect=after)
        total = world.total()
        try:
            transfer = await world.request(*plan)
            await world.new_process(crash_at=crash).drive(transfer, 1)
        except Crash:
            pass
        stored = await world.repo.load(TID)
        if stored is None:
            return
        done = await world.new_process().drive(stored, world.repo.take_over(TID))
        assert world.total() == total
        assert world.accounts.open_holds() == {}
        moved = world.accounts.balance(DST) - 50
        assert moved == (200 if legs != "one" else AMOUNT) * (done.state is TransferState.COMPLETED)
        assert done.is_terminal

    asyncio.run(scenario())


def test_answers_are_domain_values():
    assert Applied("EUR") != Undecided("x")
    assert TransferFailed("X") == TransferFailed("X")
