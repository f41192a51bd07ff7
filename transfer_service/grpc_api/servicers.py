"""TransferService: parse the request, call the application, answer."""

from __future__ import annotations

import dataclasses

import grpc

from bank.v1 import transfer_pb2 as pb
from bank.v1 import transfer_pb2_grpc
from grpc_common import caller
from shared_kernel import page_tokens
from shared_kernel.errors import InvalidArgument
from shared_kernel.values import parse_id, parse_optional_id, parse_page_size
from transfer_service.application import Transfers
from transfer_service.domain import Transfer, TransferRequested
from transfer_service.grpc_api import messages, requests
from transfer_service.grpc_api.errors import ERRORS

Context = grpc.aio.ServicerContext
# Leaves the caller time to receive "still pending" before its own deadline passes.
_DEADLINE_MARGIN = 0.25
MAX_BATCH = 1000


def _wait(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining - _DEADLINE_MARGIN, 0.0)


def _as_caller(requested: TransferRequested) -> TransferRequested:
    """The request, bound to the owner the caller's token is bound to (if any): the account
    service then holds only on that owner's accounts."""
    owner = caller.bound_owner()
    return dataclasses.replace(requested, owner=owner) if owner else requested


def _visible(transfer: Transfer) -> bool:
    """Whether the caller may see ``transfer``: an owner-bound token sees its own only."""
    owner = caller.bound_owner()
    return not owner or (transfer.requested is not None and transfer.requested.owner == owner)


@ERRORS.guard
class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    def __init__(self, transfers: Transfers) -> None:
        self._transfers = transfers

    async def _own(self, transfer_id: str) -> None:
        """Refuses an owner-bound caller acting on a transfer it did not ask for."""
        if caller.bound_owner() and not _visible(await self._transfers.get(transfer_id)):
            raise caller.PermissionDenied("this token acts only on its owner's transfers")

    async def CreateTransfer(
        self, request: pb.CreateTransferRequest, context: Context
    ) -> pb.Transfer:
        requested = _as_caller(requests.transfer_request(request))
        transfer = await self._transfers.create(requested, wait=_wait(context))
        return messages.transfer(transfer)

    async def CreateTransfers(
        self, request: pb.CreateTransfersRequest, context: Context
    ) -> pb.CreateTransfersResponse:
        if not 1 <= len(request.transfers) <= MAX_BATCH:
            raise InvalidArgument("transfers", f"a batch holds 1 to {MAX_BATCH} transfers")
        # An invalid item fails alone; the valid ones are recorded together.
        response = pb.CreateTransfersResponse()
        results = response.results
        valid, positions = [], []
        for n, item in enumerate(request.transfers):
            result = results.add()  # filled in place: a message given to add() is copied
            try:
                valid.append(_as_caller(requests.transfer_request(item)))
            except Exception as exc:
                result.error.CopyFrom(ERRORS.status_message_for(exc))
            else:
                positions.append(n)
        if valid:
            outcomes = await self._transfers.create_many(valid, wait=_wait(context))
            for n, outcome in zip(positions, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    results[n].error.CopyFrom(ERRORS.status_message_for(outcome))
                else:
                    messages.fill_transfer(results[n].transfer, outcome)
        return response

    async def PostTransfer(self, request: pb.PostTransferRequest, context: Context) -> pb.Transfer:
        transfer_id = parse_id(request.transfer_id, "transfer_id")
        amount = requests.post_amount(request.amount)
        await self._own(transfer_id)
        transfer = await self._transfers.post(transfer_id, amount, wait=_wait(context))
        return messages.transfer(transfer)

    async def VoidTransfer(self, request: pb.VoidTransferRequest, context: Context) -> pb.Transfer:
        transfer_id = parse_id(request.transfer_id, "transfer_id")
        await self._own(transfer_id)
        transfer = await self._transfers.void(transfer_id, wait=_wait(context))
        return messages.transfer(transfer)

    async def ReverseTransfer(
        self, request: pb.ReverseTransferRequest, context: Context
    ) -> pb.Transfer:
        transfer_id = parse_id(request.transfer_id, "transfer_id")
        reversal_id = parse_optional_id(request.reversal_id, "reversal_id")
        amount = requests.reversal_amount(request.amount)
        reason = requests.reversal_reason(request.reason)
        transfer = await self._transfers.reverse(
            transfer_id, reversal_id, amount, reason, _wait(context), caller.bound_owner()
        )
        return messages.transfer(transfer)

    async def GetTransfer(self, request: pb.GetTransferRequest, context: Context) -> pb.Transfer:
        transfer = await self._transfers.get(parse_id(request.transfer_id, "transfer_id"))
        if not _visible(transfer):
            raise caller.PermissionDenied("this token sees only its owner's transfers")
        return messages.transfer(transfer)

    async def ListTransfers(
        self, request: pb.ListTransfersRequest, context: Context
    ) -> pb.ListTransfersResponse:
        query = requests.transfer_query(request)
        page_size = parse_page_size(request.page_size)
        listing = requests.listing(query)
        cursor = page_tokens.decode(request.page_token, listing) if request.page_token else None
        page = await self._transfers.of_account(query, cursor, page_size)
        return pb.ListTransfersResponse(
            transfers=[messages.transfer(t) for t in page.transfers if _visible(t)],
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


def _result(outcome: object) -> pb.CreateTransferResult:
    """One item of a batch: what CreateTransfer would have answered for it."""
    if isinstance(outcome, Exception):
        return pb.CreateTransferResult(error=ERRORS.status_message_for(outcome))
    if isinstance(outcome, BaseException):
        raise outcome  # a cancelled call, not an answer
    return pb.CreateTransferResult(transfer=messages.transfer(outcome))
