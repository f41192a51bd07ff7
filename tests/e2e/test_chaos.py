"""Chaos under load: thousands of transfers while the services are killed with SIGKILL, and
Postgres stopped mid-load; every transfer still ends exactly once and the audit is clean.

Each test runs ``bank_cli.chaos`` (the engine of ``bank chaos``) at a size that fits the
test budget: both services as subprocesses on their own databases, a load generator
retrying every transfer with its own id until it has a terminal answer, and kills (or a
Postgres outage) at random moments, followed by the checks: every transfer stored as the
client saw it, every balance what the completed transfers imply, nothing reserved, both
services stopping cleanly, and ``bank audit`` passing on both stores. The figures are
printed, since they are what the run measured.
"""

from __future__ import annotations

import json
import time

import pytest

from bank_cli import chaos
from bank_cli.__main__ import main
from tests import pg

pytestmark = pytest.mark.e2e

# Well inside pytest's own timeout, so that a stuck run ends with the engine's diagnosis.
MAX_SECONDS = 240.0


def _figures(report: chaos.ChaosReport) -> str:
    failed = ", ".join(f"{reason} {n}" for reason, n in sorted(report.failed.items()))
    kills = ", ".join(f"{name} {n}" for name, n in sorted(report.kills.items()))
    return (
        f"{report.transfers} transfers ({report.completed} completed, failed: {failed or 'none'}),"
        f" {sum(report.reversals.values())} reversals ({report.reversals['COMPLETED']} completed),"
        f" {report.deposited} deposited, {report.withdrawn} withdrawn,"
        f" {report.kill_events} kills ({kills or 'none'}), {report.restarts} restarts,"
        f" {report.audit_violations} audit violations, {len(report.violations)} other violations,"
        f" {report.seconds:.1f} s ({report.per_second:.0f} transfers/s), seed {report.seed}"
    )


def _show(capsys: pytest.CaptureFixture[str], title: str, report: chaos.ChaosReport) -> None:
    with capsys.disabled():
        print(f"\n  {title}: {_figures(report)}", end="")


def _assert_clean(report: chaos.ChaosReport) -> None:
    assert report.ok, report.render()
    assert report.settled == report.transfers
    assert report.checked_transfers == report.transfers + sum(report.reversals.values())
    assert report.money_after == report.money_expected
    assert report.audit is not None and report.audit.ok, report.render()
    assert report.audit.in_flight == [] and report.audit.totals.reserved == 0
    # Every transfer the plan made, and every reversal that was stored (all those run but
    # the ones that found nothing left to reverse).
    assert report.audit.transfers == report.transfers + report.stored_reversals
    # The plan always holds transfers that must be refused, one way or the other.
    assert report.failed["ACCOUNT_CLOSED"] > 0 and report.failed["INSUFFICIENT_FUNDS"] > 0
    assert (
        report.completed + sum(report.failed.values()) + sum(report.ended.values())
        == report.transfers
    )
    # The mixed load: multi-leg transfers, holds and batches beside the unary transfers.
    for kind in ("legs", "batched", "hot", "random"):
        assert report.kinds[kind] > 0, report.kinds
    assert sum(n for kind, n in report.kinds.items() if kind.startswith("hold-")) > 0
    # Deposits, withdrawals and overdraft limits beside them, each repeated once done.
    assert report.cash["deposit COMPLETED"] > 0 and report.cash["withdraw COMPLETED"] > 0
    assert set(report.cash) <= {
        "deposit COMPLETED",
        "withdraw COMPLETED",
        "withdraw FAILED/INSUFFICIENT_FUNDS",
        "limit COMPLETED",
    }, report.cash
    # Reversals of completed transfers, run under the same faults.
    assert report.reversals["COMPLETED"] > 0, report.reversals
    assert set(report.reversals) <= {
        "COMPLETED",
        "FAILED/INSUFFICIENT_FUNDS",
        "FAILED/EXCEEDS_REVERSIBLE_AMOUNT",
    }, report.reversals


def _assert_killed(report: chaos.ChaosReport, kills: int) -> None:
    assert report.kill_events >= kills
    assert report.kills["account"] >= 1 and report.kills["transfer"] >= 1, report.kills
    assert report.restarts == sum(report.kills.values())
    assert report.unplanned_exits == 0
    # The kills hit a busy bank: the client saw the transfer service go away.
    assert report.answers["UNAVAILABLE"] > 0, report.answers


def test_chaos_on_sqlite(tmp_path, capsys):
    report = chaos.run(
        chaos.ChaosConfig(
            db="sqlite",
            transfers=1500,
            accounts=40,
            hot_share=0.5,
            in_flight=48,
            kills=24,
            max_seconds=MAX_SECONDS,
            workdir=tmp_path / "chaos",
        )
    )
    _show(capsys, "chaos on SQLite", report)
    _assert_clean(report)
    _assert_killed(report, 20)


def _require_shared_postgres() -> str:
    schemas = pg.schemas()
    try:
        schemas.new()
        schemas.drop()
    except pg.PostgresUnreachable as exc:
        pg.skip_or_fail(str(exc).splitlines()[0])
    return pg.base_url()


@pytest.mark.postgres
def test_chaos_on_postgres(tmp_path, capsys):
    url = _require_shared_postgres()
    report = chaos.run(
        chaos.ChaosConfig(
            db="postgres",
            postgres_url=url,
            transfers=1000,
            accounts=30,
            in_flight=48,
            kills=20,
            max_seconds=MAX_SECONDS,
            workdir=tmp_path / "chaos",
        )
    )
    _show(capsys, "chaos on Postgres", report)
    _assert_clean(report)
    _assert_killed(report, 20)


