"""Token files for tests of scopes, owners and revocation: tokens made per test run."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from grpc_common.auth import token_line
from tests.e2e.harness import Bank, running, sqlite_bank

TRANSFER = "transfer-service"


@dataclass
class TokenFile:
    """Raw tokens by name, and the hashed token file the services read (mode 0600)."""

    path: Path
    options: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, options: str = "") -> str:
        self.raw[name] = secrets.token_urlsafe(32)
        self.options[name] = options
        self.write()
        return self.raw[name]

    def remove(self, name: str) -> None:
        self.options.pop(name)
        self.write()

    def write(self) -> None:
        lines = [
            f"{token_line(name, self.raw[name])} {options}".rstrip()
            for name, options in self.options.items()
        ]
        staged = self.path.with_name(self.path.name + ".new")
        staged.write_text("\n".join(lines) + "\n")
        staged.chmod(0o600)
        staged.replace(self.path)  # whole, never half-written, as an operator should

    def metadata(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.raw[name]}"),)

    def raw_file(self, name: str) -> Path:
        path = self.path.with_name(f"{name}.token")
        path.write_text(self.raw[name] + "\n")
        path.chmod(0o600)
        return path


def token_file(directory: Path) -> TokenFile:
    """A token file holding the transfer service's token (every scope but reservation,
    and ReservationService by ``--reservation-callers``' default)."""
    tokens = TokenFile(directory / "tokens")
    tokens.add(TRANSFER)
    return tokens


def token_args(tokens: TokenFile) -> tuple[list[str], list[str]]:
    """Account and transfer service arguments for a bank using ``tokens``."""
    auth = ["--auth-tokens", str(tokens.path)]
    return auth, [*auth, "--accounts-token-file", str(tokens.raw_file(TRANSFER))]


@contextlib.contextmanager
def token_bank(workdir: Path, tokens: TokenFile, *account_extra: str) -> Iterator[Bank]:
    """Both services on SQLite in ``workdir``, asking for ``tokens``; both must stop cleanly."""
    account_args, transfer_args = token_args(tokens)
    bank = sqlite_bank(
        workdir, account_args=[*account_args, *account_extra], transfer_args=transfer_args
    )
    with running(bank) as started:
        yield started
