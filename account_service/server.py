"""The account service's composition root: application and servicers on an event store."""

from __future__ import annotations

import asyncio

from account_service.application import Accounts
from account_service.grpc_api.servicers import AccountServicer, ReservationServicer
from bank.v1 import account_pb2, account_pb2_grpc
from event_store import AsyncEventStore
from grpc_common.server import Assembly, Service, run_service

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DB = "sqlite:///accounts.db"
_SERVICES = account_pb2.DESCRIPTOR.services_by_name


def build(store: AsyncEventStore) -> Assembly:
    accounts = Accounts(store)
    return Assembly(
        services=[
            Service(
                _SERVICES["AccountService"].full_name,
                AccountServicer(accounts),
                account_pb2_grpc.add_AccountServiceServicer_to_server,
            ),
            Service(
                _SERVICES["ReservationService"].full_name,
                ReservationServicer(accounts),
                account_pb2_grpc.add_ReservationServiceServicer_to_server,
            ),
        ]
    )


async def run(listen: str, db: str, grace: float, stop: asyncio.Event | None = None) -> None:
    await run_service(listen=listen, db=db, grace=grace, build=build, stop=stop)
