"""The account service's composition root: the store, the application and its servicers."""

from __future__ import annotations

import asyncio
import functools
import logging

from account_service.application import Accounts
from account_service.grpc_api.servicers import AccountServicer, ReservationServicer
from account_service.naive import LOCK_TIMEOUT as NAIVE_LOCK_TIMEOUT
from account_service.naive import naive_service
from account_service.snapshots import DEFAULT_SNAPSHOT_EVERY
from account_service.streams import DEFAULT_CHECKPOINT_EVERY
from account_service.watchers import DEFAULT_MAX_PER_CALLER
from bank.v1 import account_pb2, account_pb2_grpc
from event_store import AsyncEventStore, OwnedByAnother, open_async_store
from grpc_common import metrics
from grpc_common.server import Assembly, Service, run_service
from shared_kernel.crash import ACCOUNT_POINTS, crash_point_from_env

# How the service names itself: in its log lines, its traces, and its claim on its database.
SERVICE_NAME = "account-service"
log = logging.getLogger(__name__)
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DB = "sqlite:///accounts.db"
_SERVICES = account_pb2.DESCRIPTOR.services_by_name


def build(
    store: AsyncEventStore,
    *,
    naive_transfers: bool = False,
    naive_lock_timeout: float = NAIVE_LOCK_TIMEOUT,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    max_watchers_per_caller: int = DEFAULT_MAX_PER_CALLER,
) -> Assembly:
    """``naive_transfers``: also serve the experimental NaiveTransferService."""
    accounts = Accounts(
        store,
        crash_point=crash_point_from_env(ACCOUNT_POINTS),
        snapshot_every=snapshot_every,
        checkpoint_every=checkpoint_every,
        max_watchers_per_caller=max_watchers_per_caller,
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
        # Read on this loop, which changes the accounts, when the metrics thread scrapes.
        measured.watch_reservations(
            accounts.open_hold_times, asyncio.get_running_loop(), accounts.open_pending_hold_times
        )
    return Assembly(
        services=services,
        on_drain=[reservations.drain, accounts.drain],
        # Before the store closes: lets the snapshots being saved finish.
        on_stop=[accounts.close],
    )


async def run(
    listen: str,
    db: str,
    grace: float,
    stop: asyncio.Event | None = None,
    *,
    naive_transfers: bool = False,
    naive_lock_timeout: float = NAIVE_LOCK_TIMEOUT,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    max_watchers_per_caller: int = DEFAULT_MAX_PER_CALLER,
) -> None:
    assemble = functools.partial(
        build,
        naive_transfers=naive_transfers,
        naive_lock_timeout=naive_lock_timeout,
        snapshot_every=snapshot_every,
        checkpoint_every=checkpoint_every,
        max_watchers_per_caller=max_watchers_per_caller,
    )
    try:
        store = await open_async_store(db, owner=SERVICE_NAME, observer=metrics.store_observer())
    except OwnedByAnother as exc:
        log.critical("%s", exc)
        raise SystemExit(2) from None
    await run_service(listen=listen, store=store, grace=grace, build=assemble, stop=stop)
