"""One call of every RPC of the public services, for tests that check who may make it."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator

import grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc, transfer_pb2_grpc
from bank.v1 import transfer_pb2 as tpb


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _account_id() -> str:
    return str(uuid.uuid4())


Call = Callable[[grpc.Channel, tuple], object]

ACCOUNT_RPCS: dict[str, Call] = {
    "OpenAccount": lambda ch, md: account_pb2_grpc.AccountServiceStub(ch).OpenAccount(
        apb.OpenAccountRequest(owner="Eve", currency="EUR"), metadata=md, timeout=10
    ),
    "GetAccount": lambda ch, md: account_pb2_grpc.AccountServiceStub(ch).GetAccount(
        apb.GetAccountRequest(account_id=_account_id()), metadata=md, timeout=10
    ),
    "Deposit": lambda ch, md: account_pb2_grpc.AccountServiceStub(ch).Deposit(
        apb.DepositRequest(account_id=_account_id(), amount=1, request_id="d"),
        metadata=md,
        timeout=10,
    ),
    "Withdraw": lambda ch, md: account_pb2_grpc.AccountServiceStub(ch).Withdraw(
        apb.WithdrawRequest(account_id=_account_id(), amount=1, request_id="w"),
        metadata=md,
        timeout=10,
    ),
    "CloseAccount": lambda ch, md: account_pb2_grpc.AccountServiceStub(ch).CloseAccount(
        apb.CloseAccountRequest(account_id=_account_id()), metadata=md, timeout=10
    ),
    "ListAccountEvents": lambda ch, md: account_pb2_grpc.AccountServiceStub(ch).ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=_account_id()), metadata=md, timeout=10
    ),
    "WatchAccount": lambda ch, md: list(
        account_pb2_grpc.AccountServiceStub(ch).WatchAccount(
            apb.WatchAccountRequest(account_id=_account_id()), metadata=md, timeout=10
        )
    ),
}


def _reservation_rpcs(account_id: Callable[[], str]) -> dict[str, Call]:
    def stub(ch: grpc.Channel) -> account_pb2_grpc.ReservationServiceStub:
        return account_pb2_grpc.ReservationServiceStub(ch)

    def steps() -> Iterator[apb.ExecuteStepsRequest]:
        reserve = apb.ReserveRequest(account_id=account_id(), reference="steal", amount=1)
        yield apb.ExecuteStepsRequest(steps=[apb.Step(step_id=1, reserve=reserve)])

    return {
        "Reserve": lambda ch, md: stub(ch).Reserve(
            apb.ReserveRequest(account_id=account_id(), reference="steal", amount=1),
            metadata=md,
            timeout=10,
        ),
        "Credit": lambda ch, md: stub(ch).Credit(
            apb.CreditRequest(
                account_id=account_id(), reference="gift", amount=1_000_000, currency="EUR"
            ),
            metadata=md,
            timeout=10,
        ),
        "Capture": lambda ch, md: stub(ch).Capture(
            apb.CaptureRequest(account_id=account_id(), reference="steal"),
            metadata=md,
            timeout=10,
        ),
        "Release": lambda ch, md: stub(ch).Release(
            apb.ReleaseRequest(account_id=account_id(), reference="steal"),
            metadata=md,
            timeout=10,
        ),
        "ExecuteSteps": lambda ch, md: list(
            stub(ch).ExecuteSteps(steps(), metadata=md, timeout=10)
        ),
    }


RESERVATION_RPCS = _reservation_rpcs(_account_id)

TRANSFER_RPCS: dict[str, Call] = {
    "CreateTransfer": lambda ch, md: transfer_pb2_grpc.TransferServiceStub(ch).CreateTransfer(
        tpb.CreateTransferRequest(
            from_account_id=_account_id(), to_account_id=_account_id(), amount=1
        ),
        metadata=md,
        timeout=10,
    ),
    "GetTransfer": lambda ch, md: transfer_pb2_grpc.TransferServiceStub(ch).GetTransfer(
        tpb.GetTransferRequest(transfer_id=_account_id()), metadata=md, timeout=10
    ),
    "ListTransfers": lambda ch, md: transfer_pb2_grpc.TransferServiceStub(ch).ListTransfers(
        tpb.ListTransfersRequest(account_id=_account_id()), metadata=md, timeout=10
    ),
}

EVERY_RPC = [
    *[("account", f"AccountService/{name}", call) for name, call in ACCOUNT_RPCS.items()],
    *[("account", f"ReservationService/{name}", call) for name, call in RESERVATION_RPCS.items()],
    *[("transfer", f"TransferService/{name}", call) for name, call in TRANSFER_RPCS.items()],
]
BAD_CREDENTIALS = {
    "none": lambda tokens: (),
    "wrong-token": lambda tokens: bearer(secrets.token_urlsafe(32)),
    "token-of-another-scheme": lambda tokens: (("authorization", f"Basic {tokens.client}"),),
    "empty-bearer": lambda tokens: (("authorization", "Bearer "),),
    "two-headers": lambda tokens: (
        ("authorization", f"Bearer {tokens.client}"),
        ("authorization", "Bearer x"),
    ),
}
