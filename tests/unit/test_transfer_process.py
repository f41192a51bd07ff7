"""The transfer process (the reservation protocol) against in-memory fakes of its ports."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_kernel.errors import InvalidArgument
from tests.unit.fakes import STEPS, FakeAccounts, InMemoryTransferRepository
from transfer_service.domain import (
    CreditRefused,
    InvalidTransition,
    Transfer,
    TransferAlreadyExists,
    TransferCompleted,
    TransferCredited,
    TransferFailed,
    TransferRequested,
    TransferReserved,
    TransferState,
)
from transfer_service.process import (
    AFTER_CAPTURE_ANSWERED,
    AFTER_CREDIT_ANSWERED,
    AFTER_RECORD_CREDIT_REFUSED,
    AFTER_RECORD_CREDITED,
    AFTER_RECORD_REQUESTED,
    AFTER_RECORD_RESERVED,
    AFTER_RELEASE_ANSWERED,
    AFTER_RESERVE_ANSWERED,
    POINTS,
    Backoff,
    StepRefused,
    StepUnavailable,
    TransferProcess,
    forward,
    one_by_one,
)

TID = "11111111-1111-4111-8111-111111111111"
SRC = "22222222-2222-4222-8222-222222222222"
DST = "33333333-3333-4333-8333-333333333333"
AMOUNT = 300


class RecordingSleep:
    """Stands in for asyncio.sleep: records each delay and returns at once."""

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
        # random() == 1 makes full jitter deterministic: each delay is its ceiling.
        self.backoff = Backoff(sleep=self.sleep, random=lambda: 1.0)
        self.process = self.new_process()

    def new_process(
        self,
        crash_at: str | None = None,
        *,
        overlap_records: bool = True,
        forward_calls: bool = True,
    ) -> TransferProcess:
        def crash_point(name: str) -> None:
            self.points.append(name)
            if name == crash_at:
                raise Crash(name)

        return TransferProcess(
            self.accounts,
            self.repo,
            backoff=self.backoff,
            crash_point=crash_point,
            on_retry=lambda *args: self.retries.append(args),
            overlap_records=overlap_records,
            forward_calls=forward_calls,
        )

    async def run(self) -> Transfer:
        transfer = await self.process.request(TID, SRC, DST, AMOUNT)
        return await self.process.drive(transfer)

    def seed(self, *events) -> None:
        self.repo.append(TID, events)

    async def stored(self) -> Transfer:
        transfer = await self.repo.load(TID)
        assert transfer is not None
        return transfer


def assert_no_effect_twice(accounts: FakeAccounts) -> None:
    keys = Counter((e.kind, e.account_id, e.reference) for e in accounts.effects)
    assert all(n == 1 for n in keys.values()), keys


# --- the happy path ---


async def test_happy_path_reserves_credits_captures_in_order_and_completes():
    w = World()
    done = await w.run()
    assert done.state is TransferState.COMPLETED
    assert done.currency == "EUR"
    assert [(c.step, c.account_id, c.reference) for c in w.accounts.calls] == [
        ("reserve", SRC, TID),
        ("credit", DST, TID),
        ("capture", SRC, TID),
    ]
    assert w.accounts.calls[0].amount == AMOUNT
    assert (w.accounts.calls[1].amount, w.accounts.calls[1].currency) == (AMOUNT, "EUR")
    assert w.accounts.accounts[SRC].balance == 1000 - AMOUNT
    assert w.accounts.accounts[DST].balance == 50 + AMOUNT
    assert w.accounts.open_holds() == {}


async def test_happy_path_records_each_decision_once_in_protocol_order():
    w = World()
    await w.run()
    assert w.repo.events(TID) == [
        TransferRequested(TID, SRC, DST, AMOUNT),
        TransferReserved("EUR"),
        TransferCredited(),
        TransferCompleted(),
    ]


async def test_drive_returns_the_transfer_as_stored():
    w = World()
    done = await w.run()
    assert done == await w.stored()
    assert done.created_at is not None and done.updated_at > done.created_at


# --- refusals ---


@pytest.mark.parametrize(
    ("arrange", "reason"),
    [
        (lambda a: None, "INSUFFICIENT_FUNDS"),
        (lambda a: setattr(a.accounts[SRC], "closed", True), "ACCOUNT_CLOSED"),
        (lambda a: a.accounts.pop(SRC), "ACCOUNT_NOT_FOUND"),
    ],
    ids=["insufficient-funds", "source-closed", "source-missing"],
)
async def test_reserve_refused_fails_with_the_reason_and_makes_no_other_call(arrange, reason):
    w = World(src_balance=AMOUNT - 1)
    arrange(w.accounts)
    done = await w.run()
    assert done.state is TransferState.FAILED
    assert done.failure_reason == reason
    assert w.accounts.steps_called() == ["reserve"]
    assert w.accounts.effects == []


@pytest.mark.parametrize(
    ("arrange", "reason"),
    [
        (lambda a: setattr(a.accounts[DST], "closed", True), "ACCOUNT_CLOSED"),
        (lambda a: setattr(a.accounts[DST], "currency", "USD"), "CURRENCY_MISMATCH"),
        (lambda a: a.accounts.pop(DST), "ACCOUNT_NOT_FOUND"),
    ],
    ids=["target-closed", "currency-mismatch", "target-missing"],
)
async def test_credit_refused_releases_the_hold_and_fails_with_the_reason(arrange, reason):
    w = World()
    arrange(w.accounts)
    done = await w.run()
    assert done.state is TransferState.FAILED
    assert done.failure_reason == reason
    assert [(c.step, c.account_id) for c in w.accounts.calls] == [
        ("reserve", SRC),
        ("credit", DST),
        ("release", SRC),
    ]
    assert w.accounts.accounts[SRC].balance == 1000
    assert w.accounts.open_holds() == {}
    assert w.repo.events(TID)[-2:] == [CreditRefused(reason), TransferFailed(reason)]


# --- transient faults ---


@pytest.mark.parametrize("step", STEPS)
async def test_transient_failure_on_each_step_is_retried_with_growing_backoff(step):
    w = World()
    if step == "release":
        w.accounts.accounts[DST].closed = True
    w.accounts.fail_next(step, times=3)
    done = await w.run()
    assert done.is_terminal
    assert done.state is (TransferState.FAILED if step == "release" else TransferState.COMPLETED)
    assert w.accounts.steps_called().count(step) == 4
    assert w.sleep.delays == pytest.approx([0.05, 0.1, 0.2])
    assert w.accounts.open_holds() == {}


async def test_backoff_resets_after_a_step_succeeds():
    w = World()
    w.accounts.fail_next("reserve", times=2)
    w.accounts.fail_next("capture", times=2)
    await w.run()
    assert w.sleep.delays == pytest.approx([0.05, 0.1, 0.05, 0.1])


async def test_on_retry_reports_transfer_step_and_error():
    w = World()
    unavailable = StepUnavailable("peer down")
    w.accounts.fail_next("credit", exc=unavailable)
    await w.run()
    assert w.retries == [(TID, "credit", unavailable)]


@pytest.mark.parametrize("step", STEPS)
async def test_lost_answer_after_the_effect_is_not_applied_twice(step):
    w = World()
    if step == "release":
        w.accounts.accounts[DST].closed = True
    total = w.accounts.total_balance()
    w.accounts.fail_next(step, times=2, after_effect=True)
    done = await w.run()
    assert done.state is (TransferState.FAILED if step == "release" else TransferState.COMPLETED)
    assert w.accounts.steps_called().count(step) == 3
    assert_no_effect_twice(w.accounts)
    assert w.accounts.total_balance() == total
    assert w.accounts.open_holds() == {}


# --- resuming from what is stored ---


async def test_resume_from_requested_runs_the_whole_protocol():
    w = World()
    w.seed(TransferRequested(TID, SRC, DST, AMOUNT))
    done = await w.process.drive(await w.stored())
    assert done.state is TransferState.COMPLETED
    assert w.accounts.steps_called() == ["reserve", "credit", "capture"]


async def test_resume_from_reserved_credits_and_captures_without_reserving_again():
    w = World()
    await w.accounts.reserve(SRC, TID, AMOUNT)
    w.accounts.calls.clear()
    w.seed(TransferRequested(TID, SRC, DST, AMOUNT), TransferReserved("EUR"))
    done = await w.process.drive(await w.stored())
    assert done.state is TransferState.COMPLETED
    assert w.accounts.steps_called() == ["credit", "capture"]
    assert w.repo.events(TID).count(TransferReserved("EUR")) == 1
    assert w.accounts.accounts[DST].balance == 50 + AMOUNT


async def test_resume_after_credit_refused_releases_without_deciding_the_credit_again():
    # The target is fine now; the recorded refusal still stands.
    w = World()
    await w.accounts.reserve(SRC, TID, AMOUNT)
    w.accounts.calls.clear()
    w.seed(
        TransferRequested(TID, SRC, DST, AMOUNT),
        TransferReserved("EUR"),
        CreditRefused("ACCOUNT_CLOSED"),
    )
    done = await w.process.drive(await w.stored())
    assert done.state is TransferState.FAILED
    assert done.failure_reason == "ACCOUNT_CLOSED"
    assert w.accounts.steps_called() == ["release"]
    assert w.accounts.accounts[DST].balance == 50
    assert w.accounts.open_holds() == {}


async def test_resume_from_credited_only_captures():
    w = World()
    await w.accounts.reserve(SRC, TID, AMOUNT)
    await w.accounts.credit(DST, TID, AMOUNT, "EUR")
    w.accounts.calls.clear()
    w.seed(TransferRequested(TID, SRC, DST, AMOUNT), TransferReserved("EUR"), TransferCredited())
    done = await w.process.drive(await w.stored())
    assert done.state is TransferState.COMPLETED
    assert w.accounts.steps_called() == ["capture"]
    assert w.accounts.accounts[SRC].balance == 1000 - AMOUNT


@pytest.mark.parametrize(
    "events",
    [
        (TransferRequested(TID, SRC, DST, AMOUNT), TransferFailed("INSUFFICIENT_FUNDS")),
        (
            TransferRequested(TID, SRC, DST, AMOUNT),
            TransferReserved("EUR"),
            TransferCredited(),
            TransferCompleted(),
        ),
    ],
    ids=["failed", "completed"],
)
async def test_drive_on_a_terminal_transfer_makes_no_call(events):
    w = World()
    w.seed(*events)
    stored = await w.stored()
    assert await w.process.drive(stored) == stored
    assert w.accounts.calls == []


async def test_drive_on_a_transfer_never_requested_is_a_bug():
    w = World()
    with pytest.raises(InvalidTransition):
        await w.process.drive(Transfer.empty(TID))


@pytest.mark.parametrize("point", POINTS)
async def test_crash_at_any_point_then_resume_ends_as_without_the_crash(point):
    w = World()
    if point in (AFTER_RECORD_CREDIT_REFUSED, AFTER_RELEASE_ANSWERED):
        w.accounts.accounts[DST].closed = True
    total = w.accounts.total_balance()
    w.process = w.new_process(crash_at=point)
    with pytest.raises(Crash):
        await w.run()
    done = await w.new_process().drive(await w.stored())
    assert done.is_terminal
    assert done.state is (
        TransferState.FAILED if w.accounts.accounts[DST].closed else TransferState.COMPLETED
    )
    assert_no_effect_twice(w.accounts)
    assert w.accounts.total_balance() == total
    assert w.accounts.open_holds() == {}


# --- concurrent writers ---


async def test_recording_conflict_reloads_and_continues_from_the_stored_state():
    w = World()
    w.process = w.new_process(forward_calls=False)
    transfer = await w.process.request(TID, SRC, DST, AMOUNT)
    # Another driver reserves and credits before this one records its reservation.
    w.repo.before_next_record(
        lambda repo: repo.append(TID, [TransferReserved("EUR"), TransferCredited()])
    )
    done = await w.process.drive(transfer)
    assert done.state is TransferState.COMPLETED
    # The credit was already on its way while the reservation was being recorded; it is
    # idempotent, and nothing after it is decided from this driver's stale state.
    assert w.accounts.steps_called() == ["reserve", "credit", "capture"]
    assert w.repo.events(TID) == [
        TransferRequested(TID, SRC, DST, AMOUNT),
        TransferReserved("EUR"),
        TransferCredited(),
        TransferCompleted(),
    ]


async def test_recording_conflict_after_the_forward_calls_goes_on_from_the_stored_state():
    w = World()
    transfer = await w.process.request(TID, SRC, DST, AMOUNT)
    # Another driver records reserve and credit before this one records all three.
    w.repo.before_next_record(
        lambda repo: repo.append(TID, [TransferReserved("EUR"), TransferCredited()])
    )
    done = await w.process.drive(transfer)
    assert done.state is TransferState.COMPLETED
    # From the stored CREDITED the capture is made again: a repeat, applied once.
    assert w.accounts.steps_called() == ["reserve", "credit", "capture", "capture"]
    assert w.repo.events(TID) == [
        TransferRequested(TID, SRC, DST, AMOUNT),
        TransferReserved("EUR"),
        TransferCredited(),
        TransferCompleted(),
    ]
    assert_no_effect_twice(w.accounts)


async def test_recording_conflict_never_repeats_the_other_writers_decision():
    w = World()
    w.accounts.accounts[DST].closed = True
    transfer = await w.process.request(TID, SRC, DST, AMOUNT)
    await w.accounts.reserve(SRC, TID, AMOUNT)
    transfer = await w.repo.record(transfer, [TransferReserved("EUR")])
    # This driver sees the refusal; another has already recorded it.
    w.repo.before_next_record(lambda repo: repo.append(TID, [CreditRefused("ACCOUNT_CLOSED")]))
    done = await w.process.drive(transfer)
    assert done.state is TransferState.FAILED
    assert w.repo.events(TID).count(CreditRefused("ACCOUNT_CLOSED")) == 1


# --- recording the request ---


async def test_request_records_requested_and_does_not_call_the_accounts():
    w = World()
    transfer = await w.process.request(TID, SRC, DST, AMOUNT)
    assert transfer.state is TransferState.REQUESTED
    assert transfer.version == 1
    assert w.accounts.calls == []
    assert w.points == [AFTER_RECORD_REQUESTED]


async def test_request_repeated_returns_the_stored_transfer_and_records_nothing():
    w = World()
    done = await w.run()
    again = await w.process.request(TID, SRC, DST, AMOUNT)
    assert again == done
    assert len(w.repo.events(TID)) == 4


async def test_request_with_other_contents_for_a_known_id_is_already_exists():
    w = World()
    await w.process.request(TID, SRC, DST, AMOUNT)
    with pytest.raises(TransferAlreadyExists):
        await w.process.request(TID, SRC, DST, AMOUNT + 1)


async def test_request_invalid_is_refused_before_anything_is_stored():
    w = World()
    with pytest.raises(InvalidArgument):
        await w.process.request(TID, SRC, SRC, AMOUNT)
    assert w.repo.events(TID) == []


async def test_request_racing_an_identical_request_returns_the_stored_one():
    w = World()
    w.repo.before_next_record(
        lambda repo: repo.append(TID, [TransferRequested(TID, SRC, DST, AMOUNT)])
    )
    transfer = await w.process.request(TID, SRC, DST, AMOUNT)
    assert transfer.state is TransferState.REQUESTED
    assert len(w.repo.events(TID)) == 1


# --- crash points ---


async def test_crash_points_on_the_happy_path_in_order():
    w = World()
    await w.run()
    # The three forward calls are answered before their one record is stored.
    assert w.points == [
        AFTER_RECORD_REQUESTED,
        AFTER_RESERVE_ANSWERED,
        AFTER_CREDIT_ANSWERED,
        AFTER_CAPTURE_ANSWERED,
        AFTER_RECORD_RESERVED,
        AFTER_RECORD_CREDITED,
    ]


async def test_crash_points_on_the_compensation_path_in_order():
    w = World()
    w.accounts.accounts[DST].closed = True
    await w.run()
    # The refusal is stored (with the reservation) before the release goes out.
    assert w.points == [
        AFTER_RECORD_REQUESTED,
        AFTER_RESERVE_ANSWERED,
        AFTER_CREDIT_ANSWERED,
        AFTER_RECORD_RESERVED,
        AFTER_RECORD_CREDIT_REFUSED,
        AFTER_RELEASE_ANSWERED,
    ]


async def test_crash_points_step_by_step_on_the_happy_path_in_order():
    w = World()
    w.process = w.new_process(forward_calls=False)
    await w.run()
    # Each forward record overlaps the next call, so those two pairs may come either way.
    assert w.points[:2] == [AFTER_RECORD_REQUESTED, AFTER_RESERVE_ANSWERED]
    assert set(w.points[2:4]) == {AFTER_RECORD_RESERVED, AFTER_CREDIT_ANSWERED}
    assert set(w.points[4:]) == {AFTER_RECORD_CREDITED, AFTER_CAPTURE_ANSWERED}
    assert len(w.points) == 6


async def test_crash_points_step_by_step_on_the_compensation_path_in_order():
    w = World()
    w.process = w.new_process(forward_calls=False)
    w.accounts.accounts[DST].closed = True
    await w.run()
    assert w.points[:2] == [AFTER_RECORD_REQUESTED, AFTER_RESERVE_ANSWERED]
    assert set(w.points[2:4]) == {AFTER_RECORD_RESERVED, AFTER_CREDIT_ANSWERED}
    # The refusal is stored before the release goes out.
    assert w.points[4:] == [AFTER_RECORD_CREDIT_REFUSED, AFTER_RELEASE_ANSWERED]


class GatedRepository(InMemoryTransferRepository):
    """Holds every record of the given event type until the test opens the gate, and
    notes what the accounts had been asked when each record started and ended."""

    def __init__(self, accounts: FakeAccounts, held: type) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self._accounts = accounts
        self._held = held
        self.log: list[tuple[str, str, list[str]]] = []

    async def record(self, transfer: Transfer, events) -> Transfer:  # type: ignore[no-untyped-def]
        kind = type(events[0]).__name__
        self.log.append(("start", kind, self._accounts.steps_called()))
        if isinstance(events[0], self._held):
            await self.gate.wait()
        recorded = await super().record(transfer, events)
        self.log.append(("stored", kind, self._accounts.steps_called()))
        return recorded


async def _drive_with_held_record(
    w: World, held: type, until_calls: int, overlap_records: bool = True
) -> Transfer:
    repo = GatedRepository(w.accounts, held)
    w.repo = repo
    # Step by step: with the forward calls there is no record between them to overlap.
    process = w.new_process(overlap_records=overlap_records, forward_calls=False)
    transfer = await process.request(TID, SRC, DST, AMOUNT)
    driving = asyncio.create_task(process.drive(transfer))
    for _ in range(100):
        if len(w.accounts.calls) >= until_calls:
            break
        await asyncio.sleep(0)
    observed, returned_early = len(w.accounts.calls), driving.done()
    repo.gate.set()
    done = await driving
    assert observed == until_calls, w.accounts.steps_called()
    assert not returned_early  # nothing is answered while a record is outstanding
    return done


async def test_reserved_is_recorded_while_the_credit_is_already_on_its_way():
    w = World()
    done = await _drive_with_held_record(w, TransferReserved, until_calls=2)
    assert done.state is TransferState.COMPLETED
    # The capture waits for the reservation's record: one record behind, never two.
    assert ("stored", "TransferReserved", ["reserve", "credit"]) in w.repo.log
    assert_no_effect_twice(w.accounts)


async def test_credited_is_recorded_while_the_capture_is_already_on_its_way():
    w = World()
    done = await _drive_with_held_record(w, TransferCredited, until_calls=3)
    assert done.state is TransferState.COMPLETED
    assert w.repo.events(TID)[-2:] == [TransferCredited(), TransferCompleted()]
    assert_no_effect_twice(w.accounts)


@pytest.mark.parametrize("held", [TransferReserved, TransferCredited])
async def test_without_overlap_every_record_is_stored_before_the_next_call(held):
    w = World()
    calls_before = 1 if held is TransferReserved else 2
    done = await _drive_with_held_record(w, held, calls_before, overlap_records=False)
    assert done.state is TransferState.COMPLETED
    assert w.accounts.steps_called() == ["reserve", "credit", "capture"]


async def test_the_release_waits_until_the_refused_credit_is_stored():
    w = World()
    w.accounts.accounts[DST].closed = True
    done = await _drive_with_held_record(w, CreditRefused, until_calls=2)
    assert done.state is TransferState.FAILED
    assert ("stored", "CreditRefused", ["reserve", "credit"]) in w.repo.log
    assert w.accounts.steps_called() == ["reserve", "credit", "release"]


async def test_the_outcome_is_returned_only_once_its_record_is_stored():
    w = World()
    done = await _drive_with_held_record(w, TransferCompleted, until_calls=3)
    assert done.state is TransferState.COMPLETED
    assert w.repo.log[-1] == ("stored", "TransferCompleted", ["reserve", "credit", "capture"])


async def test_crash_points_when_reserve_is_refused():
    w = World(src_balance=0)
    await w.run()
    assert w.points == [AFTER_RECORD_REQUESTED, AFTER_RESERVE_ANSWERED]


# --- the forward calls: reserve, credit, capture back to back, one record ---


async def test_forward_calls_store_a_whole_transfer_in_two_records():
    w = World()
    done = await w.run()
    assert done.state is TransferState.COMPLETED
    assert w.repo.record_calls == 2  # REQUESTED, then everything the three calls decided
    assert w.accounts.steps_called() == ["reserve", "credit", "capture"]
    assert w.accounts.total_balance() == 1050
    assert w.accounts.open_holds() == {}


async def test_step_by_step_stores_four_records():
    w = World()
    w.process = w.new_process(forward_calls=False)
    done = await w.run()
    assert done.state is TransferState.COMPLETED
    assert w.repo.record_calls == 4
    assert w.repo.events(TID)[1:] == [
        TransferReserved("EUR"),
        TransferCredited(),
        TransferCompleted(),
    ]


async def test_forward_credit_refused_stores_it_with_the_reservation_before_releasing():
    w = World()
    w.accounts.accounts[DST].closed = True
    done = await w.run()
    assert done.state is TransferState.FAILED
    assert done.failure_reason == "ACCOUNT_CLOSED"
    assert w.repo.record_calls == 3  # REQUESTED; Reserved + CreditRefused; Failed
    assert w.repo.events(TID)[1:3] == [TransferReserved("EUR"), CreditRefused("ACCOUNT_CLOSED")]
    assert w.accounts.steps_called() == ["reserve", "credit", "release"]
    assert w.accounts.total_balance() == 1050
    assert w.accounts.open_holds() == {}


@pytest.mark.parametrize(
    ("step", "recorded"),
    [
        ("reserve", []),
        ("credit", [TransferReserved("EUR")]),
        ("capture", [TransferReserved("EUR"), TransferCredited()]),
    ],
)
async def test_forward_call_not_decided_records_what_was_decided_and_goes_on(step, recorded):
    w = World()
    w.accounts.fail_next(step)
    done = await w.run()
    assert done.state is TransferState.COMPLETED
    events = w.repo.events(TID)
    # What came before the undecided call is stored on its own, then the protocol goes on
    # from there (retrying that call) to the end.
    assert events[1 : 1 + len(recorded)] == recorded
    assert events[-1] == TransferCompleted()
    assert len(w.sleep.delays) == 1
    calls = w.accounts.steps_called()
    assert calls.count(step) == 2
    assert sorted(set(calls)) == ["capture", "credit", "reserve"]
    assert_no_effect_twice(w.accounts)
    assert w.accounts.total_balance() == 1050
    assert w.accounts.open_holds() == {}


@pytest.mark.parametrize("step", ["reserve", "credit", "capture"])
async def test_forward_lost_answer_is_repeated_without_applying_twice(step):
    w = World()
    w.accounts.fail_next(step, after_effect=True)
    done = await w.run()
    assert done.state is TransferState.COMPLETED
    assert_no_effect_twice(w.accounts)
    assert w.accounts.accounts[SRC].balance == 1000 - AMOUNT
    assert w.accounts.accounts[DST].balance == 50 + AMOUNT


async def test_restart_from_requested_after_the_whole_transfer_was_applied_changes_nothing():
    # The process died after all three calls were answered, before recording them.
    w = World()
    w.process = w.new_process(crash_at=AFTER_CAPTURE_ANSWERED)
    with pytest.raises(Crash):
        await w.run()
    assert (await w.stored()).state is TransferState.REQUESTED
    balances = {a: w.accounts.accounts[a].balance for a in (SRC, DST)}
    done = await w.new_process().drive(await w.stored())
    assert done.state is TransferState.COMPLETED
    # The repeats (a reservation already captured included) are answered as done.
    assert w.accounts.steps_called() == ["reserve", "credit", "capture"] * 2
    assert {a: w.accounts.accounts[a].balance for a in (SRC, DST)} == balances
    assert_no_effect_twice(w.accounts)
    assert w.accounts.open_holds() == {}


class ForwardingFake(FakeAccounts):
    """A port with its own ``forward`` (as the ExecuteSteps stream has)."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards: list[tuple[str, str, str, int]] = []

    async def forward(self, from_account_id, to_account_id, reference, amount):  # type: ignore[no-untyped-def]
        self.forwards.append((from_account_id, to_account_id, reference, amount))
        return await one_by_one(self, from_account_id, to_account_id, reference, amount)


