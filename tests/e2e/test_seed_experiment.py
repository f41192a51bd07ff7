"""The seed's experiment, through both services as real processes.

50 transfers with 4 in flight and 800 with 100 in flight, alternating directions between
two accounts: every transfer completes, the sum of balances is unchanged, no reservation
is left open and no reference is applied twice. Throughput is printed, never asserted.
"""

from __future__ import annotations

import pytest

from tests.e2e.seed_run import seed_run


def _check(run, label: str, capsys) -> None:
    with capsys.disabled():
        print(
            f"\n[seed experiment] {label}: {run.completed}/{run.requested} completed "
            f"in {run.seconds:.2f}s = {run.per_second:.0f} transfers/s"
        )
    assert (run.completed, run.failed) == (run.requested, 0)
    assert sum(run.balances_after) == sum(run.balances_before)
    assert run.reserved_after == (0, 0)
    assert run.open_reservations == 0
    assert run.duplicate_references == 0


@pytest.mark.parametrize(("total", "in_flight"), [(50, 4), (800, 100)])
async def test_seed_experiment_on_sqlite(bank, total, in_flight, capsys):
    run = await seed_run(bank.account.address, bank.transfer.address, total, in_flight)
    _check(run, f"SQLite {total} transfers, {in_flight} in flight", capsys)


@pytest.mark.postgres
async def test_seed_experiment_on_postgres(pg_bank, capsys):
    run = await seed_run(pg_bank.account.address, pg_bank.transfer.address, 800, 100)
    _check(run, "Postgres 800 transfers, 100 in flight", capsys)
