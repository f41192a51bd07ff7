"""``bank chaos``'s final checks: every transfer stored as the client saw it, every balance
as the completed transfers imply, both services stopping cleanly, and the audit."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.audit import Unreadable, read_events
from bank_cli.audit_checks import audit
from bank_cli.chaos.load import (
    CALL_TIMEOUT,
    COMPLETED,
    ENDED,
    POOL,
    PROBE_TIMEOUT,
    SETTLE_TIMEOUT,
    Load,
    answer_label,
    pool,
    state_name,
)
from bank_cli.chaos.plan import Planned
from bank_cli.chaos.report import REFUSED_UNRECORDED
from bank_cli.harness import SetupError


async def check(load: Load) -> None:
    """Every transfer as answered, every balance as implied; then stop, then audit."""
    await _check_transfers(load)
    await _check_accounts(load)
    await load.close_channels()
    _stop_services(load)
    _run_audit(load)


async def _check_transfers(load: Load) -> None:
    async def one(planned: Planned) -> None:
        if planned.outcome == REFUSED_UNRECORDED:
            if await _stored(load, planned.transfer_id) is not None:
                load.report.violation(
                    "outcome-mismatch",
                    f"reversal {planned.transfer_id}: client saw {planned.outcome}, yet stored",
                )
            load.report.checked_transfers += 1
            return
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            stored = await _stored(load, planned.transfer_id)
            if stored is None:
                load.report.violation(
                    "outcome-mismatch",
                    f"transfer {planned.transfer_id} ({planned.kind}): client saw"
                    f" {planned.outcome}, not stored",
                )
                return
            state = state_name(stored)
            if state in ENDED or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        seen = state if state in ENDED - {"FAILED"} else f"{state}/{stored.failure_reason}"
        if seen != planned.outcome:
            load.report.violation(
                "outcome-mismatch",
                f"transfer {planned.transfer_id} ({planned.kind}, {planned.amount}):"
                f" client saw {planned.outcome}, stored {seen}",
            )
        moved = sum(amount for _, _, amount in planned.moves) if seen == COMPLETED else 0
        if stored.posted_amount != moved and (planned.kind.startswith("hold-") or moved):
            load.report.violation(
                "outcome-mismatch",
                f"transfer {planned.transfer_id} ({planned.kind}): posted_amount"
                f" {stored.posted_amount}, expected {moved}",
            )
        reversed_ = sum(b.post_amount for b in planned.reversals if b.outcome == COMPLETED)
        if stored.reversed_amount != reversed_:
            load.report.violation(
                "outcome-mismatch",
                f"transfer {planned.transfer_id} ({planned.kind}): reversed_amount"
                f" {stored.reversed_amount}, its reversals the client saw completed {reversed_}",
            )
        load.report.checked_transfers += 1

    await pool([*load.plan, *load.reversals], POOL, one)


async def _stored(load: Load, transfer_id: str) -> tpb.Transfer | None:
    """The transfer as stored; None if there is no such transfer."""
    try:
        return await load.retrying(
            lambda: load.transfers.GetTransfer(
                tpb.GetTransferRequest(transfer_id=transfer_id), timeout=CALL_TIMEOUT
            ),
            "GetTransfer",
        )
    except SetupError as exc:
        error = exc.__cause__
        if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def _check_accounts(load: Load) -> None:
    expected = dict(load.openings)
    for planned in [*load.plan, *load.reversals, *load.cash]:
        if planned.outcome == COMPLETED:
            for source, target, amount in planned.moves:
                if source:  # not a deposit
                    expected[source] -= amount
                if target:  # not a withdrawal
                    expected[target] += amount
    total = 0

    async def one(account_id: str) -> None:
        nonlocal total
        account = await load.retrying(
            lambda: load.accounts.GetAccount(
                apb.GetAccountRequest(account_id=account_id), timeout=CALL_TIMEOUT
            ),
            "GetAccount",
        )
        total += account.balance
        problems = []
        if account.balance != expected[account_id]:
            problems.append(
                f"balance {account.balance}, expected {expected[account_id]}"
                f" ({account.balance - expected[account_id]:+d})"
            )
        if account.reserved or account.reservations:
            held = ", ".join(r.reference for r in account.reservations)
            problems.append(f"reserved {account.reserved} ({held})")
        if account.pending_credits:
            problems.append(f"pending credits {account.pending_credits}")
        if problems:
            load.report.violation("balance", f"account {account_id}: " + "; ".join(problems))
        load.report.checked_accounts += 1

    await pool(list(expected), POOL, one)
    load.report.money_after = total
    report = load.report
    if total != report.money_expected:
        report.violation(
            "conservation",
            f"sum of balances {report.money_before} before, {total} after, expected"
            f" {report.money_expected} ({report.deposited} deposited, {report.withdrawn}"
            " withdrawn)",
        )


async def diagnose_stall(load: Load) -> str:
    """What the unfinished transfers look like, when the run did not end in time."""
    unsettled = [p for p in load.plan[: load.started] if p.outcome is None]
    lines = [
        f"{len(unsettled)} transfers without a terminal answer,"
        f" {len(load.plan) - load.started} never started"
    ]
    for planned in unsettled[:10]:
        try:
            stored = await load.transfers.GetTransfer(
                tpb.GetTransferRequest(transfer_id=planned.transfer_id), timeout=PROBE_TIMEOUT
            )
            where = state_name(stored)
        except grpc.aio.AioRpcError as error:
            where = answer_label(error)
        lines.append(
            f"  {planned.transfer_id} ({planned.kind}) after {planned.attempts} attempts:"
            f" stored {where}"
        )
    with contextlib.suppress(grpc.aio.AioRpcError):
        page = await load.transfers.ListUnfinishedTransfers(
            tpb.ListUnfinishedTransfersRequest(page_size=10), timeout=PROBE_TIMEOUT
        )
        for entry in page.transfers:
            lines.append(
                f"  driving {entry.transfer.transfer_id}: step {entry.step},"
                f" {entry.attempts} failed attempts, last error {entry.last_error!r}"
            )
    return "\n".join(lines)


def _stop_services(load: Load) -> None:
    for name in [*load.replicas("transfer"), *load.replicas("account")]:
        service = load.services[name]
        code = service.stop()
        if code != 0:
            load.report.violation(
                "stop",
                f"{service.module} exited with {code} on SIGTERM; its log ends:\n"
                + service.log(1500),
            )


def _run_audit(load: Load) -> None:
    account, transfer = load.first("account"), load.first("transfer")
    try:
        transfer_events = read_events(transfer.db)
        account_events = read_events(account.db)
    except Unreadable as exc:
        load.report.violation("audit", f"a store could not be read: {exc}")
        return
    result = audit(account_events, transfer_events)
    load.report.audit = result
    if not result.ok:
        load.report.violation("audit", f"{len(result.violations)} audit violations")
    if result.in_flight:
        load.report.violation("audit", f"{len(result.in_flight)} transfers still in flight")
