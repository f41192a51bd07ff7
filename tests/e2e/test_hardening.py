"""What a hostile review found, each against real processes: certificate rules without
tokens, page tokens with hostile cursors, token files others may read, and tokens revoked
while the services run."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.harness import ServiceProcess
from shared_kernel import page_tokens
from tests.e2e.certificates import Authority
from tests.e2e.conftest import refusal
from tests.e2e.harness import Bank
from tests.e2e.secured import token_bank, token_file

pytestmark = pytest.mark.e2e

DENIED = (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


def _id() -> str:
    return str(uuid.uuid4())


# --- certificate rules hold without tokens ---------------------------------------------------


def test_certificate_callers_are_enforced_without_tokens(tmp_path):
    ca = Authority(tmp_path, "bank-ca")
    server = ca.issue("account-service", server=True)
    transfer_client = ca.issue("transfer-service", server=False)
    teller = ca.issue("teller-app", server=False)

    def credentials(client):
        key, chain = client.pair
        return grpc.ssl_channel_credentials(
            ca.path.read_bytes(), private_key=key, certificate_chain=chain
        )

    bank = Bank(
        f"sqlite:///{tmp_path}/accounts.db",
        f"sqlite:///{tmp_path}/transfers.db",
        tmp_path,
        account_args=[
            *("--tls-cert", str(server.cert), "--tls-key", str(server.key)),
            *("--tls-client-ca", str(ca.path), "--reservation-callers", "CN=transfer-service"),
        ],
        transfer_args=[
            *("--accounts-ca", str(ca.path), "--accounts-server-name", "account-service"),
            *("--accounts-client-cert", str(transfer_client.cert)),
            *("--accounts-client-key", str(transfer_client.key)),
        ],
        account_credentials=credentials(teller),
    ).start()
    try:
        ada = bank.accounts.OpenAccount(
            apb.OpenAccountRequest(account_id=_id(), owner="Ada", currency="EUR")
        )
        bob = bank.accounts.OpenAccount(
            apb.OpenAccountRequest(account_id=_id(), owner="Bob", currency="EUR")
        )
        gift = apb.CreditRequest(
            account_id=ada.account_id, reference=_id(), amount=1_000_000, currency="EUR"
        )
        # The teller's certificate is good for the handshake, not for creating money.
        code, reason, _ = refusal(lambda: bank.reservations.Credit(gift, timeout=10))
        assert (code, reason) == DENIED
        assert bank.accounts.GetAccount(apb.GetAccountRequest(account_id=ada.account_id)) == ada
        # The transfer service's certificate moves money, over the step stream.
        bank.accounts.Deposit(
            apb.DepositRequest(account_id=ada.account_id, amount=100, request_id="d")
        )
        done = bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=ada.account_id, to_account_id=bob.account_id, amount=60
            ),
            timeout=30,
        )
        assert done.state == tpb.TRANSFER_STATE_COMPLETED
        got = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob.account_id))
        assert got.balance == 60
    finally:
        codes = bank.stop()
    assert codes == {"transfer_service": 0, "account_service": 0}, codes


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--reservation-callers", "CN=transfer-service"], "needs --tls-client-ca"),
        (["--reservation-callers", "token:teller-app"], "needs --auth-tokens"),
    ],
)
def test_reservation_callers_that_cannot_be_enforced_stop_the_start(tmp_path, extra, problem):
    ca = Authority(tmp_path, "bank-ca")
    server = ca.issue("account-service", server=True)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "account_service", "--db", f"sqlite:///{tmp_path}/a.db"),
            *("--tls-cert", str(server.cert), "--tls-key", str(server.key), *extra),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert problem in done.stderr


# --- page tokens -------------------------------------------------------------------------------


def _signed(listing: str, cursor: str) -> str:
    """A page token for ``cursor``, tagged with the built-in key as anyone could."""
    payload = f"{listing}|{cursor}".encode()
    tag = hmac.new(page_tokens.BUILTIN_KEY, payload, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(tag + payload).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [str(2**63), "9" * 40, "²", "1²", "٣", "-1", ""])
def test_a_signed_page_token_with_a_hostile_cursor_is_invalid_argument(bank, cursor):
    account = bank.accounts.OpenAccount(apb.OpenAccountRequest(owner="Ada", currency="EUR"))
    calls = {
        "events": lambda: bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(
                account_id=account.account_id,
                page_token=_signed(f"account-events:{account.account_id}", cursor),
            )
        ),
        "unfinished": lambda: bank.transfers.ListUnfinishedTransfers(
            tpb.ListUnfinishedTransfersRequest(page_token=_signed("unfinished-transfers", cursor))
        ),
    }
    for what, call in calls.items():
        code, reason, metadata = refusal(call)
        assert (code, reason, metadata.get("field")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            "page_token",
        ), what
    # The real cursor's token still works, so the refusals above were the cursor's.
    good = _signed(f"account-events:{account.account_id}", "0")
    listed = bank.accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=account.account_id, page_token=good)
    )
    assert len(listed.events) == 1
    for service in (bank.account, bank.transfer):
        assert service is not None
        assert "Traceback" not in service.log()


def test_the_built_in_page_token_key_is_warned_about_beyond_loopback(tmp_path):
    key = tmp_path / "page.key"
    key.write_text("a page-token key of our own, 32+\n")
    key.chmod(0o600)
    warned = ServiceProcess("account_service", f"sqlite:///{tmp_path}/a.db", tmp_path / "a.log")
    warned.extra_args = ["--listen", f"0.0.0.0:{warned.port}"]
    keyed = ServiceProcess("account_service", f"sqlite:///{tmp_path}/b.db", tmp_path / "b.log")
    keyed.extra_args = ["--listen", f"0.0.0.0:{keyed.port}", "--page-token-key-file", str(key)]
    for service in (warned, keyed):
        service.start()
        assert service.stop() == 0
    assert "page tokens are signed with the built-in key on 0.0.0.0" in warned.log()
    assert "built-in key" not in keyed.log()


# --- token files -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["--auth-tokens", "--page-token-key-file"])
def test_a_secret_file_others_may_read_stops_the_start(tmp_path, which):
    tokens = token_file(tmp_path)
    secret = tokens.path if which == "--auth-tokens" else tmp_path / "page.key"
    if which != "--auth-tokens":
        secret.write_text("a page-token key of our own, 32+\n")
    secret.chmod(0o644)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "account_service", "--db", f"sqlite:///{tmp_path}/a.db"),
            *(which, str(secret)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "readable or writable by group or others (mode 0644)" in done.stderr
    assert f"chmod 600 {secret}" in done.stderr


# --- revocation without restart ----------------------------------------------------------------


@pytest.fixture
def revocable(tmp_path):
    tokens = token_file(tmp_path)
    tokens.add("teller")
    tokens.add("watcher", "scopes=read")
    with token_bank(tmp_path, tokens) as bank:
        yield bank, tokens


def _until(check, seconds: float) -> float:
    """Seconds until ``check()`` is true; fails after ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s")


