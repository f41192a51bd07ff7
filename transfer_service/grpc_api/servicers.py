"""TransferService: parse the request, call the application, answer."""

from __future__ import annotations

import grpc

from bank.v1 import transfer_pb2 as pb
from bank.v1 import transfer_pb2_grpc
from shared_kernel import page_tokens
from shared_kernel.errors import InvalidArgument
from shared_kernel.values import (
    parse_amount,
    parse_id,
    parse_optional_id,
    parse_page_size,
)
from transfer_service.application import Transfers
from transfer_service.grpc_api import messages
from transfer_service.grpc_api.errors import ERRORS

Context = grpc.aio.ServicerContext
# Leaves the caller time to receive "still pending" before its own deadline passes.
_DEADLINE_MARGIN = 0.25


@ERRORS.guard
class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    def __init__(self, transfers: Transfers) -> None:
        self._transfers = transfers

    async def CreateTransfer(
        self, request: pb.CreateTransferRequest, context: Context
    ) -> pb.Transfer:
        transfer_id = parse_optional_id(request.transfer_id, "transfer_id")
        from_account_id = parse_id(request.from_account_id, "from_account_id")
        to_account_id = parse_id(request.to_account_id, "to_account_id")
        if from_account_id == to_account_id:
            raise InvalidArgument("to_account_id", "must differ from from_account_id")
        amount = parse_amount(request.amount)
        remaining = context.time_remaining()
        wait = None if remaining is None else max(remaining - _DEADLINE_MARGIN, 0.0)
        transfer = await self._transfers.create(
            transfer_id, from_account_id, to_account_id, amount, wait=wait
        )
        return messages.transfer(transfer)

    async def GetTransfer(self, request: pb.GetTransferRequest, context: Context) -> pb.Transfer:
        transfer = await self._transfers.get(parse_id(request.transfer_id, "transfer_id"))
        return messages.transfer(transfer)

    async def ListTransfers(
        self, request: pb.ListTransfersRequest, context: Context
    ) -> pb.ListTransfersResponse:
        account_id = parse_id(request.account_id, "account_id")
        page_size = parse_page_size(request.page_size)
        listing = f"transfers:{account_id}"
        before = page_tokens.decode(request.page_token, listing) if request.page_token else None
        page = await self._transfers.of_account(account_id, before, page_size)
        return pb.ListTransfersResponse(
            transfers=[messages.transfer(t) for t in page.transfers],
            next_page_token=(
                page_tokens.encode(listing, page.next_cursor) if page.next_cursor else ""
            ),
        )

    async def ListUnfinishedTransfers(
        self, request: pb.ListUnfinishedTransfersRequest, context: Context
    ) -> pb.ListUnfinishedTransfersResponse:
        page_size = parse_page_size(request.page_size)
        listing = "unfinished-transfers"
        after = page_tokens.decode(request.page_token, listing) if request.page_token else 0
        page = await self._transfers.unfinished(after, page_size)
        return pb.ListUnfinishedTransfersResponse(
            transfers=[messages.unfinished(entry) for entry in page.entries],
            next_page_token=(
                page_tokens.encode(listing, page.next_cursor) if page.next_cursor else ""
            ),
        )
