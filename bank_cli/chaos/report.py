"""``bank chaos``'s report: what happened (transfers, kills, outages, checks), what was
violated, as text or JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bank_cli.audit_checks import AuditReport

EXAMPLES = 20  # violations of one kind listed in full; the rest are counted
# A reversal refused for want of anything left to reverse: never stored.
REFUSED_UNRECORDED = "FAILED/EXCEEDS_REVERSIBLE_AMOUNT"


@dataclass
class KillRecord:
    number: int
    services: list[str]
    after_transfer: int  # how many transfers had started when it came
    in_flight: int  # of those, how many had no answer yet
    pids: dict[str, int]
    back_after: float = 0.0  # seconds from the kill until every victim was SERVING again

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "services": self.services,
            "after_transfer": self.after_transfer,
            "in_flight": self.in_flight,
            "pids": self.pids,
            "back_after_seconds": round(self.back_after, 3),
        }


@dataclass
class FreezeRecord:
    number: int
    service: str  # the replica stopped
    after_transfer: int
    seconds: float  # how long it stayed stopped

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "service": self.service,
            "after_transfer": self.after_transfer,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class OutageRecord:
    number: int
    after_transfer: int
    stopped_at: float = 0.0  # seconds into the load
    down_seconds: float = 0.0
    health: dict[str, Counter[str]] = field(default_factory=dict)
    probes: Counter[str] = field(default_factory=Counter)
    load_answers: Counter[str] = field(default_factory=Counter)
    recovered_after: float | None = None  # seconds from Postgres back until both SERVING
    same_processes: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "after_transfer": self.after_transfer,
            "stopped_at": round(self.stopped_at, 3),
            "down_seconds": round(self.down_seconds, 3),
            "health": {name: dict(seen) for name, seen in self.health.items()},
            "probes": dict(self.probes),
            "load_answers": dict(self.load_answers),
            "recovered_after_seconds": (
                None if self.recovered_after is None else round(self.recovered_after, 3)
            ),
            "same_processes": self.same_processes,
        }


@dataclass
class ChaosReport:
    config: dict[str, Any]
    seed: int
    transfers: int = 0
    settled: int = 0
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by failure reason
    ended: Counter[str] = field(default_factory=Counter)  # holds VOIDED or EXPIRED
    kinds: Counter[str] = field(default_factory=Counter)  # planned, by kind ("batched")
    batches: int = 0  # CreateTransfers batches planned
    reversals: Counter[str] = field(default_factory=Counter)  # those run, by outcome
    cash: Counter[str] = field(default_factory=Counter)  # "deposit COMPLETED", ...
    deposited: int = 0  # by the deposits and withdrawals the client saw done
    withdrawn: int = 0
    freezes: list[FreezeRecord] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)  # by service
    kill_log: list[KillRecord] = field(default_factory=list)
    restarts: int = 0
    unplanned_exits: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # every CreateTransfer answer
    outages: list[OutageRecord] = field(default_factory=list)
    checked_transfers: int = 0
    checked_accounts: int = 0
    money_before: int = 0
    money_after: int = 0
    audit: AuditReport | None = None
    violations: list[str] = field(default_factory=list)
    suppressed: Counter[str] = field(default_factory=Counter)
    # CreateTransfer calls that ran out their deadline: (transfer id, seconds into the
    # load when the call was made, when it ended), the first EXAMPLES of them.
    deadlines: list[tuple[str, float, float]] = field(default_factory=list)
    aborted: str | None = None
    seconds: float = 0.0
    load_seconds: float = 0.0
    workdir: str | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and self.aborted is None

    @property
    def kill_events(self) -> int:
        return len(self.kill_log)

    @property
    def audit_violations(self) -> int | None:
        return None if self.audit is None else len(self.audit.violations)

    @property
    def money_expected(self) -> int:
        return self.money_before + self.deposited - self.withdrawn

    @property
    def stored_reversals(self) -> int:
        """The reversals run that were stored: all but those refused for want of anything
        left to reverse."""
        return sum(n for outcome, n in self.reversals.items() if outcome != REFUSED_UNRECORDED)

    @property
    def per_second(self) -> float:
        return self.settled / self.load_seconds if self.load_seconds else 0.0

    def violation(self, kind: str, detail: str) -> None:
        """Records a violation; beyond ``EXAMPLES`` of one kind, only counts it."""
        seen = sum(1 for v in self.violations if v.startswith(f"[{kind}]"))
        if seen < EXAMPLES:
            self.violations.append(f"[{kind}] {detail}")
        else:
            self.suppressed[kind] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "config": self.config,
            "seed": self.seed,
            "transfers": self.transfers,
            "settled": self.settled,
            "completed": self.completed,
            "failed": dict(sorted(self.failed.items())),
            "ended": dict(sorted(self.ended.items())),
            "kinds": dict(sorted(self.kinds.items())),
            "batches": self.batches,
            "reversals": dict(sorted(self.reversals.items())),
            "cash": dict(sorted(self.cash.items())),
            "deposited": self.deposited,
            "withdrawn": self.withdrawn,
            "freezes": [f.to_dict() for f in self.freezes],
            "kills": self.kill_events,
            "kills_by_service": dict(sorted(self.kills.items())),
            "kill_log": [k.to_dict() for k in self.kill_log],
            "restarts": self.restarts,
            "unplanned_exits": self.unplanned_exits,
            "answers": dict(sorted(self.answers.items())),
            "outages": [o.to_dict() for o in self.outages],
            "checked_transfers": self.checked_transfers,
            "checked_accounts": self.checked_accounts,
            "money_before": self.money_before,
            "money_after": self.money_after,
            "audit": None if self.audit is None else self.audit.to_dict(),
            "audit_violations": self.audit_violations,
            "violations": self.violations,
            "suppressed_violations": dict(self.suppressed),
            "deadline_exceeded": [
                {"transfer_id": t, "called_at": round(a, 3), "ended_at": round(b, 3)}
                for t, a, b in self.deadlines
            ],
            "aborted": self.aborted,
            "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_seconds, 3),
            "transfers_per_second": round(self.per_second, 1),
            "workdir": self.workdir,
        }

    def render(self) -> str:
        c = self.config
        failed = ", ".join(f"{reason} {n}" for reason, n in sorted(self.failed.items()))
        kills = ", ".join(f"{name} service {n}" for name, n in sorted(self.kills.items()))
        both = sum(1 for k in self.kill_log if len(k.services) > 1)
        backs = [k.back_after for k in self.kill_log]
        ended = "".join(f", {state.lower()} {n}" for state, n in sorted(self.ended.items()))
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kinds.items()))
        replicas = c.get("account_replicas", 1), c.get("transfer_replicas", 1)
        lines = [
            f"chaos on {c['db']}: {c['transfers']} transfers between {c['accounts']} accounts"
            f" (hot pair {c['hot_share']:.0%}), {c['in_flight']} in flight, seed {self.seed}"
            + (
                f"; {replicas[0]} account and {replicas[1]} transfer replicas"
                if replicas != (1, 1)
                else ""
            ),
            f"load:       {kinds}" + (f" (in {self.batches} batches)" if self.batches else ""),
            f"transfers:  {self.settled} settled of {self.transfers}: completed {self.completed},"
            f" failed {sum(self.failed.values())}" + (f" ({failed})" if failed else "") + ended,
            *(
                [
                    f"reversals:  {sum(self.reversals.values())} run: "
                    + ", ".join(f"{o} {n}" for o, n in sorted(self.reversals.items()))
                ]
                if self.reversals
                else []
            ),
            *(
                [
                    "cash:       "
                    + ", ".join(f"{o} {n}" for o, n in sorted(self.cash.items()))
                    + f"; {self.deposited} deposited, {self.withdrawn} withdrawn"
                ]
                if self.cash
                else []
            ),
            f"kills:      {self.kill_events} (SIGKILL): {kills or 'none'}"
            + (f", {both} of them both at once" if both else "")
            + (
                f"; {sum(k.in_flight for k in self.kill_log)} transfers in flight at the kills"
                if self.kill_log
                else ""
            ),
            f"restarts:   {self.restarts}"
            + (
                f", back to SERVING in {sum(backs) / len(backs):.2f} s on average,"
                f" {max(backs):.2f} s at most"
                if backs
                else ""
            )
            + (f"; {self.unplanned_exits} exits nobody asked for" if self.unplanned_exits else ""),
            *(
                [
                    f"freezes:    {len(self.freezes)} (SIGSTOP, then SIGCONT): "
                    + ", ".join(f"{f.service} {f.seconds:.1f} s" for f in self.freezes)
                ]
                if self.freezes
                else []
            ),
            "answers:    " + ", ".join(f"{label} {n}" for label, n in sorted(self.answers.items())),
        ]
        for o in self.outages:
            health = "; ".join(
                f"{name} " + ", ".join(f"{s} {n}" for s, n in sorted(seen.items()))
                for name, seen in sorted(o.health.items())
            )
            recovered = "never" if o.recovered_after is None else f"{o.recovered_after:.1f} s"
            lines += [
                f"outage {o.number}:   Postgres down {o.down_seconds:.1f} s after transfer"
                f" {o.after_transfer}; health seen: {health}",
                "            probes: "
                + (", ".join(f"{k} {n}" for k, n in sorted(o.probes.items())) or "none")
                + "; load: "
                + (", ".join(f"{k} {n}" for k, n in sorted(o.load_answers.items())) or "none"),
                f"            recovered {recovered} after Postgres came back,"
                f" {'same' if o.same_processes else 'NOT the same'} processes",
            ]
        lines.append(
            f"checks:     {self.checked_transfers} transfers stored as answered,"
            f" {self.checked_accounts} balances as the completed transfers imply,"
            f" money {self.money_before} -> {self.money_after}"
            + (f" (expected {self.money_expected})" if self.cash else "")
        )
        if self.audit is not None:
            a = self.audit
            lines.append(
                f"audit:      {'OK' if a.ok else 'FAILED'}: {a.accounts} accounts"
                f" ({a.account_events} events), {a.transfers} transfers"
                f" ({a.transfer_events} events), {len(a.in_flight)} in flight,"
                f" reserved {a.totals.reserved}, {len(a.violations)} violations"
            )
            lines += [f"  [{v.kind}] {v.subject}: {v.detail}" for v in a.violations[:EXAMPLES]]
        else:
            lines.append("audit:      not run")
        lines.append(
            f"duration:   {self.seconds:.1f} s (load {self.load_seconds:.1f} s),"
            f" {self.per_second:.1f} transfers/s"
        )
        if self.aborted:
            lines.append(f"ABORTED: {self.aborted}")
        lines.append(f"violations: {len(self.violations) + sum(self.suppressed.values())}")
        lines += [f"  {v}" for v in self.violations]
        lines += [f"  ... and {n} more [{kind}]" for kind, n in sorted(self.suppressed.items())]
        if self.workdir:
            lines.append(f"logs:       {self.workdir}")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)
