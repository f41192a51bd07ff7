"""``bank chaos``'s plan of reversals (which transfers are reversed, and how) and of the
deposits, withdrawals and overdraft limits beside the transfers, drawn from the seed like
the rest."""

from __future__ import annotations

import random
import uuid

import pytest

from bank_cli.chaos.config import ChaosConfig
from bank_cli.chaos.plan import REVERSIBLE, Planned, plan_units

IDS = [str(uuid.UUID(int=n)) for n in range(1, 21)]
HOT = (IDS[0], IDS[1])


def _plan(seed: int, **shares: float) -> list[Planned]:
    config = ChaosConfig(transfers=2000, hold_share=0.2, legs_share=0.1, **shares)
    closed = str(uuid.UUID(int=99))
    units = plan_units(config, random.Random(seed), IDS, closed, HOT)
    return [planned for unit in units for planned in unit]


def test_reversals_are_planned_only_for_what_can_complete():
    plan = _plan(1, reversal_share=0.5)
    reversed_ = [p for p in plan if p.reversals]
    assert {p.kind for p in reversed_} == REVERSIBLE
    reversible = sum(1 for p in plan if p.kind in REVERSIBLE)
    assert 0.4 < len(reversed_) / reversible < 0.6
    assert not any(p.reversals for p in plan if p.kind not in REVERSIBLE)


def test_a_reversal_goes_back_the_way_its_transfer_came():
    plan = _plan(2, reversal_share=1.0)
    for planned in (p for p in plan if p.reversals):
        for back in planned.reversals:
            assert back.kind == "reversal" and back.reverses is planned
            request = back.reverse_request()
            assert (request.transfer_id, request.reversal_id) == (
                planned.transfer_id,
                back.transfer_id,
            )
            if planned.legs:
                assert back.legs == [(t, s, a) for s, t, a in planned.legs]
            else:
                assert (back.source, back.target) == (planned.target, planned.source)


def test_multi_leg_transfers_are_reversed_whole_and_single_legs_also_in_parts():
    plan = _plan(3, reversal_share=1.0)
    kinds = {p.reversal for p in plan if p.reversals}
    assert kinds == {"whole", "part-then-rest", "racing"}
    for planned in (p for p in plan if p.reversals):
        amounts = [back.amount for back in planned.reversals]
        if planned.legs or planned.reversal == "whole":
            assert planned.reversal == "whole" and amounts == [0]
        else:
            posted = planned.post_amount or planned.amount
            part, rest = amounts
            assert 0 < part < posted and rest == 0


def test_every_reversal_has_an_id_of_its_own():
    plan = _plan(4, reversal_share=1.0)
    ids = [p.transfer_id for p in plan]
    ids += [back.transfer_id for p in plan for back in p.reversals]
    assert len(ids) == len(set(ids))


def test_no_reversals_nor_cash_at_a_share_of_zero():
    plan = _plan(5, reversal_share=0.0, cash_share=0.0)
    assert sum(1 for p in plan if p.kind in REVERSIBLE) > 1000
    assert not any(p.reversals or p.reversal or p.cash for p in plan)


@pytest.mark.parametrize("share", ["reversal_share", "cash_share"])
def test_a_share_out_of_range_is_refused(share):
    with pytest.raises(ValueError, match=f"--{share.replace('_', '-')}"):
        ChaosConfig(**{share: 1.5}).check()


def test_deposits_withdrawals_and_limits_come_beside_transfers_on_their_accounts():
    plan = _plan(6, cash_share=0.3)
    cash = [p.cash for p in plan if p.cash]
    assert 0.25 < len(cash) / len(plan) < 0.35
    assert {c.kind for c in cash} == {"deposit", "withdraw", "limit"}
    for c in cash:
        if c.kind == "limit":
            assert c.source in HOT and c.target == "" and c.moves == []
            continue
        account, outside = (c.target, c.source) if c.kind == "deposit" else (c.source, c.target)
        assert account in IDS and outside == ""
        assert c.moves == [(c.source, c.target, c.amount)]
    assert any(c.amount > 10**6 for c in cash if c.kind == "withdraw")  # a few too large
    limits = {c.amount for c in cash if c.kind == "limit"}
    assert 0 in limits and len(limits) > 2  # removed, and set to several amounts
    ids = {c.transfer_id for c in cash} | {p.transfer_id for p in plan}
    assert len(ids) == len(cash) + len(plan)
