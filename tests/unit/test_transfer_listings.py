"""The transfers of an account, a page at a time: newest or oldest first, by state, between
two instants, over a real in-memory store (the account side is the fake of the port)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from event_store import AsyncEventStore, InMemoryEventStore
from tests.unit.fakes import FakeAccounts
from transfer_service import listings
from transfer_service.application import TransferRefused, Transfers
from transfer_service.domain import Leg, Transfer, TransferState, requested
from transfer_service.listings import TransferQuery
from transfer_service.process import TransferProcess
from transfer_service.repository import StoredTransfers

SRC = "22222222-2222-4222-8222-222222222222"
DST = "33333333-3333-4333-8333-333333333333"
OTHER = "44444444-4444-4444-8444-444444444444"


@pytest.fixture
async def bank():
    accounts = FakeAccounts()
    accounts.open(SRC, "EUR", 1_000)
    accounts.open(DST, "EUR", 0)
    accounts.open(OTHER, "EUR", 1_000)
    async with AsyncEventStore(InMemoryEventStore()) as store:
        repository = StoredTransfers(store)
        yield Transfers(repository, TransferProcess(accounts, repository))


async def made(transfers: Transfers, count: int) -> list[Transfer]:
    """``count`` transfers from SRC to DST, one after the other (each at a later time):
    every third too large (FAILED), every third after that pending; oldest first."""
    made = []
    for n in range(count):
        amount = 5_000 if n % 3 == 1 else 10 + n
        request = requested(str(uuid.uuid4()), [Leg(SRC, DST, amount)], pending=n % 3 == 2)
        try:
            made.append(await transfers.create(request))
        except TransferRefused as refused:
            made.append(refused.transfer)
        await asyncio.sleep(0.001)  # the next one at a later time
    return made


async def everything(transfers: Transfers, query: TransferQuery, page_size: int) -> list[list]:
    """Every page of the query, as lists of transfer ids."""
    pages, cursor = [], None
    while True:
        page = await transfers.of_account(query, cursor, page_size)
        pages.append([t.transfer_id for t in page.transfers])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def ids(found: list[Transfer]) -> list[str]:
    return [t.transfer_id for t in found]


async def test_pages_newest_first_and_oldest_first(bank: Transfers) -> None:
    created = await made(bank, 7)
    newest = await everything(bank, TransferQuery(SRC), 3)
    assert newest == [ids(created[6:3:-1]), ids(created[3:0:-1]), ids(created[:1])]
    oldest = await everything(bank, TransferQuery(DST, oldest_first=True), 3)
    assert oldest == [ids(created[0:3]), ids(created[3:6]), ids(created[6:])]


async def test_an_account_sees_only_its_transfers(bank: Transfers) -> None:
    await made(bank, 2)
    assert await everything(bank, TransferQuery(OTHER), 10) == [[]]


async def test_a_state_filter_lists_only_that_state(bank: Transfers) -> None:
    created = await made(bank, 9)
    for state in (TransferState.COMPLETED, TransferState.FAILED, TransferState.PENDING):
        expected = [t.transfer_id for t in reversed(created) if t.state is state]
        pages = await everything(bank, TransferQuery(SRC, state=state), 2)
        assert [i for page in pages for i in page] == expected, state
        assert all(len(page) <= 2 for page in pages)
    assert await everything(bank, TransferQuery(SRC, state=TransferState.VOIDED), 2) == [[]]


async def test_a_state_filter_reads_a_bounded_number_of_transfers_per_page(
    bank: Transfers, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await made(bank, 9)
    monkeypatch.setattr(listings, "SCAN_LIMIT", 4)
    query = TransferQuery(SRC, state=TransferState.FAILED, oldest_first=True)
    first = await bank.of_account(query, None, 2)
    # Four transfers read, one of them FAILED: a short page that goes on from the fourth.
    assert ids(first.transfers) == [created[1].transfer_id]
    assert first.next_cursor is not None
    pages = await everything(bank, query, 2)
    failed = [t.transfer_id for t in created if t.state is TransferState.FAILED]
    assert [i for page in pages for i in page] == failed
    assert len(pages) == 3  # 9 transfers read 4 at a time


async def test_times_bound_the_listing_at_both_ends_exclusively(bank: Transfers) -> None:
    created = await made(bank, 6)
    after, before = created[1].created_at, created[4].created_at
    assert after is not None and before is not None
    query = TransferQuery(SRC, created_after=after, created_before=before)
    assert await everything(bank, query, 10) == [ids(created[3:1:-1])]
    oldest = TransferQuery(DST, created_after=after, created_before=before, oldest_first=True)
    assert await everything(bank, oldest, 1) == [ids(created[2:3]), ids(created[3:4])]
    just_after = TransferQuery(SRC, created_after=created[5].created_at - timedelta(microseconds=1))
    assert await everything(bank, just_after, 10) == [ids(created[5:])]


async def test_times_and_state_together(bank: Transfers) -> None:
    created = await made(bank, 9)
    after = created[2].created_at
    query = TransferQuery(SRC, state=TransferState.COMPLETED, created_after=after)
    expected = [t.transfer_id for t in reversed(created[3:]) if t.state is TransferState.COMPLETED]
    assert await everything(bank, query, 1) == [[i] for i in expected]
