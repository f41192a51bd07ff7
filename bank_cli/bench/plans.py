"""``bank bench``'s plan: the run groups at full and quick scale, the controls the uniform
and long runs are measured against, and the ratio of the two."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GROUPS = ("seed", "sweep", "uniform", "long", "batch", "replicas")
RESERVATION = "reservation"
NAIVE = "naive"
OPENING_BALANCE = 1_000_000


@dataclass(frozen=True)
class Scale:
    seed: tuple[tuple[int, int], ...]
    sweep: tuple[int, ...]
    uniform_transfers: int
    uniform_accounts: int
    long_events: int
    long_run: tuple[int, int]
    # Measured runs of the uniform and long groups, each between two controls.
    uniform_rounds: int
    long_rounds: int
    # How long the naive strategy waits for each lock: the seed's 5 s, or less to keep
    # the quick runs quick (the share of transfers that fail is much the same).
    naive_lock_timeout: float
    # CreateTransfers runs: transfers in all, batches in flight (of ``--batch`` each).
    batch_transfers: int
    batches_in_flight: int
    # Reads of the past timed after the long runs, per kind (as of a version, a time).
    past_reads: int

    # Transfers per sweep point, per strategy: (at least, per slot in flight). The naive
    # strategy gets fewer, because each of its deadlocks costs a lock timeout.
    sweep_reservation: tuple[int, int]
    sweep_naive: tuple[int, int]

    def sweep_total(self, strategy: str, in_flight: int) -> int:
        minimum, per_slot = self.sweep_reservation if strategy == RESERVATION else self.sweep_naive
        return max(minimum, per_slot * in_flight)


FULL = Scale(
    seed=((50, 4), (800, 100)),
    sweep=(1, 4, 16, 64, 100, 256),
    sweep_reservation=(400, 8),
    sweep_naive=(50, 4),
    uniform_transfers=10_000,
    uniform_accounts=10_000,
    long_events=100_000,
    long_run=(800, 100),
    # Three: one uniform run against its two controls moved by ±10 % from one full run to
    # the next on the same code (0.81 and 0.88 on SQLite).
    uniform_rounds=3,
    long_rounds=2,
    naive_lock_timeout=5.0,
    batch_transfers=40_000,
    batches_in_flight=8,
    past_reads=200,
)
QUICK = Scale(
    seed=((50, 4), (200, 50)),
    sweep=(1, 16),
    sweep_reservation=(100, 4),
    sweep_naive=(20, 4),
    uniform_transfers=500,
    uniform_accounts=500,
    long_events=2_000,
    long_run=(200, 50),
    uniform_rounds=1,
    long_rounds=1,
    naive_lock_timeout=0.5,
    batch_transfers=2_000,
    batches_in_flight=4,
    past_reads=20,
)


@dataclass(frozen=True)
class Plan:
    group: str
    name: str
    strategy: str
    total: int
    in_flight: int
    accounts: int = 2
    preloaded_events: int = 0
    # A hot-pair run on fresh accounts that the group's measured runs are compared with.
    control: bool = False
    # Transfers per CreateTransfers call; 0: one CreateTransfer each. ``in_flight`` then
    # counts batches.
    batch: int = 0
    # Account services the run has (the replicas group starts a bank per run).
    account_replicas: int = 1


def _with_controls(measured: Plan, rounds: int) -> list[Plan]:
    """control, measured, control, ... , control: ``rounds`` measured runs, each between
    two hot-pair runs of the same size on fresh accounts."""
    control = Plan(
        measured.group,
        f"control {measured.total}/{measured.in_flight}",
        RESERVATION,
        measured.total,
        measured.in_flight,
        control=True,
    )
    return [control] + [measured, control] * rounds


def plans_for(group: str, scale: Scale, batch: int = 100) -> list[Plan]:
    if group == "seed":
        return [
            Plan(group, f"seed {total}/{width}", strategy, total, width)
            for total, width in scale.seed
            for strategy in (RESERVATION, NAIVE)
        ]
    if group == "sweep":
        return [
            Plan(group, f"sweep {width}", strategy, scale.sweep_total(strategy, width), width)
            for width in scale.sweep
            for strategy in (RESERVATION, NAIVE)
        ]
    if group == "uniform":
        total, accounts = scale.uniform_transfers, scale.uniform_accounts
        uniform = Plan(group, f"uniform {total}/100", RESERVATION, total, 100, accounts)
        return _with_controls(uniform, scale.uniform_rounds)
    if group == "long":
        total, width = scale.long_run
        name = f"long {total}/{width}"
        long = Plan(group, name, RESERVATION, total, width, 2, scale.long_events)
        return _with_controls(long, scale.long_rounds)
    if group == "replicas":
        # 1, 2, 1, 2 account replicas, alternating: the machine's drift falls on both.
        total, width = scale.long_run
        return [
            Plan(
                group,
                f"pair {total}/{width} x{n}",
                RESERVATION,
                total,
                width,
                account_replicas=n,
                control=n == 1,
            )
            for n in (1, 2, 1, 2)
        ]
    if group == "batch":
        total, width = scale.batch_transfers, scale.batches_in_flight
        accounts = scale.uniform_accounts
        return [
            Plan(group, f"batch {batch}x{width} pair", RESERVATION, total, width, batch=batch),
            Plan(
                group,
                f"batch {batch}x{width} uniform",
                RESERVATION,
                total,
                width,
                accounts,
                batch=batch,
            ),
        ]
    raise ValueError(f"unknown run group {group!r}")


def compare(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A group's measured runs against its controls (see the module), or None if it has
    no controls."""
    controls = [r for r in results if r.get("control")]
    measured = [r for r in results if not r.get("control")]
    if not controls or not measured:
        return None
    control_rate = sum(r["requests_per_second"] for r in controls) / len(controls)
    measured_rate = sum(r["requests_per_second"] for r in measured) / len(measured)
    return {
        "group": measured[0]["group"],
        "measured": measured[0]["name"],
        "control": controls[0]["name"],
        "measured_per_second": [r["requests_per_second"] for r in measured],
        "control_per_second": [r["requests_per_second"] for r in controls],
        "ratio": measured_rate / control_rate,
    }
