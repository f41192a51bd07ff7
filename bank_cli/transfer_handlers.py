"""What ``bank transfer|hold|post|void|reverse`` do when they run: a transfer (single or
multi-leg, immediate or pending, or a file of them in ``CreateTransfers`` batches), the
post or void of a hold, and the reversal of a completed transfer. Their parsers are in
``bank_cli.commands``; ``transfer_fields`` is how every command shows a transfer.
"""

from __future__ import annotations

import uuid

from google.protobuf import duration_pb2

from bank.v1 import transfer_pb2 as tpb
from bank_cli.client import EXIT_OK, Cli, Facts, to_dict
from bank_cli.display import enum_name, fields, money, timestamp
from shared_kernel.errors import InvalidArgument


def _state(t: tpb.Transfer) -> str:
    return enum_name(tpb.TransferState.Name(t.state), "TRANSFER_STATE_")


def _request(cli: Cli, transfer_id: str, pending: bool) -> tpb.CreateTransferRequest | int:
    """The CreateTransfer request of ``bank transfer``/``bank hold``, or the exit status
    of a refusal of its arguments."""
    args = cli.args
    legs = getattr(args, "legs", None) or []
    positional = [args.source, args.target, args.amount]
    if legs and any(value is not None for value in positional):
        return cli.refuse(InvalidArgument("legs", "give FROM TO AMOUNT or --leg, not both"))
    if not legs and any(value is None for value in positional):
        return cli.refuse(InvalidArgument("amount", "give FROM TO AMOUNT, or one --leg or more"))
    if args.expires_after is not None and not pending:
        return cli.refuse(InvalidArgument("expires_after", "--expires-after is for a hold only"))
    request = tpb.CreateTransferRequest(transfer_id=transfer_id, pending=pending)
    if legs:
        request.legs.extend(
            tpb.Leg(from_account_id=f, to_account_id=t, amount=a) for f, t, a in legs
        )
    else:
        request.from_account_id, request.to_account_id = args.source, args.target
        request.amount = args.amount
    if args.expires_after is not None:
        request.expires_after.CopyFrom(duration_pb2.Duration(seconds=args.expires_after))
    return request


def transfer(cli: Cli) -> int:
    if cli.args.batch is not None:
        from bank_cli.batch import run_batch

        return run_batch(cli)
    return _create(cli, pending=bool(cli.args.pending))


def hold(cli: Cli) -> int:
    return _create(cli, pending=True)


def _create(cli: Cli, pending: bool) -> int:
    args = cli.args
    transfer_id = args.transfer_id or str(uuid.uuid4())
    request = _request(cli, transfer_id, pending)
    if isinstance(request, int):
        return request
    cli.facts = Facts(
        amount=request.amount or None,
        transfer=(request.from_account_id, request.to_account_id) if request.amount else None,
        transfer_id=transfer_id,
        retry=f"--transfer-id {transfer_id}",
    )
    result = cli.client.transfer("CreateTransfer", request)
    if cli.json:
        cli.emit(to_dict(result))
        return EXIT_OK
    shown = money(result.amount, result.currency)
    if result.state == tpb.TRANSFER_STATE_PENDING:
        where = f"on {result.from_account_id}" if result.from_account_id else "on its sources"
        cli.out(f"held {shown} {where} (transfer {result.transfer_id})")
        cli.out(transfer_fields(result))
        cli.note(
            f"post it with: bank post {result.transfer_id} [AMOUNT];"
            f" void it with: bank void {result.transfer_id}"
        )
        return EXIT_OK
    state = _state(result)
    verb = "transferred" if result.state == tpb.TRANSFER_STATE_COMPLETED else state.lower()
    if result.legs and len(result.legs) > 1:
        cli.out(f"{verb} {shown} in {len(result.legs)} legs")
    else:
        cli.out(f"{verb} {shown} from {result.from_account_id} to {result.to_account_id}")
    cli.out(transfer_fields(result))
    return EXIT_OK


def post(cli: Cli) -> int:
    args = cli.args
    cli.facts = Facts(transfer_id=args.transfer_id, amount=args.amount)
    result = cli.client.transfer(
        "PostTransfer",
        tpb.PostTransferRequest(transfer_id=args.transfer_id, amount=args.amount or 0),
    )
    if cli.json:
        cli.emit(to_dict(result))
        return EXIT_OK
    posted = money(result.posted_amount, result.currency)
    released = result.amount - result.posted_amount
    tail = f", released {money(released, result.currency)}" if released else ""
    cli.out(f"posted {posted} of transfer {result.transfer_id}{tail}")
    cli.out(transfer_fields(result))
    return EXIT_OK


def void(cli: Cli) -> int:
    args = cli.args
    cli.facts = Facts(transfer_id=args.transfer_id)
    result = cli.client.transfer(
        "VoidTransfer", tpb.VoidTransferRequest(transfer_id=args.transfer_id)
    )
    if cli.json:
        cli.emit(to_dict(result))
        return EXIT_OK
    released = money(result.amount, result.currency)
    cli.out(f"voided transfer {result.transfer_id}: released {released}, nothing moved")
    cli.out(transfer_fields(result))
    return EXIT_OK


def reverse(cli: Cli) -> int:
    args = cli.args
    reversal_id = args.reversal_id or str(uuid.uuid4())
    cli.facts = Facts(
        transfer_id=args.transfer_id, amount=args.amount, retry=f"--reversal-id {reversal_id}"
    )
    result = cli.client.transfer(
        "ReverseTransfer",
        tpb.ReverseTransferRequest(
            transfer_id=args.transfer_id,
            reversal_id=reversal_id,
            amount=args.amount or 0,
            reason=args.reason or "",
        ),
    )
    if cli.json:
        cli.emit(to_dict(result))
        return EXIT_OK
    shown = money(result.amount, result.currency)
    if result.state == tpb.TRANSFER_STATE_COMPLETED:
        cli.out(f"reversed {shown} of transfer {args.transfer_id} (reversal {reversal_id})")
    else:
        cli.out(f"reversal {reversal_id} of transfer {args.transfer_id}: {_state(result).lower()}")
    cli.out(transfer_fields(result))
    return EXIT_OK


def transfer_fields(t: tpb.Transfer) -> str:
    pairs = [("transfer", t.transfer_id)]
    if t.from_account_id or t.to_account_id or len(t.legs) <= 1:
        pairs += [("from", t.from_account_id), ("to", t.to_account_id)]
    if len(t.legs) > 1:
        pairs += [
            (f"leg {n}", f"{leg.from_account_id} -> {leg.to_account_id}  "
             + money(leg.amount, t.currency))
            for n, leg in enumerate(t.legs, 1)
        ]  # fmt: skip
    pairs += [("amount", money(t.amount, t.currency)), ("state", _state(t))]
    if t.pending:
        pairs.append(("posted", money(t.posted_amount, t.currency)))
        if t.HasField("expires_at"):
            pairs.append(("expires", timestamp(t.expires_at)))
    if t.failure_reason:
        pairs.append(("reason", t.failure_reason))
    if t.reverses_transfer_id:
        pairs.append(("reverses", t.reverses_transfer_id))
    if t.reason:
        pairs.append(("note", t.reason))
    if t.reversed_amount:
        pairs.append(("reversed", money(t.reversed_amount, t.currency)))
    pairs += [("created", timestamp(t.created_at)), ("updated", timestamp(t.updated_at))]
    return fields(pairs)


__all__ = ["hold", "post", "reverse", "transfer", "transfer_fields", "void"]
