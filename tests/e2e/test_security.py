"""TLS, mutual TLS, bearer tokens and the ReservationService's authorization, end to end.

Certificates and tokens are made here, per test run, in temporary directories.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc
from bank.v1 import transfer_pb2 as tpb
from bank_cli.__main__ import main as cli_main
from bank_cli.harness import ServiceProcess
from tests.e2e.certificates import CLIENT, TRANSFER, Authority, Pki
from tests.e2e.conftest import refusal
from tests.e2e.harness import Bank
from tests.e2e.security_calls import (
    BAD_CREDENTIALS,
    EVERY_RPC,
    RESERVATION_RPCS,
    _account_id,
    _reservation_rpcs,
    bearer,
)

pytestmark = pytest.mark.e2e


# --- certificates ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory, "bank-ca")
    rogue = Authority(directory, "rogue-ca")
    return Pki(
        ca=ca,
        account_server=ca.issue("account-service", server=True),
        transfer_server=ca.issue("transfer-service-api", server=True),
        transfer_client=ca.issue(TRANSFER, server=False),
        teller_client=ca.issue(CLIENT, server=False),
        rogue_ca=rogue,
        rogue_client=rogue.issue(TRANSFER, server=False),
    )


# --- tokens ---------------------------------------------------------------------------------


@dataclass
class Tokens:
    client: str
    transfer: str
    table: Path  # the hashed token file the services read
    transfer_file: Path  # the raw token the transfer service sends
    client_file: Path  # a raw client token, to misconfigure the transfer service with

    @property
    def secrets(self) -> list[str]:
        return [self.client, self.transfer]


def _hash_line(name: str, token: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "grpc_common.auth", "hash", name],
        input=token + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert token not in done.stdout + done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Tokens:
    directory = tmp_path_factory.mktemp("tokens")
    client, transfer = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    table = directory / "tokens"
    table.write_text(
        f"# name sha256:<hex>\n{_hash_line(CLIENT, client)}\n{_hash_line(TRANSFER, transfer)}\n"
    )
    transfer_file = directory / "transfer.token"
    transfer_file.write_text(transfer + "\n")
    client_file = directory / "client.token"
    client_file.write_text(client + "\n")
    for path in (table, transfer_file, client_file):
        path.chmod(0o600)
    return Tokens(client, transfer, table, transfer_file, client_file)


def assert_no_secrets(bank: Bank, tokens: Tokens, pki: Pki | None = None) -> None:
    """Neither service's log holds a token, a token's hash or a private key."""
    from grpc_common.auth import hash_token

    forbidden = [*tokens.secrets, *(hash_token(t).split(":")[1] for t in tokens.secrets)]
    for service in (bank.account, bank.transfer):
        assert service is not None
        text = service.log_path.read_text(errors="replace")
        assert text, f"{service.module} wrote no log"
        for secret in forbidden:
            assert secret not in text, f"a secret in the log of {service.module}"
        assert "PRIVATE KEY" not in text
        if pki is not None:
            for issued in (pki.account_server, pki.transfer_server, pki.transfer_client):
                body = issued.key.read_text().splitlines()[1]
                assert body not in text


def _stop(bank: Bank) -> None:
    codes = bank.stop()
    assert codes == {"transfer_service": 0, "account_service": 0}, codes


# --- a bank with tokens, in plaintext on loopback ---------------------------------------------


def _token_bank(workdir: Path, tokens: Tokens, *transfer_args: str) -> Bank:
    auth = ["--auth-tokens", str(tokens.table), "--log-level", "DEBUG"]
    return Bank(
        f"sqlite:///{workdir}/accounts.db",
        f"sqlite:///{workdir}/transfers.db",
        workdir,
        account_args=auth,
        transfer_args=[*auth, *transfer_args],
    )


@pytest.fixture(scope="module")
def token_bank(tmp_path_factory, tokens) -> Iterator[Bank]:
    bank = _token_bank(
        tmp_path_factory.mktemp("token-bank"),
        tokens,
        "--accounts-token-file",
        str(tokens.transfer_file),
    ).start()
    try:
        yield bank
    finally:
        _stop(bank)
    assert_no_secrets(bank, tokens)


def _channel(bank: Bank, which: str) -> grpc.Channel:
    service = bank.account if which == "account" else bank.transfer
    assert service is not None
    return bank.channel(service.address)


def _funded(bank: Bank, token: str, balance: int = 1000, owner: str = "Ada") -> apb.Account:
    accounts = bank.accounts
    account = accounts.OpenAccount(
        apb.OpenAccountRequest(account_id=_account_id(), owner=owner, currency="EUR"),
        metadata=bearer(token),
    )
    if balance:
        account = accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=balance, request_id="o"),
            metadata=bearer(token),
        )
    return account


def _get(bank: Bank, token: str, account_id: str) -> apb.Account:
    request = apb.GetAccountRequest(account_id=account_id)
    return bank.accounts.GetAccount(request, metadata=bearer(token))


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
@pytest.mark.parametrize(("which", "rpc", "call"), EVERY_RPC, ids=[r[1] for r in EVERY_RPC])
def test_every_rpc_refuses_missing_or_bad_credentials(
    token_bank, tokens, which, rpc, call, credentials
):
    metadata = BAD_CREDENTIALS[credentials](tokens)
    code, reason, _ = refusal(lambda: call(_channel(token_bank, which), metadata))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


@pytest.mark.parametrize("rpc", list(RESERVATION_RPCS))
def test_a_client_token_may_not_call_the_reservation_service(token_bank, tokens, rpc):
    account = _funded(token_bank, tokens.client)
    calls = _reservation_rpcs(lambda: account.account_id)
    channel = _channel(token_bank, "account")
    code, reason, _ = refusal(lambda: calls[rpc](channel, bearer(tokens.client)))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    after = _get(token_bank, tokens.client, account.account_id)
    assert after == account  # same version, balance, holds: nothing stored
    assert not after.reservations


def test_a_client_token_opens_accounts_and_transfers_over_the_stream(token_bank, tokens):
    ada = _funded(token_bank, tokens.client, 1000)
    bob = _funded(token_bank, tokens.client, 0, owner="Bob")
    transfer = token_bank.transfers.CreateTransfer(
        tpb.CreateTransferRequest(
            from_account_id=ada.account_id, to_account_id=bob.account_id, amount=300
        ),
        metadata=bearer(tokens.client),
        timeout=30,
    )
    assert transfer.state == tpb.TRANSFER_STATE_COMPLETED
    assert _get(token_bank, tokens.client, ada.account_id).balance == 700
    assert _get(token_bank, tokens.client, bob.account_id).balance == 300
    # The transfer service's own token may call the reservation service directly, too.
    reserved = token_bank.reservations.Reserve(
        apb.ReserveRequest(account_id=ada.account_id, reference="held", amount=5),
        metadata=bearer(tokens.transfer),
    )
    assert reserved.reserved == 5


def test_health_and_reflection_stay_open(token_bank):
    for which in ("account", "transfer"):
        channel = _channel(token_bank, which)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        names = {service.name for service in answer.list_services_response.service}
        assert "grpc.health.v1.Health" in names


def test_traced_steps_send_the_token_on_each_call(tmp_path, tokens):
    """With every trace sampled, every step goes as a unary call (it carries its trace
    context): each carries the transfer service's token too."""
    bank = _token_bank(
        tmp_path,
        tokens,
        "--otel-exporter",
        "console",
        "--accounts-token-file",
        str(tokens.transfer_file),
    )
    bank.transfer_env = {"OTEL_TRACES_SAMPLER": "always_on"}
    bank.start()
    try:
        ada = _funded(bank, tokens.client, 100)
        bob = _funded(bank, tokens.client, 0, owner="Bob")
        transfer = bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=ada.account_id, to_account_id=bob.account_id, amount=40
            ),
            metadata=bearer(tokens.client),
            timeout=30,
        )
        assert transfer.state == tpb.TRANSFER_STATE_COMPLETED
        assert _get(bank, tokens.client, bob.account_id).balance == 40
    finally:
        _stop(bank)
    assert_no_secrets(bank, tokens)


