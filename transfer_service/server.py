"""The transfer service's composition root: repository, process, account client, server."""

from __future__ import annotations

import asyncio

from bank.v1 import transfer_pb2, transfer_pb2_grpc
from event_store import AsyncEventStore
from grpc_common.server import Assembly, Service, run_service
from shared_kernel.crash import crash_point_from_env
from transfer_service.accounts_client import GrpcAccounts, StreamingAccounts, open_channel
from transfer_service.application import Transfers
from transfer_service.grpc_api.servicers import TransferServicer
from transfer_service.process import POINTS, TransferProcess
from transfer_service.repository import StoredTransfers

DEFAULT_LISTEN = "127.0.0.1:50052"
DEFAULT_DB = "sqlite:///transfers.db"
DEFAULT_ACCOUNTS = "127.0.0.1:50051"
_SERVICE = transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name


def builder(accounts_target: str, deadline: float, transport: str = "stream"):
    def build(store: AsyncEventStore) -> Assembly:
        channel = open_channel(accounts_target)
        repository = StoredTransfers(store)
        accounts: GrpcAccounts | StreamingAccounts
        if transport == "unary":
            accounts = GrpcAccounts(channel, deadline)
        else:
            accounts = StreamingAccounts(channel, deadline)
        process = TransferProcess(
            accounts,
            repository,
            crash_point=crash_point_from_env(POINTS),
            on_retry=lambda *retry: transfers.note_retry(*retry),
        )
        transfers = Transfers(repository, process)

        async def stop() -> None:
            await transfers.close()
            if isinstance(accounts, StreamingAccounts):
                await accounts.close()
            await channel.close()

        return Assembly(
            services=[
                Service(
                    _SERVICE,
                    TransferServicer(transfers),
                    transfer_pb2_grpc.add_TransferServiceServicer_to_server,
                )
            ],
            on_start=[transfers.resume_unfinished],
            on_stop=[stop],
        )

    return build


async def run(
    listen: str,
    db: str,
    accounts: str,
    grace: float,
    deadline: float = 5.0,
    stop: asyncio.Event | None = None,
    transport: str = "stream",
) -> None:
    build = builder(accounts, deadline, transport)
    await run_service(listen=listen, db=db, grace=grace, build=build, stop=stop)