def _refused(call) -> bool:
    try:
        call()
    except grpc.RpcError as error:
        return error.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def test_a_removed_token_stops_working_within_5_seconds_streams_included(revocable):
    bank, tokens = revocable
    teller, watcher = tokens.metadata("teller"), tokens.metadata("watcher")
    account = bank.accounts.OpenAccount(
        apb.OpenAccountRequest(owner="Ada", currency="EUR"), metadata=teller
    )
    get = apb.GetAccountRequest(account_id=account.account_id)
    stream = bank.accounts.WatchAccount(
        apb.WatchAccountRequest(account_id=account.account_id), metadata=watcher, timeout=60
    )
    ended: list[grpc.StatusCode] = []

    def watch() -> None:
        try:
            for _ in stream:
                pass
            ended.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            ended.append(error.code())

    reader = threading.Thread(target=watch)
    reader.start()
    assert bank.accounts.GetAccount(get, metadata=watcher).owner == "Ada"
    transfers = bank.transfers
    tokens.remove("watcher")
    took = _until(lambda: _refused(lambda: bank.accounts.GetAccount(get, metadata=watcher)), 5)
    _until(
        lambda: _refused(
            lambda: transfers.GetTransfer(
                tpb.GetTransferRequest(transfer_id=_id()), metadata=watcher
            )
        ),
        5,
    )
    reader.join(timeout=5)
    assert not reader.is_alive(), "the revoked caller's stream still runs"
    assert ended and ended[0] != grpc.StatusCode.OK
    assert ended[0] != grpc.StatusCode.DEADLINE_EXCEEDED
    # The others keep working, and so do the services between themselves.
    assert bank.accounts.GetAccount(get, metadata=teller).owner == "Ada"
    print(f"[revocation] refused {took:.1f} s after the line was removed; stream: {ended[0].name}")


def test_sighup_reads_the_token_file_again(revocable):
    bank, tokens = revocable
    assert bank.account is not None and bank.account.pid is not None
    newcomer = tokens.add("newcomer")  # the file changes; SIGHUP need not wait for the check
    os.kill(bank.account.pid, signal.SIGHUP)
    opened = _until(
        lambda: (
            not _refused(
                lambda: bank.accounts.OpenAccount(
                    apb.OpenAccountRequest(owner="Ada", currency="EUR"),
                    metadata=(("authorization", f"Bearer {newcomer}"),),
                )
            )
        ),
        5,
    )
    assert opened < 5
    assert "SIGHUP: reading the token file again" in bank.account.log()


def test_a_broken_token_file_keeps_the_tokens_loaded(revocable):
    bank, tokens = revocable
    Path(tokens.path).write_text("this is not a token line\n")
    time.sleep(2.5)
    account = bank.accounts.OpenAccount(
        apb.OpenAccountRequest(owner="Ada", currency="EUR"), metadata=tokens.metadata("teller")
    )
    assert account.owner == "Ada"
    assert bank.account is not None
    assert "token file not reloaded" in bank.account.log()
