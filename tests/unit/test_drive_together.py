"""The transfers of one batch driven together (``TransferProcess.drive_together``): their
chains sent at once, what the answers call for recorded in one transaction, and each
transfer that this pass does not settle left to a driver of its own, from the store."""

from __future__ import annotations

import pytest

from event_store import StoreUnavailable
from tests.unit.fakes import FakeAccounts, InMemoryTransferRepository
from transfer_service.domain import Action, Leg, Transfer, TransferState, requested
from transfer_service.process import (
    AFTER_CAPTURE_ANSWERED,
    AFTER_CREDIT_ANSWERED,
    AFTER_RECORD_CREDITED,
    AFTER_RECORD_RESERVED,
    AFTER_RESERVE_ANSWERED,
    Backoff,
    OwnershipLost,
    TransferProcess,
)

SRC = "22222222-2222-4222-8222-222222222222"
DST = "33333333-3333-4333-8333-333333333333"
CLOSED = "44444444-4444-4444-8444-444444444444"
IDS = [f"{n}1111111-1111-4111-8111-111111111111" for n in range(1, 6)]


class Crash(Exception):
    """The process dying at a crash point."""


class World:
    def __init__(self) -> None:
        self.accounts = FakeAccounts()
        self.accounts.open(SRC, "EUR", 100)
        self.accounts.open(DST, "EUR", 0)
        self.accounts.open(CLOSED, "EUR", 0)
        self.accounts.close(CLOSED)
        self.repo = InMemoryTransferRepository()
        self.points: list[str] = []

    def process(self, crash_at: str | None = None) -> TransferProcess:
        def crash_point(point: str) -> None:
            self.points.append(point)
            if point == crash_at:
                raise Crash(point)

        async def no_sleep(delay: float) -> None:
            return None

        return TransferProcess(
            self.accounts, self.repo, backoff=Backoff(sleep=no_sleep), crash_point=crash_point
        )

    async def requested(self, *amounts: int, to: str = DST) -> list[Transfer]:
        process = self.process()
        transfers = []
        for transfer_id, amount in zip(IDS, amounts, strict=False):
            event = requested(transfer_id, [Leg(SRC, to, amount)])
            transfers.append(await process.record(Transfer.empty(transfer_id), [event], 1))
        self.repo.record_calls = 0
        self.points.clear()
        return transfers

    async def finish(self, process: TransferProcess, epoch: int = 1) -> list[Transfer]:
        """Each transfer driven to its end on its own, from the store."""
        ended = []
        for transfer_id in IDS:
            transfer = await self.repo.load(transfer_id)
            if transfer is not None:
                ended.append(await process.drive(transfer, self.repo.epochs.get(transfer_id, 1)))
        return ended

    def money(self) -> int:
        return self.accounts.total_balance()


def states(transfers) -> list[str | None]:
    return [None if t is None else t.state.name for t in transfers]


async def test_a_batch_is_driven_in_one_pass_and_recorded_in_one_transaction():
    world = World()
    transfers = await world.requested(10, 20, 30)
    driven = await world.process().drive_together(transfers, 1)
    assert states(driven) == ["COMPLETED"] * 3
    assert (world.repo.record_many_calls, world.repo.record_calls) == (1, 0)
    assert [t.version for t in driven] == [4, 4, 4]  # requested, reserved, credited, completed
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (40, 60)
    assert world.accounts.open_holds() == {}
    for transfer in driven:
        stored = await world.repo.load(transfer.transfer_id)
        assert stored is not None and stored.state is TransferState.COMPLETED


async def test_refusals_end_their_transfers_in_the_pass_beside_the_others():
    world = World()
    transfers = await world.requested(10, 500, 20)
    driven = await world.process().drive_together(transfers, 1)
    assert states(driven) == ["COMPLETED", "FAILED", "COMPLETED"]
    assert driven[1].failure_reason == "INSUFFICIENT_FUNDS"
    assert world.repo.record_many_calls == 1
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (70, 30)
    assert world.accounts.open_holds() == {}


async def test_a_credit_refused_is_recorded_and_its_undo_left_to_its_own_driver():
    world = World()
    transfers = await world.requested(10, 20, to=CLOSED)
    process = world.process()
    driven = await process.drive_together(transfers, 1)
    # The refusal is recorded (it chooses the outcome); releasing the hold comes after.
    assert all(t is not None and not t.is_terminal and t.undo is not None for t in driven)
    assert world.repo.record_many_calls == 1
    assert world.accounts.balance(SRC) == 100 and world.accounts.open_holds()
    ended = await world.finish(process)
    assert states(ended) == ["FAILED", "FAILED"]
    assert world.accounts.balance(SRC) == 100 and world.accounts.open_holds() == {}


async def test_a_held_up_chain_is_left_to_its_own_driver_and_the_others_recorded():
    world = World()
    transfers = await world.requested(10, 20, 30)
    world.accounts.fail_next(Action.CREDIT)  # the first chain's credit goes unanswered
    process = world.process()
    driven = await process.drive_together(transfers, 1)
    assert states(driven) == [None, "COMPLETED", "COMPLETED"]
    first = await world.repo.load(IDS[0])
    assert first is not None and first.version == 1  # nothing recorded for it
    ended = await world.finish(process)
    assert states(ended) == ["COMPLETED"] * 3
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (40, 60)
    assert world.accounts.open_holds() == {}


@pytest.mark.parametrize("fault", ["taken over", "store down"])
async def test_a_record_that_fails_records_none_and_leaves_each_to_its_driver(fault):
    world = World()
    transfers = await world.requested(10, 20, 30)

    def interfere(repo: InMemoryTransferRepository) -> None:
        if fault == "taken over":
            repo.take_over(IDS[1])
        else:
            raise StoreUnavailable("database down")

    world.repo.before_next_record(interfere)
    process = world.process()
    driven = await process.drive_together(transfers, 1)
    assert driven == [None, None, None]
    for transfer_id in IDS[:3]:
        stored = await world.repo.load(transfer_id)
        assert stored is not None and stored.version == 1  # all or none: none
    if fault == "taken over":
        stale = await world.repo.load(IDS[1])
        with pytest.raises(OwnershipLost):
            await process.drive(stale, 1)
    ended = await world.finish(process)
    assert states(ended) == ["COMPLETED"] * 3
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (40, 60)
    assert world.accounts.open_holds() == {}


async def test_the_crash_points_are_passed_per_step_answered_then_per_record():
    world = World()
    transfers = await world.requested(10, 20)
    await world.process().drive_together(transfers, 1)
    answered = [AFTER_RESERVE_ANSWERED, AFTER_CREDIT_ANSWERED, AFTER_CAPTURE_ANSWERED]
    recorded = [AFTER_RECORD_RESERVED, AFTER_RECORD_CREDITED]
    assert world.points == answered * 2 + recorded * 2


async def test_a_crash_before_the_record_moves_no_money_twice_on_the_restart():
    world = World()
    transfers = await world.requested(10, 20, 30)
    with pytest.raises(Crash):
        await world.process(crash_at=AFTER_CAPTURE_ANSWERED).drive_together(transfers, 1)
    # The restarted process finds each transfer as requested and sends its chain again.
    ended = await world.finish(world.process())
    assert states(ended) == ["COMPLETED"] * 3
    assert (world.accounts.balance(SRC), world.accounts.balance(DST)) == (40, 60)
    assert world.money() == 100
    assert world.accounts.open_holds() == {}