async def test_the_ports_own_forward_is_used_when_it_has_one():
    w = World()
    fake = ForwardingFake()
    fake.open(SRC, "EUR", 1000)
    fake.open(DST, "EUR", 50)
    w.accounts = fake
    w.process = w.new_process()
    done = await w.run()
    assert done.state is TransferState.COMPLETED
    assert fake.forwards == [(SRC, DST, TID, AMOUNT)]
    assert fake.steps_called() == ["reserve", "credit", "capture"]


async def test_forward_stops_at_the_first_refusal():
    w = World(src_balance=0)
    results = await forward(w.accounts, SRC, DST, TID, AMOUNT)
    assert len(results) == 1
    assert isinstance(results[0], StepRefused)
    assert results[0].reason == "INSUFFICIENT_FUNDS"
    assert w.accounts.steps_called() == ["reserve"]


# --- refusals the protocol rules out ---


@pytest.mark.parametrize(
    ("step", "state"),
    [("capture", TransferState.CREDITED), ("release", TransferState.RESERVED)],
)
async def test_capture_or_release_refused_keeps_retrying_and_never_fails(step, state, caplog):
    w = World()
    if step == "release":
        w.accounts.accounts[DST].closed = True
    w.accounts.fail_next(step, times=1000, exc=StepRefused("RESERVATION_NOT_FOUND"))
    attempts = 5

    async def sleep_then_cancel_at_the_limit(delay: float) -> None:
        w.sleep.delays.append(delay)
        if len(w.sleep.delays) == attempts:
            asyncio.current_task().cancel()
            await asyncio.sleep(0)

    w.process = TransferProcess(
        w.accounts,
        w.repo,
        backoff=Backoff(sleep=sleep_then_cancel_at_the_limit, maximum=7.0),
    )
    with caplog.at_level(logging.ERROR, logger="transfer_service.process"):
        with pytest.raises(asyncio.CancelledError):
            await w.run()
    stored = await w.stored()
    assert stored.state is state
    assert not stored.is_terminal
    assert w.accounts.steps_called().count(step) == attempts
    assert w.sleep.delays == [7.0] * attempts
    assert sum(r.levelno == logging.ERROR for r in caplog.records) == attempts


