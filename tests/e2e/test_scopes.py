"""Scopes and owner-bound tokens, end to end: every RPC of every service against a token of
each scope, and tokens bound to an owner across both services."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory

from bank.experimental.v1 import naive_pb2
from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from grpc_common import scopes
from tests.e2e.conftest import refusal
from tests.e2e.harness import Bank
from tests.e2e.secured import TRANSFER, TokenFile, token_bank, token_file

pytestmark = pytest.mark.e2e

SERVICES = [
    *apb.DESCRIPTOR.services_by_name.values(),
    *tpb.DESCRIPTOR.services_by_name.values(),
    *naive_pb2.DESCRIPTOR.services_by_name.values(),
]
EVERY_METHOD = [
    (f"/{service.full_name}/{method.name}", method)
    for service in SERVICES
    for method in service.methods
]
SCOPE_TOKENS = {scope: f"only-{scope}" for scope in sorted(scopes.SCOPES)}


def _id() -> str:
    return str(uuid.uuid4())


def _rows(database: Path) -> int:
    """Every row of every table: a refused call must add none."""
    with sqlite3.connect(database) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        return sum(db.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables)


class Fixtures:
    """Accounts and transfers the requests act on, made with an all-powerful token."""

    def __init__(self, bank: Bank, metadata) -> None:
        accounts, transfers = bank.accounts, bank.transfers
        self.a = self._funded(accounts, metadata, "Ada", 1000)
        self.b = self._funded(accounts, metadata, "Bob", 0)
        self.done = transfers.CreateTransfer(
            tpb.CreateTransferRequest(from_account_id=self.a, to_account_id=self.b, amount=5),
            metadata=metadata,
            timeout=30,
        ).transfer_id
        self.pending = transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=self.a, to_account_id=self.b, amount=5, pending=True
            ),
            metadata=metadata,
            timeout=30,
        ).transfer_id

    @staticmethod
    def _funded(accounts, metadata, owner: str, amount: int) -> str:
        account = accounts.OpenAccount(
            apb.OpenAccountRequest(account_id=_id(), owner=owner, currency="EUR"),
            metadata=metadata,
        )
        if amount:
            accounts.Deposit(
                apb.DepositRequest(account_id=account.account_id, amount=amount, request_id="o"),
                metadata=metadata,
            )
        return account.account_id

    def request(self, method: str):
        """A valid request of ``method``: one that would store something if let through."""
        a, b = self.a, self.b
        ref = _id()
        requests: dict[str, Callable[[], object]] = {
            "OpenAccount": lambda: apb.OpenAccountRequest(owner="Eve", currency="EUR"),
            "GetAccount": lambda: apb.GetAccountRequest(account_id=a),
            "Deposit": lambda: apb.DepositRequest(account_id=a, amount=1, request_id=ref),
            "Withdraw": lambda: apb.WithdrawRequest(account_id=a, amount=1, request_id=ref),
            "CloseAccount": lambda: apb.CloseAccountRequest(account_id=b),
            "ListAccountEvents": lambda: apb.ListAccountEventsRequest(account_id=a),
            "WatchAccount": lambda: apb.WatchAccountRequest(account_id=a),
            "SetOverdraftLimit": lambda: apb.SetOverdraftLimitRequest(
                account_id=a, overdraft_limit=10, request_id=ref
            ),
            "Reserve": lambda: apb.ReserveRequest(account_id=a, reference=ref, amount=1),
            "Credit": lambda: apb.CreditRequest(
                account_id=a, reference=ref, amount=1_000_000, currency="EUR"
            ),
            "Capture": lambda: apb.CaptureRequest(account_id=a, reference=self.pending),
            "Release": lambda: apb.ReleaseRequest(account_id=a, reference=self.pending),
            "HoldCredit": lambda: apb.HoldCreditRequest(
                account_id=b, reference=ref, amount=1, currency="EUR"
            ),
            "ConfirmCredit": lambda: apb.ConfirmCreditRequest(account_id=b, reference=ref),
            "CancelCredit": lambda: apb.CancelCreditRequest(account_id=b, reference=ref),
            "ExecuteSteps": lambda: apb.ExecuteStepsRequest(
                steps=[
                    apb.Step(
                        step_id=1,
                        credit=apb.CreditRequest(
                            account_id=a, reference=ref, amount=1_000_000, currency="EUR"
                        ),
                    )
                ]
            ),
            "CreateTransfer": lambda: tpb.CreateTransferRequest(
                from_account_id=a, to_account_id=b, amount=1
            ),
            "CreateTransfers": lambda: tpb.CreateTransfersRequest(
                transfers=[tpb.CreateTransferRequest(from_account_id=a, to_account_id=b, amount=1)]
            ),
            "PostTransfer": lambda: tpb.PostTransferRequest(transfer_id=self.pending),
            "VoidTransfer": lambda: tpb.VoidTransferRequest(transfer_id=self.pending),
            "ReverseTransfer": lambda: tpb.ReverseTransferRequest(transfer_id=self.done),
            "GetTransfer": lambda: tpb.GetTransferRequest(transfer_id=self.done),
            "ListTransfers": lambda: tpb.ListTransfersRequest(account_id=a),
            "ListUnfinishedTransfers": lambda: tpb.ListUnfinishedTransfersRequest(),
            "Transfer": lambda: naive_pb2.NaiveTransferRequest(
                from_account_id=a, to_account_id=b, amount=1
            ),
        }
        name = method.rsplit("/", 1)[1]
        assert name in requests, f"no request for {method}: add one to this test"
        return requests[name]()


@pytest.fixture(scope="module")
def scoped(tmp_path_factory) -> Iterator[tuple[Bank, TokenFile, Fixtures]]:
    workdir = tmp_path_factory.mktemp("scoped")
    tokens = token_file(workdir)
    tokens.add("everything", "scopes=read,teller,transfer,operator,reservation")
    for scope, name in SCOPE_TOKENS.items():
        tokens.add(name, f"scopes={scope}")
    with token_bank(workdir, tokens, "--experimental-naive-transfers") as bank:
        yield bank, tokens, Fixtures(bank, tokens.metadata("everything"))


def _call(bank: Bank, method: str, descriptor, request, metadata) -> None:
    """Calls ``method`` on the service that serves it, whatever its kind."""
    service = bank.transfer if method.startswith("/bank.v1.TransferService/") else bank.account
    assert service is not None
    channel = bank.channel(service.address)
    response = message_factory.GetMessageClass(descriptor.output_type)
    kind = (descriptor.client_streaming, descriptor.server_streaming)
    callable_ = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[kind](
        method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response.FromString,
    )
    sent = iter([request]) if descriptor.client_streaming else request
    answer = callable_(sent, metadata=metadata, timeout=3)
    if descriptor.server_streaming:
        list(answer)


def test_every_rpc_has_a_scope():
    missing = [method for method, _ in EVERY_METHOD if scopes.scope_of(method) is None]
    assert missing == []
    assert set(scopes.METHOD_SCOPES) == {method for method, _ in EVERY_METHOD}


@pytest.mark.parametrize("scope", sorted(scopes.SCOPES))
@pytest.mark.parametrize(("method", "descriptor"), EVERY_METHOD, ids=[m for m, _ in EVERY_METHOD])
def test_a_token_calls_only_the_rpcs_of_its_scopes(scoped, method, descriptor, scope):
    bank, tokens, fixtures = scoped
    metadata = tokens.metadata(SCOPE_TOKENS[scope])
    request = fixtures.request(method)
    if scopes.scope_of(method) == scope:
        try:
            _call(bank, method, descriptor, request, metadata)
        except grpc.RpcError as error:
            assert error.code() not in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.UNIMPLEMENTED,
            ), error.details()
        return
    before = [_rows(bank.workdir / "accounts.db"), _rows(bank.workdir / "transfers.db")]
    code, reason, _ = refusal(lambda: _call(bank, method, descriptor, request, metadata))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    after = [_rows(bank.workdir / "accounts.db"), _rows(bank.workdir / "transfers.db")]
    assert after == before


def test_a_line_without_scopes_may_do_all_but_reserve(scoped):
    bank, tokens, fixtures = scoped
    metadata = tokens.metadata(TRANSFER)  # a line without scopes=
    account = bank.accounts.GetAccount(
        apb.GetAccountRequest(account_id=fixtures.a), metadata=metadata
    )
    assert account.owner == "Ada"
    credit = apb.CreditRequest(account_id=fixtures.a, reference=_id(), amount=1, currency="EUR")
    # Its ReservationService rights come from --reservation-callers token:transfer-service.
    bank.reservations.Credit(credit, metadata=metadata)
