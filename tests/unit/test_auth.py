"""Token files, token hashing, reservation callers and the security flags, without a server."""

from __future__ import annotations

import argparse
import hashlib
import io
import secrets
import stat
import subprocess
import sys

import pytest

from grpc_common import auth, settings, tls
from grpc_common.auth import BearerAuth, Callers, TokenTable, hash_token, token_line
from grpc_common.tls import SecurityConfigError

TOKEN = "s3cr3t-token-0123456789abcdefghijklmnop"
OTHER = "another-token-0123456789abcdefghijklmno"


def test_the_hash_is_sha256_hex_of_the_token():
    assert hash_token("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert token_line("app", TOKEN) == f"app sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()}"


def test_a_token_file_names_its_tokens():
    table = TokenTable.parse(
        "# the bank's callers\n"
        "\n"
        f"{token_line('transfer-service', TOKEN)}\n"
        f"   teller.app@branch-1   {hash_token(OTHER).upper().replace('SHA256', 'sha256')}  \n"
    )
    assert table.names == {"transfer-service", "teller.app@branch-1"}
    assert table.verify(TOKEN) == "transfer-service"
    assert table.verify(OTHER) == "teller.app@branch-1"
    assert table.verify(TOKEN + "x") is None
    assert table.verify("") is None
    assert TokenTable.parse("").verify(TOKEN) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"app {TOKEN}", "expected 'sha256:<64 hex digits>'"),
        (f"app sha256:{TOKEN}", "expected 'sha256:<64 hex digits>'"),
        (f"app md5:{'0' * 32}", "expected 'sha256:<64 hex digits>'"),
        (f"app sha256:{'0' * 63}", "expected 'sha256:<64 hex digits>'"),
        (f"app sha256:{'g' * 64}", "expected 'sha256:<64 hex digits>'"),
        ("app", "expected '<name> sha256:<64 hex digits>"),
        (f"app {hash_token(TOKEN)} extra", "expected scopes=S1,S2,... or owner=OWNER"),
        (f"app {hash_token(TOKEN)} scopes=read,steal", "unknown scope 'steal'"),
        (f"app {hash_token(TOKEN)} scopes=", "scopes= names no scope"),
        (f"app {hash_token(TOKEN)} scopes=read scopes=teller", "expected scopes="),
        (f"app {hash_token(TOKEN)} owner=", "owner= is 1 to 200"),
        (f"app {hash_token(TOKEN)} a b c", "expected '<name> sha256:<64 hex digits>"),
        (f"bad/name {hash_token(TOKEN)}", "letters, digits and ._@- only"),
        (f"app {hash_token(TOKEN)}\napp {hash_token(OTHER)}", "line 2: name app again"),
        (f"a {hash_token(TOKEN)}\nb {hash_token(TOKEN)}", "line 2: the same token as an earlier"),
    ],
)
def test_a_bad_token_file_is_refused_without_quoting_it(text, problem):
    with pytest.raises(SecurityConfigError) as refused:
        TokenTable.parse(text, "tokens.txt")
    message = str(refused.value)
    assert problem in message
    assert message.startswith("tokens.txt line ")
    assert TOKEN not in message and OTHER not in message
    assert hash_token(TOKEN)[7:] not in message


def test_a_token_file_is_read_from_disk(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(token_line("app", TOKEN) + "\n")
    assert TokenTable.load(str(path)).verify(TOKEN) == "app"
    with pytest.raises(SecurityConfigError, match="cannot read"):
        TokenTable.load(str(tmp_path / "missing"))


def test_a_raw_token_file_is_read_for_a_client(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"\n  {TOKEN}\n")
    assert auth.read_token(str(path)) == TOKEN
    for bad in ("", "two words", "caf\u00e9"):
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(SecurityConfigError) as refused:
            auth.read_token(str(path))
        if bad:
            assert bad not in str(refused.value)


def test_hash_command_prints_the_line(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN + "\n"))
    assert auth.main(["hash", "transfer-service"]) == 0
    out, err = capsys.readouterr()
    assert out == f"transfer-service {hash_token(TOKEN)}\n"
    assert TOKEN not in out + err
    assert TokenTable.parse(out).verify(TOKEN) == "transfer-service"