# --- cancellation ---


async def test_cancellation_during_backoff_stops_promptly():
    accounts = FakeAccounts()
    accounts.open(SRC, "EUR", 1000)
    accounts.open(DST, "EUR")
    accounts.fail_next("reserve", times=1000)
    repo = InMemoryTransferRepository()
    retried = asyncio.Event()
    process = TransferProcess(
        accounts,
        repo,
        backoff=Backoff(initial=60.0, maximum=60.0, random=lambda: 1.0),
        on_retry=lambda *_: retried.set(),
    )
    task = asyncio.create_task(process.drive(await process.request(TID, SRC, DST, AMOUNT)))
    await asyncio.wait_for(retried.wait(), timeout=2)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=2)
    assert time.monotonic() - started < 1
    assert accounts.steps_called() == ["reserve"]


# --- backoff ---


def test_backoff_grows_by_factor_up_to_the_maximum():
    backoff = Backoff(initial=0.05, maximum=0.3, factor=2.0, random=lambda: 1.0)
    assert [backoff.delay(n) for n in range(1, 6)] == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.3])


def test_backoff_has_full_jitter():
    assert Backoff(initial=1.0, random=lambda: 0.25).delay(1) == pytest.approx(0.25)
    assert Backoff(initial=1.0, random=lambda: 0.0).delay(3) == 0.0


