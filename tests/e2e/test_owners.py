"""Tokens bound to an owner, across both services: they read, change, open and pay from
their owner's accounts only, and see only the transfers they asked for."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from tests.e2e.conftest import refusal
from tests.e2e.harness import Bank
from tests.e2e.secured import TRANSFER, TokenFile, token_bank, token_file

pytestmark = pytest.mark.e2e

DENIED = (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


def _id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def owned(tmp_path_factory) -> Iterator[tuple[Bank, TokenFile]]:
    workdir = tmp_path_factory.mktemp("owned")
    tokens = token_file(workdir)
    tokens.add("bank-staff")
    tokens.add("ada-app", "owner=Ada scopes=read,teller,transfer")
    with token_bank(workdir, tokens) as bank:
        yield bank, tokens


def _open(bank: Bank, tokens: TokenFile, owner: str, balance: int) -> str:
    staff = tokens.metadata("bank-staff")
    account_id = _id()
    bank.accounts.OpenAccount(
        apb.OpenAccountRequest(account_id=account_id, owner=owner, currency="EUR"),
        metadata=staff,
    )
    if balance:
        bank.accounts.Deposit(
            apb.DepositRequest(account_id=account_id, amount=balance, request_id="o"),
            metadata=staff,
        )
    return account_id


def _balance(bank: Bank, tokens: TokenFile, account_id: str) -> tuple[int, int]:
    account = bank.accounts.GetAccount(
        apb.GetAccountRequest(account_id=account_id), metadata=tokens.metadata("bank-staff")
    )
    return account.balance, account.reserved


def _transfer(bank: Bank, md, source: str, target: str, amount: int, **extra) -> tpb.Transfer:
    request = tpb.CreateTransferRequest(
        from_account_id=source, to_account_id=target, amount=amount, **extra
    )
    return bank.transfers.CreateTransfer(request, metadata=md, timeout=30)


def test_an_owner_token_acts_on_its_owners_accounts(owned):
    bank, tokens = owned
    ada = tokens.metadata("ada-app")
    opened = bank.accounts.OpenAccount(
        apb.OpenAccountRequest(owner="Ada", currency="EUR"), metadata=ada
    )
    account_id = opened.account_id
    bank.accounts.Deposit(
        apb.DepositRequest(account_id=account_id, amount=100, request_id="d"), metadata=ada
    )
    bank.accounts.Withdraw(
        apb.WithdrawRequest(account_id=account_id, amount=30, request_id="w"), metadata=ada
    )
    got = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account_id), metadata=ada)
    assert got.balance == 70
    past = bank.accounts.GetAccount(
        apb.GetAccountRequest(account_id=account_id, as_of_version=2), metadata=ada
    )
    assert past.balance == 100
    events = bank.accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=account_id), metadata=ada
    )
    assert len(events.events) == 3


def test_an_owner_token_may_not_touch_another_owners_account(owned):
    bank, tokens = owned
    ada = tokens.metadata("ada-app")
    bob = _open(bank, tokens, "Bob", 500)
    before = _balance(bank, tokens, bob)
    accounts = bank.accounts
    calls = {
        "open for another owner": lambda: accounts.OpenAccount(
            apb.OpenAccountRequest(owner="Bob", currency="EUR"), metadata=ada
        ),
        "read": lambda: accounts.GetAccount(apb.GetAccountRequest(account_id=bob), metadata=ada),
        "read the past": lambda: accounts.GetAccount(
            apb.GetAccountRequest(account_id=bob, as_of_version=1), metadata=ada
        ),
        "events": lambda: accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=bob), metadata=ada
        ),
        "watch": lambda: list(
            accounts.WatchAccount(apb.WatchAccountRequest(account_id=bob), metadata=ada, timeout=5)
        ),
        "deposit": lambda: accounts.Deposit(
            apb.DepositRequest(account_id=bob, amount=1_000_000, request_id="x"), metadata=ada
        ),
        "withdraw": lambda: accounts.Withdraw(
            apb.WithdrawRequest(account_id=bob, amount=500, request_id="x"), metadata=ada
        ),
        "overdraft": lambda: accounts.SetOverdraftLimit(
            apb.SetOverdraftLimitRequest(account_id=bob, overdraft_limit=10**9, request_id="x"),
            metadata=ada,
        ),
        "close": lambda: accounts.CloseAccount(
            apb.CloseAccountRequest(account_id=bob), metadata=ada
        ),
    }
    for what, call in calls.items():
        code, reason, _ = refusal(call)
        assert (code, reason) == DENIED, what
    assert _balance(bank, tokens, bob) == before
    events = bank.accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=bob), metadata=tokens.metadata("bank-staff")
    )
    assert len(events.events) == 2  # opened, deposited: nothing stored by the refusals


def test_an_owner_token_pays_from_its_owners_account_to_anyone(owned):
    bank, tokens = owned
    ada_md = tokens.metadata("ada-app")
    ada, bob = _open(bank, tokens, "Ada", 300), _open(bank, tokens, "Bob", 0)
    done = _transfer(bank, ada_md, ada, bob, 120)
    assert done.state == tpb.TRANSFER_STATE_COMPLETED
    assert _balance(bank, tokens, ada) == (180, 0)
    assert _balance(bank, tokens, bob) == (120, 0)
    seen = bank.transfers.GetTransfer(
        tpb.GetTransferRequest(transfer_id=done.transfer_id), metadata=ada_md
    )
    assert seen.state == tpb.TRANSFER_STATE_COMPLETED


def test_an_owner_token_cannot_pay_from_another_owners_account(owned):
    bank, tokens = owned
    ada_md = tokens.metadata("ada-app")
    ada, bob = _open(bank, tokens, "Ada", 50), _open(bank, tokens, "Bob", 400)
    transfer_id = _id()
    code, reason, _ = refusal(
        lambda: _transfer(bank, ada_md, bob, ada, 400, transfer_id=transfer_id)
    )
    assert (code, reason) == DENIED
    # Ada's leg is held first, then Bob's is refused: Ada's hold is released.
    legs = [
        tpb.Leg(from_account_id=ada, to_account_id=bob, amount=10),
        tpb.Leg(from_account_id=bob, to_account_id=ada, amount=100),
    ]
    code, reason, _ = refusal(
        lambda: bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(legs=legs), metadata=ada_md, timeout=30
        )
    )
    assert (code, reason) == DENIED
    # Nothing moved, nothing held: money stays where it was.
    assert _balance(bank, tokens, bob) == (400, 0)
    assert _balance(bank, tokens, ada) == (50, 0)
    failed = bank.transfers.GetTransfer(
        tpb.GetTransferRequest(transfer_id=transfer_id), metadata=tokens.metadata("bank-staff")
    )
    assert failed.state == tpb.TRANSFER_STATE_FAILED


def test_a_client_cannot_forge_the_owner_by_calling_the_account_service(owned):
    bank, tokens = owned
    bob = _open(bank, tokens, "Bob", 50)
    reserve = apb.ReserveRequest(account_id=bob, reference=_id(), amount=50, owner="Bob")
    for name in ("ada-app", "bank-staff"):
        code, reason, _ = refusal(
            lambda name=name: bank.reservations.Reserve(reserve, metadata=tokens.metadata(name))
        )
        assert (code, reason) == DENIED
    assert _balance(bank, tokens, bob) == (50, 0)


def test_an_owner_token_sees_only_its_own_transfers(owned):
    bank, tokens = owned
    ada_md, staff = tokens.metadata("ada-app"), tokens.metadata("bank-staff")
    ada, bob = _open(bank, tokens, "Ada", 100), _open(bank, tokens, "Bob", 100)
    mine = _transfer(bank, ada_md, ada, bob, 10)
    theirs = _transfer(bank, staff, bob, ada, 20)
    code, reason, _ = refusal(
        lambda: bank.transfers.GetTransfer(
            tpb.GetTransferRequest(transfer_id=theirs.transfer_id), metadata=ada_md
        )
    )
    assert (code, reason) == DENIED
    listed = bank.transfers.ListTransfers(tpb.ListTransfersRequest(account_id=ada), metadata=ada_md)
    assert [t.transfer_id for t in listed.transfers] == [mine.transfer_id]
    everything = bank.transfers.ListTransfers(
        tpb.ListTransfersRequest(account_id=ada), metadata=staff
    )
    assert len(everything.transfers) == 2


def test_an_owner_token_reverses_only_what_came_to_its_owner(owned):
    bank, tokens = owned
    ada_md, staff = tokens.metadata("ada-app"), tokens.metadata("bank-staff")
    ada, bob = _open(bank, tokens, "Ada", 100), _open(bank, tokens, "Bob", 100)
    paid_by_ada = _transfer(bank, ada_md, ada, bob, 40)
    # Taking back what Ada paid would take it from Bob's account: refused.
    code, reason, _ = refusal(
        lambda: bank.transfers.ReverseTransfer(
            tpb.ReverseTransferRequest(transfer_id=paid_by_ada.transfer_id),
            metadata=ada_md,
            timeout=30,
        )
    )
    assert (code, reason) == DENIED
    assert _balance(bank, tokens, bob) == (140, 0)
    # Sending back what came to Ada pays from Ada's account: allowed.
    paid_to_ada = _transfer(bank, staff, bob, ada, 25)
    back = bank.transfers.ReverseTransfer(
        tpb.ReverseTransferRequest(transfer_id=paid_to_ada.transfer_id),
        metadata=ada_md,
        timeout=30,
    )
    assert back.state == tpb.TRANSFER_STATE_COMPLETED
    assert _balance(bank, tokens, ada) == (60, 0)
    assert _balance(bank, tokens, bob) == (140, 0)


def test_an_unbound_token_still_acts_on_every_account(owned):
    bank, tokens = owned
    staff = tokens.metadata(TRANSFER)
    bob = _open(bank, tokens, "Bob", 10)
    got = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob), metadata=staff)
    assert got.balance == 10