def test_a_transfer_service_with_a_client_token_moves_nothing(tmp_path, tokens):
    """The account service refuses a transfer service holding someone else's token."""
    bank = _token_bank(tmp_path, tokens, "--accounts-token-file", str(tokens.client_file)).start()
    try:
        ada = _funded(bank, tokens.client, 100)
        bob = _funded(bank, tokens.client, 0, owner="Bob")
        with pytest.raises(grpc.RpcError) as failure:
            bank.transfers.CreateTransfer(
                tpb.CreateTransferRequest(
                    from_account_id=ada.account_id, to_account_id=bob.account_id, amount=40
                ),
                metadata=bearer(tokens.client),
                timeout=3,
            )
        assert failure.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        assert _get(bank, tokens.client, ada.account_id) == ada
        assert _get(bank, tokens.client, bob.account_id) == bob
    finally:
        _stop(bank)
    assert "refuses our credentials: PERMISSION_DENIED" in bank.transfer.log_path.read_text()
    assert_no_secrets(bank, tokens)


def test_a_bad_token_file_stops_the_start_without_showing_the_token(tmp_path, tokens):
    table = tmp_path / "tokens"
    table.write_text(f"{TRANSFER} {tokens.transfer}\n")  # the raw token, not its hash
    table.chmod(0o600)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "account_service"),
            *("--db", f"sqlite:///{tmp_path}/a.db", "--auth-tokens", str(table)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "line 1" in done.stderr
    assert tokens.transfer not in done.stdout + done.stderr


def test_plaintext_beyond_loopback_is_warned_about(tmp_path):
    warned = ServiceProcess("account_service", f"sqlite:///{tmp_path}/a.db", tmp_path / "a.log")
    warned.extra_args = ["--listen", f"0.0.0.0:{warned.port}"]
    quiet = ServiceProcess("account_service", f"sqlite:///{tmp_path}/b.db", tmp_path / "b.log")
    for service in (warned, quiet):
        service.start()
        assert service.stop() == 0
    assert "WARNING account-service grpc_common.server: serving plaintext on 0.0.0.0" in (
        warned.log()
    )
    assert "plaintext" not in quiet.log().replace("security: plaintext", "")


# --- mutual TLS between the services, TLS and tokens for clients ------------------------------


@pytest.fixture(scope="module")
def mtls_bank(tmp_path_factory, tokens, pki) -> Iterator[Bank]:
    workdir = tmp_path_factory.mktemp("mtls-bank")
    common = ["--auth-tokens", str(tokens.table), "--log-level", "DEBUG"]
    bank = Bank(
        f"sqlite:///{workdir}/accounts.db",
        f"sqlite:///{workdir}/transfers.db",
        workdir,
        account_args=[
            *common,
            "--tls-cert",
            str(pki.account_server.cert),
            "--tls-key",
            str(pki.account_server.key),
            "--tls-client-ca",
            str(pki.ca.path),
            "--reservation-callers",
            f"CN={TRANSFER}",
        ],
        transfer_args=[
            *common,
            "--tls-cert",
            str(pki.transfer_server.cert),
            "--tls-key",
            str(pki.transfer_server.key),
            "--accounts-ca",
            str(pki.ca.path),
            "--accounts-server-name",
            "account-service",
            "--accounts-client-cert",
            str(pki.transfer_client.cert),
            "--accounts-client-key",
            str(pki.transfer_client.key),
        ],
        # Clients of the account service need a certificate of their own (mutual TLS).
        account_credentials=pki.client_credentials(pki.teller_client),
        transfer_credentials=pki.client_credentials(),
    ).start()
    try:
        yield bank
    finally:
        _stop(bank)
    assert_no_secrets(bank, tokens, pki)


def test_a_transfer_over_mutual_tls(mtls_bank, tokens):
    ada = _funded(mtls_bank, tokens.client, 1000)
    bob = _funded(mtls_bank, tokens.client, 0, owner="Bob")
    transfer = mtls_bank.transfers.CreateTransfer(
        tpb.CreateTransferRequest(
            from_account_id=ada.account_id, to_account_id=bob.account_id, amount=250
        ),
        metadata=bearer(tokens.client),
        timeout=30,
    )
    assert transfer.state == tpb.TRANSFER_STATE_COMPLETED
    ada_after = _get(mtls_bank, tokens.client, ada.account_id)
    assert (ada_after.balance, ada_after.reserved) == (750, 0)
    assert _get(mtls_bank, tokens.client, bob.account_id).balance == 250
    log = mtls_bank.transfer.log_path.read_text()
    assert "mutual TLS" in log


def test_tokens_are_still_needed_over_tls(mtls_bank, tokens):
    code, reason, _ = refusal(
        lambda: mtls_bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=_account_id()))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    code, reason, _ = refusal(
        lambda: mtls_bank.accounts.GetAccount(apb.GetAccountRequest(account_id=_account_id()))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


def _bank_cli(capsys, bank: Bank, *args: str) -> tuple[int, str, str]:
    """``bank <args>`` in this process, against ``bank``; exit status, stdout, stderr."""
    capsys.readouterr()
    status = cli_main(
        [*args, "--accounts", bank.account.address, "--transfers", bank.transfer.address]
    )
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_cli_over_mutual_tls_with_a_token(mtls_bank, tokens, pki, capsys):
    security = [
        "--ca", str(pki.ca.path),
        "--client-cert", str(pki.teller_client.cert),
        "--client-key", str(pki.teller_client.key),
        "--token-file", str(tokens.client_file),
    ]  # fmt: skip
    ids = []
    for owner in ("Ada", "Bob"):
        status, out, err = _bank_cli(
            capsys, mtls_bank, "open", "--owner", owner, "--currency", "EUR", "--json", *security
        )
        assert status == 0, err
        ids.append(json.loads(out)["account_id"])
    ada, bob = ids
    assert _bank_cli(capsys, mtls_bank, "deposit", ada, "100", *security)[0] == 0
    status, out, err = _bank_cli(capsys, mtls_bank, "transfer", ada, bob, "30", "--json", *security)
    assert status == 0, err
    transfer = json.loads(out)
    assert transfer["state"] == "TRANSFER_STATE_COMPLETED"
    assert _get(mtls_bank, tokens.client, bob).balance == int(transfer["amount"]) > 0
    assert tokens.client not in out + err


def test_the_cli_without_its_token_is_denied(mtls_bank, pki, capsys):
    security = [
        "--ca", str(pki.ca.path),
        "--client-cert", str(pki.teller_client.cert),
        "--client-key", str(pki.teller_client.key),
    ]  # fmt: skip
    status, _, err = _bank_cli(capsys, mtls_bank, "show", _account_id(), *security)
    assert status == 5, err
    assert "denied" in err
    assert "UNAUTHENTICATED" in err


def test_the_cli_refuses_security_files_it_cannot_use(tmp_path, capsys):
    unusable = tmp_path / "token"
    unusable.write_text("not a token, with spaces\n")
    cases = [
        (["--token-file", str(tmp_path / "missing")], "missing"),
        (["--token-file", str(unusable)], str(unusable)),
        (
            ["--client-cert", str(tmp_path / "c.pem"), "--client-key", str(tmp_path / "k.pem")],
            "--ca",
        ),
        (["--ca", str(tmp_path / "no-ca.pem")], "no-ca.pem"),
    ]
    for args, named in cases:
        capsys.readouterr()
        status = cli_main(["show", _account_id(), *args, "--accounts", "127.0.0.1:9"])
        err = capsys.readouterr().err
        assert status == 2, (args, err)
        assert named in err, (args, err)
        assert "with spaces" not in err  # a token file's content is never shown


@pytest.mark.parametrize("rpc", list(RESERVATION_RPCS))
@pytest.mark.parametrize("with_token", [True, False], ids=["client-token", "no-token"])
def test_only_the_transfer_service_certificate_may_reserve(mtls_bank, tokens, rpc, with_token):
    """A client with a valid certificate of its own (and a valid token, or none) is not
    the transfer service."""
    account = _funded(mtls_bank, tokens.client)
    calls = _reservation_rpcs(lambda: account.account_id)
    metadata = bearer(tokens.client) if with_token else ()
    channel = mtls_bank.channel(mtls_bank.account.address, mtls_bank.account_credentials)
    code, reason, _ = refusal(lambda: calls[rpc](channel, metadata))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert _get(mtls_bank, tokens.client, account.account_id) == account


def test_the_transfer_service_certificate_may_reserve(mtls_bank, tokens, pki):
    account = _funded(mtls_bank, tokens.client)
    credentials = pki.client_credentials(pki.transfer_client)
    stub = account_pb2_grpc.ReservationServiceStub(
        mtls_bank.channel(mtls_bank.account.address, credentials)
    )
    reserved = stub.Reserve(
        apb.ReserveRequest(account_id=account.account_id, reference="hold", amount=10),
        timeout=10,
    )
    assert reserved.reserved == 10


def test_a_certificate_may_be_named_by_its_subject_alternative_name(tmp_path, tokens, pki):
    service = ServiceProcess(
        "account_service",
        f"sqlite:///{tmp_path}/accounts.db",
        tmp_path / "account_service.log",
        extra_args=[
            *("--tls-cert", str(pki.account_server.cert), "--tls-key", str(pki.account_server.key)),
            *("--tls-client-ca", str(pki.ca.path), "--auth-tokens", str(tokens.table)),
            *("--reservation-callers", f"SAN={TRANSFER}"),
        ],
        credentials=pki.client_credentials(pki.teller_client),
    ).start()
    try:
        request = apb.OpenAccountRequest(account_id=_account_id(), owner="Ada", currency="EUR")
        with service.open_channel() as channel:
            account = account_pb2_grpc.AccountServiceStub(channel).OpenAccount(
                request, metadata=bearer(tokens.client), timeout=10
            )
        credit = apb.CreditRequest(
            account_id=account.account_id, reference="t1", amount=5, currency="EUR"
        )
        credentials = pki.client_credentials(pki.transfer_client)
        with grpc.secure_channel(service.address, credentials) as channel:
            credited = account_pb2_grpc.ReservationServiceStub(channel).Credit(credit, timeout=10)
        assert credited.balance == 5
        with service.open_channel() as channel:  # CN=teller-app, SAN teller-app
            stub = account_pb2_grpc.ReservationServiceStub(channel)
            code, reason, _ = refusal(lambda: stub.Credit(credit, timeout=10))
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    finally:
        assert service.stop() == 0


def test_the_token_and_tls_survive_an_account_service_outage(tmp_path, tokens, pki):
    """The stream to the account service reopens with its credentials after a restart."""
    tls_args = ["--tls-cert", str(pki.account_server.cert), "--tls-key"]
    bank = _token_bank(
        tmp_path,
        tokens,
        *("--accounts-ca", str(pki.ca.path)),
        *("--accounts-token-file", str(tokens.transfer_file)),
    )
    # --grace 1: a draining account service waits out the transfer service's open stream.
    bank.account_args += [*tls_args, str(pki.account_server.key), "--grace", "1"]
    bank.account_credentials = pki.client_credentials()
    bank.start()
    try:
        ada = _funded(bank, tokens.client, 100)
        bob = _funded(bank, tokens.client, 0, owner="Bob")
        request = tpb.CreateTransferRequest(
            transfer_id=_account_id(),
            from_account_id=ada.account_id,
            to_account_id=bob.account_id,
            amount=10,
        )
        first = bank.transfers.CreateTransfer(request, metadata=bearer(tokens.client), timeout=30)
        assert first.state == tpb.TRANSFER_STATE_COMPLETED
        assert bank.account.stop() == 0
        request.transfer_id = _account_id()
        code, reason, _ = refusal(
            lambda: bank.transfers.CreateTransfer(
                request, metadata=bearer(tokens.client), timeout=2
            )
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "TRANSFER_PENDING")
        bank.account.start()
        done = bank.transfers.CreateTransfer(request, metadata=bearer(tokens.client), timeout=30)
        assert done.state == tpb.TRANSFER_STATE_COMPLETED
        assert _get(bank, tokens.client, bob.account_id).balance == 20
    finally:
        _stop(bank)
    assert_no_secrets(bank, tokens, pki)


def _unavailable(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_trusting_another_ca_cannot_connect(mtls_bank, pki):
    """The handshake fails on the client: the server's certificate is not from its CA."""
    for service, client in ((mtls_bank.transfer, None), (mtls_bank.account, pki.teller_client)):
        credentials = pki.client_credentials(client, ca=pki.rogue_ca)
        _unavailable(mtls_bank.channel(service.address, credentials))


def test_the_account_service_refuses_clients_without_a_certificate_from_its_ca(mtls_bank, pki):
    address = mtls_bank.account.address
    _unavailable(mtls_bank.channel(address, pki.client_credentials()))
    _unavailable(mtls_bank.channel(address, pki.client_credentials(pki.rogue_client)))
    _unavailable(mtls_bank.channel(address))  # plaintext


def test_no_secret_in_the_logs(mtls_bank, token_bank, tokens, pki):
    """Refused calls of every kind, then the logs: no token, hash or key in them."""
    for bank in (token_bank, mtls_bank):
        for metadata in (bearer(tokens.client), bearer(tokens.transfer[::-1]), ()):
            with pytest.raises(grpc.RpcError):
                RESERVATION_RPCS["Reserve"](
                    bank.channel(bank.account.address, bank.account_credentials), metadata
                )
        assert_no_secrets(bank, tokens, pki)
