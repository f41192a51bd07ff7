"""The account service's composition root: application and servicers on an event store."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TypeVar

from account_service.application import DEFAULT_SNAPSHOT_EVERY, Accounts
from account_service.grpc_api.servicers import AccountServicer, ReservationServicer
from account_service.naive import LOCK_TIMEOUT as NAIVE_LOCK_TIMEOUT
from account_service.naive import naive_service
from bank.v1 import account_pb2, account_pb2_grpc
from event_store import AsyncEventStore
from grpc_common import metrics
from grpc_common.server import Assembly, Service, run_service
from shared_kernel.crash import ACCOUNT_POINTS, crash_point_from_env

# How the service names itself: in its log lines, its traces, and its claim on its database.
SERVICE_NAME = "account-service"
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DB = "sqlite:///accounts.db"
_SERVICES = account_pb2.DESCRIPTOR.services_by_name
T = TypeVar("T")


def build(
    store: AsyncEventStore,
    *,
    naive_transfers: bool = False,
    naive_lock_timeout: float = NAIVE_LOCK_TIMEOUT,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
) -> Assembly:
    """``naive_transfers``: also serve the experimental NaiveTransferService."""
    accounts = Accounts(
        store,
        crash_point=crash_point_from_env(ACCOUNT_POINTS),
        snapshot_every=snapshot_every,
    )
    services = [
        Service(
            _SERVICES["AccountService"].full_name,
            AccountServicer(accounts),
            account_pb2_grpc.add_AccountServiceServicer_to_server,
        ),
        Service(
            _SERVICES["ReservationService"].full_name,
            reservations := ReservationServicer(accounts),
            account_pb2_grpc.add_ReservationServiceServicer_to_server,
        ),
    ]
    if naive_transfers:
        services.append(naive_service(accounts, naive_lock_timeout))
    measured = metrics.configured()
    if measured is not None:
        measured.watch_reservations(lambda: _hold_times(accounts))
    return Assembly(
        services=services,
        on_drain=[reservations.drain, accounts.drain],
        # Before the store closes: lets the snapshots being saved finish.
        on_stop=[accounts.close],
    )


def _hold_times(accounts: Accounts) -> Iterator[datetime | None]:
    """When each open reservation of the accounts in ``accounts``' memory was made.

    Called from the metrics thread at scrape time. It reads the application's cache of
    accounts (``Accounts`` has no public listing of open holds), copying each container
    whole before walking it; one that changes under the copy is read again.
    """
    mailboxes = getattr(accounts, "_mailboxes", None)
    if mailboxes is None:
        return
    for mailbox in _copy(mailboxes.values):
        account = getattr(mailbox, "account", None)
        if account is not None:
            for hold in _copy(account.holds.values):
                yield hold.reserved_at


def _copy(values: Callable[[], Iterable[T]]) -> list[T]:
    for _ in range(10):
        try:
            return list(values())
        except RuntimeError:  # changed during the copy (another thread): try again
            continue
    return []


async def run(
    listen: str,
    db: str,
    grace: float,
    stop: asyncio.Event | None = None,
    *,
    naive_transfers: bool = False,
    naive_lock_timeout: float = NAIVE_LOCK_TIMEOUT,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
) -> None:
    assemble = functools.partial(
        build,
        naive_transfers=naive_transfers,
        naive_lock_timeout=naive_lock_timeout,
        snapshot_every=snapshot_every,
    )
    await run_service(
        listen=listen, db=db, grace=grace, build=assemble, stop=stop, service=SERVICE_NAME
    )
