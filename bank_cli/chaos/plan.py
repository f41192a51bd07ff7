"""``bank chaos``'s plan: the transfers to make, drawn from the seed, and how they are
grouped into units (one transfer, or a ``CreateTransfers`` batch)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from google.protobuf import duration_pb2

from bank.v1 import transfer_pb2 as tpb
from bank_cli.chaos.config import MAX_AMOUNT, ChaosConfig

# Holds meant to be posted or voided outlive the run; holds left to expire do so at once.
LONG_HOLD = 3600
SHORT_HOLD = (1, 3)
MAX_LEGS = 3
MAX_BATCH = 16

HOLD_KINDS = ("hold-post", "hold-partial", "hold-void", "hold-expire")
# What may be reversed once COMPLETED, and how: all of it in one reversal, a part and then
# the rest (amount 0) one after the other, or a part and the rest at once (one of them may
# find nothing left: EXCEEDS_REVERSIBLE_AMOUNT). Multi-leg transfers are reversed whole.
REVERSIBLE = frozenset({"hot", "random", "legs", "hold-post", "hold-partial"})
REVERSAL_KINDS = ("whole", "part-then-rest", "racing")
REVERSAL_REASON = "bank chaos"


@dataclass
class Planned:
    transfer_id: str
    source: str
    target: str
    amount: int
    # "hot", "random", "closed" (refused credit), "oversized" (refused reserve), "legs"
    # (multi-leg), a hold: "hold-post", "hold-partial", "hold-void", "hold-expire"; or not a
    # transfer, its id the request id: "deposit" (source ""), "withdraw" (target ""), or
    # "limit" (the source's overdraft limit set to ``amount``; nothing moves).
    kind: str
    # "COMPLETED", "VOIDED", "EXPIRED", "FAILED/<reason>" or "ERROR/<answer>"
    outcome: str | None = None
    attempts: int = 0
    legs: list[tuple[str, str, int]] = field(default_factory=list)  # multi-leg only
    post_amount: int = 0  # what a hold-post or hold-partial posts (0: all of it)
    expires_after: int = 0  # seconds, holds only
    batched: bool = False
    # Its reversals, run once it has COMPLETED ("reversal": how, one of REVERSAL_KINDS);
    # a reversal is a Planned too, of kind "reversal", whose ``reverses`` is the original,
    # ``amount`` what it asks (0: all that is left) and ``post_amount`` what it moved.
    reversal: str = ""
    reversals: list[Planned] = field(default_factory=list)
    reverses: Planned | None = field(default=None, repr=False, compare=False)
    # After it, on the accounts the transfers use: money entering or leaving the bank, or an
    # overdraft limit changed.
    cash: Planned | None = None

    @property
    def moves(self) -> list[tuple[str, str, int]]:
        """(from, to, amount) of every movement it makes if it completes."""
        if self.kind == "limit":
            return []
        if self.legs:
            return self.legs
        return [(self.source, self.target, self.post_amount or self.amount)]

    def request(self) -> tpb.CreateTransferRequest:
        request = tpb.CreateTransferRequest(transfer_id=self.transfer_id)
        if self.legs:
            request.legs.extend(tpb.Leg(from_account_id=f, to_account_id=t, amount=a)
                                for f, t, a in self.legs)  # fmt: skip
        else:
            request.from_account_id = self.source
            request.to_account_id = self.target
            request.amount = self.amount
        if self.kind.startswith("hold-"):
            request.pending = True
            request.expires_after.CopyFrom(duration_pb2.Duration(seconds=self.expires_after))
        return request

    def reverse_request(self) -> tpb.ReverseTransferRequest:
        assert self.reverses is not None
        return tpb.ReverseTransferRequest(
            transfer_id=self.reverses.transfer_id,
            reversal_id=self.transfer_id,
            amount=self.amount,
            reason=REVERSAL_REASON,
        )


def plan_units(
    config: ChaosConfig, rng: random.Random, ids: list[str], closed: str, hot: tuple[str, str]
) -> list[list[Planned]]:
    """The run's transfers, cut into units; the same for the same seed."""
    planner = _Planner(config, rng, hot)
    return planner.units(planner.plan(ids, closed))


