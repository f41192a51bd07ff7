"""The seed experiment: N transfers with K in flight, alternating between two accounts.

Used by the end-to-end tests (and reusable by hand): it returns what happened and checks
nothing itself, so callers assert on conservation, open holds and references.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb

OPENING_BALANCE = 1_000_000


@dataclass
class SeedRun:
    requested: int
    completed: int
    failed: int
    seconds: float
    balances_before: tuple[int, int]
    balances_after: tuple[int, int]
    reserved_after: tuple[int, int]
    open_reservations: int
    duplicate_references: int

    @property
    def per_second(self) -> float:
        return self.requested / self.seconds


async def seed_run(
    accounts_address: str, transfers_address: str, total: int, in_flight: int
) -> SeedRun:
    async with (
        grpc.aio.insecure_channel(accounts_address) as account_channel,
        grpc.aio.insecure_channel(transfers_address) as transfer_channel,
    ):
        accounts = account_pb2_grpc.AccountServiceStub(account_channel)
        transfers = transfer_pb2_grpc.TransferServiceStub(transfer_channel)
        pair = []
        for owner in ("A", "B"):
            account = await accounts.OpenAccount(
                apb.OpenAccountRequest(owner=owner, currency="EUR")
            )
            account = await accounts.Deposit(
                apb.DepositRequest(
                    account_id=account.account_id, amount=OPENING_BALANCE, request_id="opening"
                )
            )
            pair.append(account.account_id)

        gate = asyncio.Semaphore(in_flight)
        outcomes: Counter[str] = Counter()

        async def one(n: int) -> None:
            source, target = (pair[0], pair[1]) if n % 2 == 0 else (pair[1], pair[0])
            request = tpb.CreateTransferRequest(
                transfer_id=str(uuid.uuid4()),
                from_account_id=source,
                to_account_id=target,
                amount=1 + n % 97,
            )
            async with gate:
                try:
                    answer = await transfers.CreateTransfer(request, timeout=120)
                    outcomes[tpb.TransferState.Name(answer.state)] += 1
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(total)))
        seconds = time.perf_counter() - started

        after = [await accounts.GetAccount(apb.GetAccountRequest(account_id=a)) for a in pair]
        duplicates = 0
        for account_id in pair:
            seen: Counter[tuple[int, str]] = Counter()
            token = ""
            while True:
                page = await accounts.ListAccountEvents(
                    apb.ListAccountEventsRequest(
                        account_id=account_id, page_size=1000, page_token=token
                    )
                )
                seen.update((e.type, e.reference) for e in page.events)
                token = page.next_page_token
                if not token:
                    break
            duplicates += sum(count - 1 for count in seen.values() if count > 1)
        return SeedRun(
            requested=total,
            completed=outcomes["TRANSFER_STATE_COMPLETED"],
            failed=total - outcomes["TRANSFER_STATE_COMPLETED"],
            seconds=seconds,
            balances_before=(OPENING_BALANCE, OPENING_BALANCE),
            balances_after=(after[0].balance, after[1].balance),
            reserved_after=(after[0].reserved, after[1].reserved),
            open_reservations=sum(len(a.reservations) for a in after),
            duplicate_references=duplicates,
        )
