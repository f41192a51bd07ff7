"""``bank chaos``'s settings: what a run does, and the checks that they make sense."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bank_cli.harness import DEFAULT_POSTGRES_URL

# Amounts are 1 to MAX_AMOUNT. With ten times that to start with, the hot pair's balances
# wander down to zero now and then, so some transfers are refused for want of funds while
# others hold reservations on the same account.
MAX_AMOUNT = 1_000
OPENING_BALANCE = 10 * MAX_AMOUNT
# How long a frozen replica stays stopped: around the transfer service's lease (5 s), so
# that a frozen driver sometimes wakes up after another replica took its transfers over.
FREEZE_SECONDS = (2.0, 8.0)
# The services ask their database every 2 s (grpc_common.server.ServerConfig.probe_interval)
# whether it answers: an outage must outlast that, and a failing probe, for their health to
# be seen NOT_SERVING, which the run checks.
MIN_OUTAGE_SECONDS = 3.0


@dataclass
class ChaosConfig:
    db: str = "sqlite"  # "sqlite" or "postgres"
    postgres_url: str = DEFAULT_POSTGRES_URL
    transfers: int = 3000
    accounts: int = 50
    hot_share: float = 0.5
    refused_share: float = 0.04
    opening: int = OPENING_BALANCE
    in_flight: int = 64
    kills: int = 20
    # Processes of each service on the same databases; the transfer replicas are given
    # every account replica's address.
    account_replicas: int = 1
    transfer_replicas: int = 1
    # SIGSTOPs of a random replica, each kept stopped FREEZE_SECONDS then SIGCONT.
    freezes: int = 0
    # Shares of the plan: multi-leg transfers and pending holds (posted, partly posted,
    # voided or left to expire); of the single-leg transfers, the share sent in batches.
    legs_share: float = 0.1
    hold_share: float = 0.1
    batch_share: float = 0.2
    # Of the transfers that can be reversed (not refused on purpose, not voided or expiring),
    # the share reversed once COMPLETED: whole, a part then the rest, or both at once.
    reversal_share: float = 0.1
    # For each transfer, the chance of a deposit, a withdrawal or an overdraft limit set
    # beside it (not counted in ``transfers``), on the same accounts, through the account
    # replicas in turn.
    cash_share: float = 0.05
    seed: int | None = None
    max_seconds: float = 600.0
    postgres_outage: bool = False
    outages: int = 1
    outage_seconds: float = 5.0
    # Logs and SQLite files go here and are kept; None: a temporary directory, removed
    # after a clean run and kept (its path reported) after a failed one.
    workdir: Path | None = None
    # Told about each kill, outage and phase as it happens; None: silent.
    progress: Callable[[str], None] | None = None

    def check(self) -> None:
        if self.db not in ("sqlite", "postgres"):
            raise ValueError(f"--db must be sqlite or postgres, not {self.db!r}")
        if self.postgres_outage and self.db != "postgres":
            raise ValueError("--postgres-outage needs --db postgres")
        if self.transfers < 1 or self.in_flight < 1 or self.kills < 0 or self.freezes < 0:
            raise ValueError(
                "--transfers and --in-flight must be positive, --kills and --freezes not negative"
            )
        if self.account_replicas < 1 or self.transfer_replicas < 1:
            raise ValueError("--account-replicas and --transfer-replicas must be at least 1")
        if self.transfer_replicas > 1 and self.db != "postgres":
            raise ValueError(
                "--transfer-replicas above 1 needs --db postgres: on SQLite one transfer"
                " service serves a database file (a second one exits)"
            )
        shares = (
            self.legs_share,
            self.hold_share,
            self.batch_share,
            self.reversal_share,
            self.cash_share,
        )
        if not all(0 <= share <= 1 for share in shares):
            raise ValueError(
                "--legs-share, --hold-share, --batch-share, --reversal-share and --cash-share"
                " must be between 0 and 1"
            )
        if self.opening < 1:
            raise ValueError("--opening must be positive")
        if self.accounts < 2:
            raise ValueError("--accounts must be at least 2 (the hot pair)")
        if not 0 <= self.hot_share <= 1 or not 0 <= self.refused_share <= 1:
            raise ValueError("--hot-share and --refused-share must be between 0 and 1")
        if self.hot_share + self.refused_share + self.legs_share + self.hold_share > 1:
            raise ValueError(
                "--hot-share, --refused-share, --legs-share and --hold-share add up to more than 1"
            )
        if self.postgres_outage and self.outages < 1:
            raise ValueError("--outages must be positive")
        if self.postgres_outage and self.outage_seconds < MIN_OUTAGE_SECONDS:
            raise ValueError(
                f"--outage-seconds must be at least {MIN_OUTAGE_SECONDS:g}: the services ask"
                " their database every 2 s, and a shorter outage can pass unseen by their health"
            )
        if self.max_seconds <= 0:
            raise ValueError("--max-seconds must be positive")