def test_hash_command_without_a_name_and_with_a_short_token(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("short"))
    assert auth.main(["hash"]) == 0
    out, err = capsys.readouterr()
    assert out == f"client {hash_token('short')}\n"
    assert "short" in err and "random" in err


@pytest.mark.parametrize("stdin", ["", "   \n", "has space"])
def test_hash_command_refuses_no_token(monkeypatch, capsys, stdin):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert auth.main(["hash", "app"]) == 2
    out, _ = capsys.readouterr()
    assert out == ""


def test_token_command_makes_a_random_token(capsys):
    assert auth.main(["token"]) == 0
    first = capsys.readouterr().out.strip()
    assert auth.main(["token"]) == 0
    second = capsys.readouterr().out.strip()
    assert len(first) == 43 and first != second
    assert auth.check_token(first, "new") == first


def test_reservation_callers():
    callers = Callers.parse(" token:transfer-service, CN=transfer-service ,san=transfer.bank,")
    assert callers.token_names == {"transfer-service"}
    assert callers.common_names == {"transfer-service"}
    assert callers.alt_names == {"transfer.bank"}
    assert callers.by_certificate
    assert str(callers) == "token:transfer-service,CN=transfer-service,SAN=transfer.bank"
    assert callers.certificate_allowed({"x509_common_name": [b"transfer-service"]})
    assert callers.certificate_allowed(
        {"x509_common_name": [b"x"], "x509_subject_alternative_name": [b"a", b"transfer.bank"]}
    )
    assert not callers.certificate_allowed({"x509_common_name": [b"teller-app"]})
    assert not callers.certificate_allowed({})
    only_tokens = Callers.parse(auth.DEFAULT_RESERVATION_CALLERS)
    assert not only_tokens.by_certificate
    assert not only_tokens.certificate_allowed({"x509_common_name": [b"transfer-service"]})
    assert str(Callers.parse("")) == "nobody"


@pytest.mark.parametrize("spec", ["transfer-service", "token=", "CN:x", "OU=x", "token:"])
def test_bad_reservation_callers(spec):
    with pytest.raises(SecurityConfigError, match="expected token:NAME, CN=NAME or SAN=NAME"):
        Callers.parse(spec)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), (None, None)),
        ((("x-other", "1"),), (None, None)),
        ((("authorization", f"Bearer {TOKEN}"),), ("app", None)),
        ((("authorization", f"bearer   {TOKEN}  "),), ("app", None)),
        ((("authorization", f"Bearer {OTHER}"),), (None, "unknown bearer token")),
        ((("authorization", f"Basic {TOKEN}"),), (None, "authorization is not 'Bearer <token>'")),
        ((("authorization", "Bearer"),), (None, "authorization is not 'Bearer <token>'")),
        ((("authorization", TOKEN),), (None, "authorization is not 'Bearer <token>'")),
        (
            (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
            (None, "more than one authorization header"),
        ),
    ],
)
def test_the_authorization_header(metadata, expected):
    interceptor = BearerAuth(TokenTable.parse(token_line("app", TOKEN)), Callers())
    token, problem = interceptor._authenticate(metadata)
    assert (token.name if token else None, problem) == expected


def test_every_entry_is_compared(monkeypatch):
    """No early exit: the time taken does not say which entry matched."""
    compared = []
    real = auth.hmac.compare_digest

    def counting(a, b):
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    table = TokenTable.parse(
        "\n".join(token_line(f"n{i}", secrets.token_hex(16)) for i in range(5))
    )
    first = TokenTable.parse(token_line("first", TOKEN) + "\n" + token_line("second", OTHER))
    table.verify(TOKEN)
    assert len(compared) == 5
    compared.clear()
    assert first.verify(TOKEN) == "first"
    assert len(compared) == 2


# --- flags -----------------------------------------------------------------------------------


def _args(*argv: str, reservation: bool = True, accounts_client: bool = False):
    parser = argparse.ArgumentParser()
    settings.add_security_flags(parser, reservation=reservation, accounts_client=accounts_client)
    return parser.parse_args(argv)


def test_security_is_off_by_default(monkeypatch):
    for name in ("BANK_TLS_CERT", "BANK_AUTH_TOKENS", "BANK_ACCOUNTS_CA"):
        monkeypatch.delenv(name, raising=False)
    assert settings.server_security(_args()) is None
    assert settings.accounts_security(_args(accounts_client=True)) is None


