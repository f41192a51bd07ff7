"""Fixtures that start the bank as real processes on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from grpc_common.errors import DOMAIN, error_info
from tests.e2e.harness import Bank

pytestmark = pytest.mark.e2e


@pytest.fixture
def bank(tmp_path) -> Iterator[Bank]:
    """Both services on SQLite files of their own."""
    running = Bank(
        f"sqlite:///{tmp_path}/accounts.db", f"sqlite:///{tmp_path}/transfers.db", tmp_path
    ).start()
    try:
        yield running
    finally:
        codes = running.stop()
    assert codes == {"transfer_service": 0, "account_service": 0}, codes


@pytest.fixture
def pg_bank(tmp_path, postgres_url_factory) -> Iterator[Bank]:
    """Both services on Postgres, each in a schema of its own."""
    running = Bank(postgres_url_factory(), postgres_url_factory(), tmp_path).start()
    try:
        yield running
    finally:
        codes = running.stop()
    assert codes == {"transfer_service": 0, "account_service": 0}, codes


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Runs a call that must fail; its code, ErrorInfo reason and metadata."""
    with pytest.raises(grpc.RpcError) as failure:
        call()
    error = failure.value
    info = error_info(error)
    assert info is not None, f"no ErrorInfo on {error.code()}: {error.details()}"
    assert info.domain == DOMAIN
    return error.code(), info.reason, dict(info.metadata)


@pytest.fixture
def open_account(bank) -> Callable[..., apb.Account]:
    def open_(balance: int = 0, currency: str = "EUR", owner: str = "Ada") -> apb.Account:
        account = bank.accounts.OpenAccount(
            apb.OpenAccountRequest(account_id=str(uuid.uuid4()), owner=owner, currency=currency)
        )
        if balance:
            account = bank.accounts.Deposit(
                apb.DepositRequest(
                    account_id=account.account_id, amount=balance, request_id=str(uuid.uuid4())
                )
            )
        return account

    return open_
