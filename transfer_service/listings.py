"""The transfers of an account, a page at a time, newest or oldest first, filtered by
state and by when they were created.

A transfer's request is tagged with each of its accounts, and the store reads a tag in
the order and between the times asked (``EventStore.read_tag``): the times and the page's
cursor make one range of the tag's index, so a page costs what it holds, however long
the account's history outside it. The state is the transfer's own, known once its stream
is read: with a state filter a page reads transfers until it has enough of them or has
read ``SCAN_LIMIT``, and then ends, short or even empty, with a cursor to go on from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from transfer_service.domain import Transfer, TransferState
from transfer_service.repository import StoredTransfers

# Transfers one page reads at most when a state filter leaves some out.
SCAN_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class TransferQuery:
    """Which transfers of an account to list, and in which order."""

    account_id: str
    state: TransferState | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    oldest_first: bool = False


@dataclass(frozen=True, slots=True)
class TransferPage:
    transfers: list[Transfer]
    # Where the next page starts (the position of the last transfer read); None: no more.
    next_cursor: int | None


async def page(
    repository: StoredTransfers, query: TransferQuery, cursor: int | None, page_size: int
) -> TransferPage:
    """Up to ``page_size`` transfers of the query after ``cursor`` (None: from the start)."""
    found: list[tuple[int, Transfer]] = []
    read = 0
    budget = max(SCAN_LIMIT, page_size + 1) if query.state is not None else page_size + 1
    while True:
        # One more than the page needs tells whether another page exists.
        wanted = min(page_size + 1 - len(found), budget - read)
        chunk = await repository.of_account(
            query.account_id,
            cursor,
            wanted,
            oldest_first=query.oldest_first,
            created_after=query.created_after,
            created_before=query.created_before,
        )
        for position, transfer in chunk:
            read += 1
            cursor = position
            if query.state is None or transfer.state is query.state:
                found.append((position, transfer))
        if len(found) > page_size:
            return TransferPage([t for _, t in found[:page_size]], found[page_size - 1][0])
        if len(chunk) < wanted:  # the end of the listing
            return TransferPage([t for _, t in found], None)
        if read >= budget:  # enough read for one call: the caller goes on from here
            return TransferPage([t for _, t in found], cursor)