def test_flags_come_from_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(token_line("transfer-service", TOKEN))
    path.chmod(0o600)
    monkeypatch.setenv("BANK_AUTH_TOKENS", str(path))
    monkeypatch.setenv("BANK_RESERVATION_CALLERS", "token:transfer-service,CN=x")
    security = settings.server_security(_args())
    assert security is not None and security.credentials is None
    assert [type(i) for i in security.interceptors] == [BearerAuth]
    assert "token:transfer-service,CN=x" in security.description


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "k.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert"),
        (["--reservation-callers", "CN=x"], "needs --tls-client-ca"),
        (["--reservation-callers", "token:x"], "names tokens .* needs --auth-tokens"),
        (["--tls-cert", "missing.pem", "--tls-key", "k"], "TLS certificate missing.pem"),
    ],
)
def test_server_flags_that_do_not_fit(argv, problem, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SecurityConfigError, match=problem):
        settings.server_security(_args(*argv))


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--accounts-client-cert", "c"], "--accounts-client-cert and --accounts-client-key"),
        (["--accounts-server-name", "x"], "--accounts-server-name needs --accounts-ca"),
        (["--accounts-ca", "none.pem"], "TLS CA none.pem: cannot read"),
        (["--accounts-token-file", "none"], "token file none: cannot read"),
    ],
)
def test_client_flags_that_do_not_fit(argv, problem, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SecurityConfigError, match=problem):
        settings.accounts_security(_args(*argv, accounts_client=True))


def test_the_token_goes_into_metadata(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    security = settings.accounts_security(
        _args("--accounts-token-file", str(path), accounts_client=True)
    )
    assert security is not None and security.credentials is None
    assert tuple(security.metadata) == (("authorization", f"Bearer {TOKEN}"),)
    assert TOKEN not in security.description


def test_a_pem_file_that_is_not_pem(tmp_path):
    path = tmp_path / "key.pem"
    path.write_text(TOKEN)
    with pytest.raises(SecurityConfigError) as refused:
        tls.read_pem(str(path), "TLS key")
    assert str(refused.value) == f"TLS key {path}: not a PEM file"


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:50051", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("dns:///localhost:50051", True),
        ("unix:/tmp/bank.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.5:50051", False),
        ("accounts.bank.internal:50051", False),
    ],
)
def test_loopback_addresses(address, loopback):
    assert tls.is_loopback(address) is loopback


def test_a_line_names_its_scopes_and_owner_in_either_order():
    table = TokenTable.parse(
        f"reader {hash_token(TOKEN)} scopes=read owner=Ada\n"
        f"teller {hash_token(OTHER)} owner=Bob scopes=teller,transfer\n"
        f"plain {hash_token(TOKEN + 'x')}\n"
    )
    reader, teller, plain = table.entries
    assert (reader.scopes, reader.owner) == (frozenset({"read"}), "Ada")
    assert (teller.scopes, teller.owner) == (frozenset({"teller", "transfer"}), "Bob")
    # No scopes=: every scope but reservation, as every token could before scopes.
    assert plain.scopes == frozenset({"read", "teller", "transfer", "operator"})
    assert plain.owner == ""
    assert table.lookup(OTHER) == teller


def test_the_token_command_writes_a_file_only_its_owner_reads(tmp_path):
    out = tmp_path / "new.token"
    with out.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "grpc_common.auth", "token"], stdout=handle, timeout=30
        )
    assert done.returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(out.read_text().strip()) >= 32


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_others_may_read_stops_the_start(tmp_path, mode):
    path = tmp_path / "tokens"
    path.write_text(token_line("app", TOKEN))
    path.chmod(mode)
    with pytest.raises(SecurityConfigError, match=f"mode {mode:04o}.*chmod 600"):
        settings.server_security(_args("--auth-tokens", str(path)))
    token = tmp_path / "raw.token"
    token.write_text(TOKEN)
    token.chmod(mode)
    with pytest.raises(SecurityConfigError, match="group or others"):
        settings.accounts_security(_args("--accounts-token-file", str(token), accounts_client=True))