@dataclass
class _Planner:
    config: ChaosConfig
    rng: random.Random
    hot: tuple[str, str]

    def plan(self, ids: list[str], closed: str) -> list[Planned]:
        rng, c = self.rng, self.config
        oversized = min(c.opening * (len(ids) + 1) * 10, 2**62)
        refused = c.hot_share + c.refused_share
        legs, holds = refused + c.legs_share, refused + c.legs_share + c.hold_share
        plan = []
        hot_turn = 0
        for _ in range(c.transfers):
            draw = rng.random()
            source, target = rng.sample(ids, 2)
            amount = rng.randint(1, MAX_AMOUNT)
            planned = Planned(str(uuid.uuid4()), source, target, amount, "random")
            if draw < c.hot_share:
                planned.source, planned.target = self.hot if hot_turn % 2 == 0 else self.hot[::-1]
                hot_turn += 1
                planned.kind = "hot"
            elif draw < c.hot_share + c.refused_share / 2:
                planned.target, planned.kind = closed, "closed"
            elif draw < refused:
                planned.amount, planned.kind = oversized, "oversized"
            elif draw < legs:
                self.multi_leg(planned, ids, closed, oversized)
            elif draw < holds:
                self.hold(planned)
            if c.reversal_share and planned.kind in REVERSIBLE:
                if rng.random() < c.reversal_share:
                    self.reverse(planned)
            if c.cash_share and rng.random() < c.cash_share:
                planned.cash = self.cash(ids, oversized)
            plan.append(planned)
        return plan

    def cash(self, ids: list[str], oversized: int) -> Planned:
        """A deposit or a withdrawal (a tenth of them too large; a third of the withdrawals
        from the hot pair, which deposits leave alone, so that it drains into its overdraft);
        or, a fifth of the time, a hot account's overdraft limit raised, lowered or removed
        while transfers reserve on it."""
        rng = self.rng
        if rng.random() < 0.2:
            limit = rng.choice((0, rng.randint(1, 2 * MAX_AMOUNT)))
            return Planned(str(uuid.uuid4()), self.hot[rng.randrange(2)], "", limit, "limit")
        amount = rng.randint(1, MAX_AMOUNT)
        if rng.random() < 0.5:
            account = rng.choice([i for i in ids if i not in self.hot])
            return Planned(str(uuid.uuid4()), "", account, amount, "deposit")
        account = self.hot[rng.randrange(2)] if rng.random() < 1 / 3 else rng.choice(ids)
        if rng.random() < 0.1:
            amount = oversized
        return Planned(str(uuid.uuid4()), account, "", amount, "withdraw")

    def multi_leg(self, planned: Planned, ids: list[str], closed: str, oversized: int) -> None:
        """A payment with a fee or a split: 2 to MAX_LEGS legs, a few of them refused."""
        rng = self.rng
        planned.kind, planned.source, planned.target = "legs", "", ""
        for _ in range(rng.randint(2, MAX_LEGS)):
            source, target = rng.sample(ids, 2)
            planned.legs.append((source, target, rng.randint(1, MAX_AMOUNT // 2)))
        draw = rng.random()
        if draw < 0.05:
            source, _, amount = planned.legs[-1]
            planned.legs[-1] = (source, closed, amount)
        elif draw < 0.1:
            source, target, _ = planned.legs[-1]
            planned.legs[-1] = (source, target, oversized)
        elif draw < 0.4:
            source, target, amount = planned.legs[0]
            hot = self.hot[rng.randrange(2)]
            if hot != target:
                planned.legs[0] = (hot, target, amount)
        planned.amount = sum(amount for _, _, amount in planned.legs)

    def hold(self, planned: Planned) -> None:
        rng = self.rng
        planned.kind = rng.choice(HOLD_KINDS)
        if rng.random() < 0.5:
            planned.source, planned.target = self.hot[:: rng.choice((1, -1))]
        if planned.kind == "hold-partial":
            if planned.amount > 1:
                planned.post_amount = rng.randint(1, planned.amount - 1)
            else:
                planned.kind = "hold-post"
        expiring = planned.kind == "hold-expire"
        planned.expires_after = rng.randint(*SHORT_HOLD) if expiring else LONG_HOLD

    def reverse(self, planned: Planned) -> None:
        """Its reversals, should it complete: back from its target(s) to its source(s)."""
        rng = self.rng
        posted = planned.post_amount or planned.amount
        whole = planned.legs or posted < 2
        planned.reversal = "whole" if whole else rng.choice(REVERSAL_KINDS)
        amounts = [0] if planned.reversal == "whole" else [rng.randint(1, posted - 1), 0]
        for amount in amounts:
            back = Planned(str(uuid.uuid4()), planned.target, planned.source, amount, "reversal")
            back.legs = [(target, source, a) for source, target, a in planned.legs]
            back.reverses = planned
            planned.reversals.append(back)

    def units(self, plan: list[Planned]) -> list[list[Planned]]:
        """Single-leg immediate transfers go into batches (``batch_share`` of them), the
        rest one by one, in plan order as far as the batches allow."""
        rng = self.rng
        units: list[list[Planned]] = []
        batch: list[Planned] = []
        size = rng.randint(2, MAX_BATCH)
        for planned in plan:
            simple = not planned.legs and not planned.kind.startswith("hold-")
            if simple and rng.random() < self.config.batch_share:
                planned.batched = True
                batch.append(planned)
                if len(batch) >= size:
                    units.append(batch)
                    batch, size = [], rng.randint(2, MAX_BATCH)
            else:
                units.append([planned])
        if batch:
            units.append(batch)
        return units
