"""``bank bench``'s plan and its in-run comparisons (no services: the arithmetic only)."""

from __future__ import annotations

import pytest

from bank_cli.bench.plans import FULL, QUICK, RESERVATION, compare, plans_for


@pytest.mark.parametrize("scale", [FULL, QUICK], ids=["full", "quick"])
@pytest.mark.parametrize("group", ["uniform", "long"])
def test_measured_runs_alternate_with_same_size_controls(group, scale):
    plans = plans_for(group, scale)
    rounds = scale.uniform_rounds if group == "uniform" else scale.long_rounds
    assert [plan.control for plan in plans] == [True] + [False, True] * rounds
    measured = plans[1]
    for control in plans[::2]:
        # A hot pair on fresh accounts, as big and as wide as the run it is compared with.
        assert (control.accounts, control.preloaded_events) == (2, 0)
        assert (control.total, control.in_flight) == (measured.total, measured.in_flight)
        assert control.strategy == RESERVATION
    assert all(plan == measured for plan in plans[1::2])


def test_uniform_and_long_runs_are_what_the_issue_names():
    (uniform,) = {plan for plan in plans_for("uniform", FULL) if not plan.control}
    assert (uniform.total, uniform.in_flight, uniform.accounts) == (10_000, 100, 10_000)
    (long,) = {plan for plan in plans_for("long", FULL) if not plan.control}
    assert (long.total, long.in_flight, long.accounts) == (800, 100, 2)
    assert long.preloaded_events == 100_000


@pytest.mark.parametrize("group", ["seed", "sweep"])
def test_groups_without_controls_are_not_compared(group):
    assert not any(plan.control for plan in plans_for(group, FULL))
    results = [_result(group, "run", 100.0, control=False)]
    assert compare(results) is None


def _result(group: str, name: str, rate: float, *, control: bool) -> dict[str, object]:
    return {"group": group, "name": name, "requests_per_second": rate, "control": control}


def test_the_ratio_is_mean_measured_over_mean_control():
    results = [
        _result("long", "control 800/100", 1000.0, control=True),
        _result("long", "long 800/100", 900.0, control=False),
        _result("long", "control 800/100", 1400.0, control=True),
        _result("long", "long 800/100", 1200.0, control=False),
        _result("long", "control 800/100", 1600.0, control=True),
    ]
    comparison = compare(results)
    assert comparison is not None
    assert comparison["ratio"] == pytest.approx(1050.0 / 1333.3333, rel=1e-6)
    assert comparison["measured_per_second"] == [900.0, 1200.0]
    assert comparison["control_per_second"] == [1000.0, 1400.0, 1600.0]
    assert (comparison["measured"], comparison["control"]) == ("long 800/100", "control 800/100")