def test_backoff_stays_finite_after_very_many_failures():
    assert Backoff(random=lambda: 1.0).delay(10**6) == pytest.approx(5.0)


def test_backoff_defaults():
    backoff = Backoff()
    assert (backoff.initial, backoff.maximum, backoff.factor) == (0.05, 5.0, 2.0)
    assert 0.0 <= backoff.delay(1) <= 0.05


# --- any fault script ---

faults = st.lists(
    st.tuples(st.sampled_from(STEPS), st.integers(1, 3), st.booleans()),
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    src_balance=st.integers(0, 600),
    amount=st.integers(1, 400),
    source=st.sampled_from(["open", "closed", "missing"]),
    target=st.sampled_from(["open", "closed", "other-currency", "missing"]),
    script=faults,
    crash_at=st.none() | st.sampled_from(POINTS),
)
def test_any_fault_script_ends_terminal_with_money_conserved(
    src_balance, amount, source, target, script, crash_at
):
    accounts = FakeAccounts()
    if source != "missing":
        accounts.open(SRC, "EUR", src_balance, closed=source == "closed")
    if target != "missing":
        accounts.open(
            DST, "USD" if target == "other-currency" else "EUR", 70, closed=target == "closed"
        )
    for step, times, after_effect in script:
        accounts.fail_next(step, times, after_effect=after_effect)
    balances = {a.account_id: a.balance for a in accounts.accounts.values()}
    total = accounts.total_balance()
    repo = InMemoryTransferRepository()

    def crash_point(name: str) -> None:
        if name == crash_at:
            raise Crash(name)

    async def scenario() -> Transfer:
        backoff = Backoff(sleep=RecordingSleep())
        first = TransferProcess(accounts, repo, backoff=backoff, crash_point=crash_point)
        try:
            return await first.drive(await first.request(TID, SRC, DST, amount))
        except Crash:
            stored = await repo.load(TID)
            assert stored is not None
            return await TransferProcess(accounts, repo, backoff=backoff).drive(stored)

    done = asyncio.run(scenario())

    assert done.is_terminal
    assert accounts.total_balance() == total
    assert accounts.open_holds() == {}
    assert_no_effect_twice(accounts)
    if done.state is TransferState.COMPLETED:
        assert accounts.accounts[SRC].balance == balances[SRC] - amount
        assert accounts.accounts[DST].balance == balances[DST] + amount
    else:
        assert {a.account_id: a.balance for a in accounts.accounts.values()} == balances
        assert done.failure_reason
    can_move = source == "open" and src_balance >= amount and target == "open"
    assert (done.state is TransferState.COMPLETED) == can_move