@pytest.mark.postgres
def test_postgres_outage_mid_load(tmp_path, capsys):
    """A private Postgres instance is stopped (immediate mode) mid-load and started again:
    meanwhile every call answers UNAVAILABLE and health says NOT_SERVING; afterwards the
    same processes carry on, and nothing is lost."""
    config = chaos.ChaosConfig(
        db="postgres",
        transfers=1000,
        accounts=30,
        in_flight=48,
        kills=0,
        postgres_outage=True,
        outages=1,
        outage_seconds=5.0,
        max_seconds=MAX_SECONDS,
        workdir=tmp_path / "chaos",
    )
    try:
        report = chaos.run(config)
    except chaos.PrivatePostgresUnavailable as exc:
        pg.skip_or_fail(f"no private Postgres instance for the outage test: {exc}")
    [outage] = report.outages
    with capsys.disabled():
        print(
            f"\n  Postgres outage: {_figures(report)}; down {outage.down_seconds:.1f} s,"
            f" SERVING again {outage.recovered_after or float('nan'):.1f} s later;"
            f" probes {dict(outage.probes)};"
            f" load during the outage {dict(outage.load_answers)}",
            end="",
        )
    _assert_clean(report)
    assert (report.kill_events, report.restarts, report.unplanned_exits) == (0, 0, 0)
    for name, seen in outage.health.items():
        assert seen["NOT_SERVING"] > 0, (name, seen)
    assert outage.probes and all(
        probe.endswith(" UNAVAILABLE/STORE_UNAVAILABLE") for probe in outage.probes
    ), outage.probes
    codes = {label.split("/", 1)[0] for label in outage.load_answers}
    assert not codes & {"UNKNOWN", "INTERNAL"}, outage.load_answers
    assert outage.recovered_after is not None and outage.same_processes


def _assert_replicas_killed(report: chaos.ChaosReport, kills: int) -> None:
    assert report.kill_events >= kills
    assert report.kills["account"] >= 1 and report.kills["transfer"] >= 1, report.kills
    assert report.restarts == sum(report.kills.values())
    assert report.unplanned_exits == 0


@pytest.mark.postgres
def test_replicated_chaos_on_postgres(tmp_path, capsys):
    """Two replicas of each service on one Postgres, every call sent to them in turn,
    replicas killed and one frozen past its lease, under the mixed load."""
    url = _require_shared_postgres()
    report = chaos.run(
        chaos.ChaosConfig(
            db="postgres",
            postgres_url=url,
            transfers=300,
            accounts=30,
            in_flight=32,
            kills=3,
            freezes=1,
            account_replicas=2,
            transfer_replicas=2,
            seed=2026,
            max_seconds=MAX_SECONDS,
            workdir=tmp_path / "chaos",
        )
    )
    _show(capsys, "replicated chaos on Postgres (2 + 2)", report)
    _assert_clean(report)
    _assert_replicas_killed(report, 3)
    assert len(report.freezes) == 1
    killed = {name for k in report.kill_log for name in k.services}
    assert killed <= {"account-1", "account-2", "transfer-1", "transfer-2"}, killed
    assert report.config["account_replicas"] == report.config["transfer_replicas"] == 2
    assert report.ended["VOIDED"] > 0 and report.ended["EXPIRED"] > 0, report.ended


def test_account_replicas_on_sqlite(tmp_path, capsys):
    report = chaos.run(
        chaos.ChaosConfig(
            db="sqlite",
            transfers=300,
            accounts=30,
            in_flight=32,
            kills=3,
            account_replicas=2,
            seed=7,
            max_seconds=MAX_SECONDS,
            workdir=tmp_path / "chaos",
        )
    )
    _show(capsys, "chaos on SQLite, 2 account replicas", report)
    _assert_clean(report)
    _assert_replicas_killed(report, 3)
    assert {name for k in report.kill_log for name in k.services} <= {
        "account-1",
        "account-2",
        "transfer",
    }


def test_transfer_replicas_on_sqlite_are_refused(capsys):
    code = main(["chaos", "--db", "sqlite", "--transfer-replicas", "2", "--transfers", "10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--transfer-replicas above 1 needs --db postgres" in err
    assert "one transfer" in err and "service serves a database file" in err


def test_an_outage_too_short_for_the_health_probe_is_refused(capsys):
    argv = ["chaos", "--db", "postgres", "--postgres-outage", "--transfers", "10"]
    code = main([*argv, "--outage-seconds", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--outage-seconds must be at least 3" in err and "every 2 s" in err


def test_the_command_prints_a_json_report(tmp_path, capsys):
    code = main(
        ["chaos", "--transfers", "120", "--accounts", "8", "--kills", "3", "--in-flight", "16",
         "--seed", "5", "--max-seconds", "120", "--workdir", str(tmp_path / "chaos"), "--json"]
    )  # fmt: skip
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code == 0, out
    assert report["ok"] and report["seed"] == 5 and report["transfers"] == 120
    assert report["kills"] == 3 and report["audit_violations"] == 0


def test_the_run_stops_by_itself_at_its_time_limit(tmp_path):
    started = time.monotonic()
    report = chaos.run(
        chaos.ChaosConfig(
            transfers=100_000, accounts=10, kills=5, max_seconds=8, workdir=tmp_path / "chaos"
        )
    )
    assert time.monotonic() - started < 40
    assert not report.ok
    assert report.aborted is not None and "--max-seconds" in report.aborted
    assert "ABORTED" in report.render()
