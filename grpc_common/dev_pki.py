"""``python -m grpc_common.dev_pki DIR``: a CA, the services' certificates and tokens, for a
deployment that has no PKI of its own yet (compose makes them on first start).

Writes into DIR, each file mode 0600 (``--owner UID:GID`` to hand them to the services'
user): ``ca.crt``; ``account-service.crt|key`` and ``transfer-service.crt|key``, server
certificates for ``--account-hosts`` and ``--transfer-hosts``; ``transfer-client.crt|key``
(CN=transfer-service, the account service's ReservationService caller);
``teller-client.crt|key`` (CN=teller-app, a client of the account service); ``auth-tokens``,
the hashed token file, with a ``teller-app`` token (scopes read, teller, transfer) whose
raw token is in ``teller-app.token``; and ``page-token-key``. With ``--keep``, a DIR that
already holds ``ca.crt`` is left as it is. Needs the ``cryptography`` package (the ``pki``
extra). The CA's key is not kept: new certificates mean a new CA, and a rollout.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from grpc_common.auth import token_line

FILES = (
    "ca.crt",
    "account-service.crt",
    "account-service.key",
    "transfer-service.crt",
    "transfer-service.key",
    "transfer-client.crt",
    "transfer-client.key",
    "teller-client.crt",
    "teller-client.key",
    "auth-tokens",
    "teller-app.token",
    "page-token-key",
)
VALID_DAYS = 365


def _names(hosts: str) -> list:
    from cryptography import x509

    names: list = []
    for host in filter(None, (h.strip() for h in hosts.split(","))):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make(directory: Path, account_hosts: str, transfer_hosts: str) -> dict[str, bytes]:
    """The files' contents, by name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def subject(name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])

    def builder(name: str, key) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        )

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("reservebank-ca", ca_key)
        .issuer_name(subject("reservebank-ca"))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM)}
    issued = (
        ("account-service", "account-service", _names(account_hosts), True),
        ("transfer-service", "transfer-service", _names(transfer_hosts), True),
        ("transfer-client", "transfer-service", [], False),
        ("teller-client", "teller-app", [], False),
    )
    for stem, common_name, names, server in issued:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            builder(common_name, key)
            .issuer_name(ca.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            cert = cert.add_extension(x509.SubjectAlternativeName(names), critical=False)
        signed = cert.sign(ca_key, hashes.SHA256())
        files[f"{stem}.crt"] = signed.public_bytes(serialization.Encoding.PEM)
        files[f"{stem}.key"] = pem_key(key)
    teller = secrets.token_urlsafe(32)
    files["teller-app.token"] = (teller + "\n").encode()
    line = token_line("teller-app", teller) + " scopes=read,teller,transfer"
    files["auth-tokens"] = (line + "\n").encode()
    files["page-token-key"] = (secrets.token_hex(32) + "\n").encode()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpc_common.dev_pki", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--account-hosts", default="account-service,localhost,127.0.0.1")
    parser.add_argument("--transfer-hosts", default="transfer-service,localhost,127.0.0.1")
    parser.add_argument("--owner", default="", metavar="UID:GID", help="chown the files")
    parser.add_argument("--keep", action="store_true", help="leave a DIR that has a CA alone")
    args = parser.parse_args(argv)
    directory: Path = args.directory
    if args.keep and (directory / "ca.crt").exists():
        print(f"{directory}: kept as it is")
        return 0
    try:
        files = make(directory, args.account_hosts, args.transfer_hosts)
    except ImportError:
        print("error: needs the cryptography package (pip install '.[pki]')", file=sys.stderr)
        return 2
    directory.mkdir(parents=True, exist_ok=True)
    uid, _, gid = args.owner.partition(":")
    for name, content in files.items():
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(path, 0o600)
        if args.owner:
            os.chown(path, int(uid), int(gid or uid))
    print(f"{directory}: {', '.join(sorted(files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
