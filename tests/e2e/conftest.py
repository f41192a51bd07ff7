"""Fixtures that start the bank as real processes on loopback."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from grpc_common.errors import DOMAIN, error_info
from tests import pg
from tests.e2e.harness import Bank, running, sqlite_bank

pytestmark = pytest.mark.e2e


@dataclass
class Result:
    status: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def bank_cli(bank, capsys):
    """Runs ``bank <args>`` against the test bank; its exit status and output."""
    from bank_cli.__main__ import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        argv = [*args, "--accounts", bank.account.address, "--transfers", bank.transfer.address]
        status = main(argv)
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return run


def _sqlite_bank(workdir) -> Iterator[Bank]:
    with running(sqlite_bank(workdir)) as started:
        yield started


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Iterator[Bank]:
    """Both services on SQLite files of their own, shared by a module's tests.

    Tests on a shared bank open accounts of their own, so they do not see each other.
    """
    yield from _sqlite_bank(tmp_path_factory.mktemp("bank"))


@pytest.fixture
def own_bank(tmp_path) -> Iterator[Bank]:
    """A bank for one test alone: for tests that stop, kill or restart the services."""
    yield from _sqlite_bank(tmp_path)


@pytest.fixture
def postgres_schema_url() -> Iterator[Callable[[], str]]:
    """Makes URLs onto fresh Postgres schemas (one per service), dropped afterwards."""
    schemas = pg.schemas()

    def make() -> str:
        try:
            return schemas.new()
        except pg.PostgresUnreachable as exc:
            pg.skip_or_fail(str(exc).splitlines()[0])

    yield make
    schemas.drop()


@pytest.fixture
def pg_bank(tmp_path, postgres_schema_url) -> Iterator[Bank]:
    """Both services on Postgres, each in a schema of its own."""
    with running(Bank(postgres_schema_url(), postgres_schema_url(), tmp_path)) as started:
        yield started


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Runs a call that must fail; its code, ErrorInfo reason and metadata."""
    with pytest.raises(grpc.RpcError) as failure:
        call()
    error = failure.value
    info = error_info(error)
    assert info is not None, f"no ErrorInfo on {error.code()}: {error.details()}"
    assert info.domain == DOMAIN
    return error.code(), info.reason, dict(info.metadata)


def new_account(
    bank: Bank, balance: int = 0, currency: str = "EUR", owner: str = "Ada"
) -> apb.Account:
    """Opens an account with a fresh id and, if asked, deposits an opening balance."""
    account = bank.accounts.OpenAccount(
        apb.OpenAccountRequest(account_id=str(uuid.uuid4()), owner=owner, currency=currency)
    )
    if balance:
        account = bank.accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=balance, request_id="opening")
        )
    return account


@pytest.fixture
def open_account(bank) -> Callable[..., apb.Account]:
    return lambda *args, **kwargs: new_account(bank, *args, **kwargs)
