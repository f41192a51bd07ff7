"""What ``bank audit`` found: the violations, the transfers in flight and the bank's money,
per currency, as text for people and as JSON.

Amounts are in minor units of their currency, and amounts of different currencies are
never added together: each currency's money is checked on its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# The kinds of violation.

UNREADABLE = "unreadable-event"
OUT_OF_ORDER = "out-of-order"
RUNNING_BALANCE = "running-balance-mismatch"
NEGATIVE_AVAILABLE = "negative-available"
DUPLICATE_REFERENCE = "duplicate-reference"
SETTLED_WITHOUT_HOLD = "settled-without-hold"
HOLD_LEFT_OPEN = "hold-left-open"
UNKNOWN_TRANSFER = "unknown-transfer"
ILLEGAL_TRANSITION = "illegal-transition"
WRONG_ACCOUNT = "wrong-account"
MISSING_EFFECT = "missing-effect"
UNEXPECTED_EFFECT = "unexpected-effect"
AMOUNT_MISMATCH = "amount-mismatch"
CURRENCY_MISMATCH = "currency-mismatch"
CONSERVATION = "conservation"
IN_TRANSIT = "in-transit-mismatch"
REVERSAL = "reversal-mismatch"


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    subject: str  # "account <id>", "transfer <id>" or "bank"
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class InFlight:
    transfer_id: str
    state: str
    applied: tuple[str, ...]  # the account events it caused so far, in protocol order
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id,
            "state": self.state,
            "applied": list(self.applied),
            "detail": self.detail,
        }


@dataclass
class CurrencyTotals:
    """One currency's money, in its minor units."""

    deposits: int = 0
    withdrawals: int = 0
    credits: int = 0  # credits, and credit holds confirmed
    captures: int = 0
    pending_credits: int = 0  # credits held and not yet confirmed or cancelled
    balances: int = 0  # sum of the balances as stored with each account's last event
    reserved: int = 0  # sum of the holds still open
    open_holds: int = 0
    in_transit: int = 0  # credited but not yet captured, by the in-flight transfers

    @property
    def expected_balances(self) -> int:
        return self.deposits - self.withdrawals + self.credits - self.captures

    def to_dict(self) -> dict[str, int]:
        return {
            "deposits": self.deposits,
            "withdrawals": self.withdrawals,
            "credits": self.credits,
            "captures": self.captures,
            "pending_credits": self.pending_credits,
            "balances": self.balances,
            "expected_balances": self.expected_balances,
            "reserved": self.reserved,
            "open_holds": self.open_holds,
            "in_transit": self.in_transit,
        }


@dataclass
class Totals:
    """The bank's money, per currency code (``currencies``)."""

    currencies: dict[str, CurrencyTotals] = field(default_factory=dict)

    def of(self, currency: str) -> CurrencyTotals:
        """The totals of ``currency``, created empty when first asked for."""
        return self.currencies.setdefault(currency, CurrencyTotals())

    @property
    def reserved(self) -> int:
        """Minor units held by open holds in any currency: a count to tell whether anything
        is still reserved (0 when nothing is), not an amount of money."""
        return sum(t.reserved for t in self.currencies.values())

    @property
    def open_holds(self) -> int:
        return sum(t.open_holds for t in self.currencies.values())

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {code: self.currencies[code].to_dict() for code in sorted(self.currencies)}


@dataclass
class AuditReport:
    account_events: int = 0
    transfer_events: int = 0
    accounts: int = 0
    transfers: int = 0
    states: Counter[str] = field(default_factory=Counter)
    totals: Totals = field(default_factory=Totals)
    in_flight: list[InFlight] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[str]:
        return {v.kind for v in self.violations}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "account_events": self.account_events,
            "transfer_events": self.transfer_events,
            "accounts": self.accounts,
            "transfers": self.transfers,
            "transfer_states": dict(sorted(self.states.items())),
            "totals": self.totals.to_dict(),
            "in_flight": [f.to_dict() for f in self.in_flight],
            "violations": [v.to_dict() for v in self.violations],
        }

    def render(self) -> str:
        lines = [
            f"accounts:  {self.accounts} ({self.account_events} events)",
            f"transfers: {self.transfers} ({self.transfer_events} events): "
            + (", ".join(f"{s} {n}" for s, n in sorted(self.states.items())) or "none"),
        ]
        if not self.totals.currencies:
            lines.append("money:     none")
        for code, t in sorted(self.totals.currencies.items()):
            lines += [
                f"money in {code}: deposits {t.deposits}, withdrawals {t.withdrawals},"
                f" credits {t.credits}, captures {t.captures} (minor units)",
                f"  sum of balances {t.balances}"
                f" {'==' if t.balances == t.expected_balances else '!='}"
                f" deposits - withdrawals + credits - captures = {t.expected_balances}",
                f"  credits {t.credits}"
                f" {'==' if t.credits == t.captures + t.in_transit else '!='}"
                f" captures {t.captures} + in transit {t.in_transit}",
                f"  reserved {t.reserved} in {t.open_holds} open holds;"
                f" {t.pending_credits} in credits held",
            ]
        lines.append(f"in flight: {len(self.in_flight)}")
        lines += [f"  {f.transfer_id} {f.state}: {f.detail}" for f in self.in_flight]
        lines.append(f"violations: {len(self.violations)}")
        lines += [f"  [{v.kind}] {v.subject}: {v.detail}" for v in self.violations]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def summarize(violations: Sequence[Violation]) -> str:
    """One line naming the kinds found, for a caller that prints a single status."""
    kinds = Counter(v.kind for v in violations)
    return ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items())) or "no violations"
