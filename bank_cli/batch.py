"""``bank transfer --batch FILE``: a file of transfers sent with ``CreateTransfers`` in
chunks of up to 1,000, one result printed per item, in file order.

The file is JSON lines (one ``CreateTransferRequest`` per line, proto field names:
``{"from_account_id": …, "to_account_id": …, "amount": 2500}``, or ``legs``, ``pending``,
``expires_after: "60s"``, ``transfer_id``) or CSV (``from_account_id,to_account_id,amount``
and optionally ``transfer_id``, with or without that header line). Blank lines and lines
starting with ``#`` are skipped. A line that cannot be read stops the command before
anything is sent. An item without ``transfer_id`` gets one derived from the file's contents
and its line number, so that running the same file again moves nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import status_pb2

from bank.v1 import transfer_pb2 as tpb
from bank_cli.client import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    Cli,
    Facts,
    describe,
    to_dict,
)
from bank_cli.display import enum_name, money
from shared_kernel.errors import InvalidArgument

MAX_BATCH = 1000
CSV_FIELDS = ("from_account_id", "to_account_id", "amount", "transfer_id")
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class BadLine(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")


@dataclass
class Item:
    line: int
    request: tpb.CreateTransferRequest


def read_items(text: str) -> list[Item]:
    """The file's transfers; ``BadLine`` for the first line that cannot be read."""
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise BadLine(1, "no transfers in the file")
    if lines[0][1].lstrip().startswith("{"):
        items = [Item(n, _json_line(n, line)) for n, line in lines]
    else:
        items = _csv_lines(lines)
    digest = hashlib.sha256(text.encode()).hexdigest()
    for item in items:
        if not item.request.transfer_id:
            item.request.transfer_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{digest}:{item.line}"))
    return items


def _json_line(n: int, line: str) -> tpb.CreateTransferRequest:
    try:
        return json_format.ParseDict(json.loads(line), tpb.CreateTransferRequest())
    except (ValueError, json_format.ParseError) as exc:
        raise BadLine(n, f"not a transfer in JSON: {exc}") from None


def _csv_lines(lines: list[tuple[int, str]]) -> list[Item]:
    rows = list(csv.reader(io.StringIO("\n".join(line for _, line in lines))))
    names = list(CSV_FIELDS)
    first = [cell.strip() for cell in rows[0]]
    if first and first[0] in CSV_FIELDS:
        unknown = set(first) - set(CSV_FIELDS)
        if unknown:
            raise BadLine(lines[0][0], f"unknown columns {sorted(unknown)}: use {CSV_FIELDS}")
        names, rows, lines = first, rows[1:], lines[1:]
    items = []
    for (n, _), row in zip(lines, rows, strict=True):
        if len(row) > len(names) or len(row) < 3:
            raise BadLine(n, f"expected the columns {', '.join(names)}")
        values = dict(zip(names, (cell.strip() for cell in row), strict=False))
        try:
            amount = int(values.get("amount", ""))
        except ValueError:
            raise BadLine(n, f"amount {values.get('amount')!r} is not a whole number") from None
        items.append(
            Item(
                n,
                tpb.CreateTransferRequest(
                    transfer_id=values.get("transfer_id", ""),
                    from_account_id=values.get("from_account_id", ""),
                    to_account_id=values.get("to_account_id", ""),
                    amount=amount,
                ),
            )
        )
    return items


class _ItemError(grpc.RpcError):
    """An item's ``google.rpc.Status`` read like a failed call, for ``describe``."""

    def __init__(self, status: status_pb2.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return _CODES.get(self._status.code, grpc.StatusCode.UNKNOWN)

    def details(self) -> str:
        return self._status.message

    def trailing_metadata(self) -> Any:
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def run_batch(cli: Cli) -> int:
    args = cli.args
    if args.source is not None or args.legs or args.pending or args.transfer_id:
        return cli.refuse(
            InvalidArgument("transfers", "--batch FILE takes its transfers from the file alone")
        )
    try:
        if args.batch == "-":
            text = sys.stdin.read()
        else:
            with open(args.batch, encoding="utf-8") as file:
                text = file.read()
        items = read_items(text)
    except OSError as exc:
        return cli.refuse(InvalidArgument("batch", f"cannot read {args.batch}: {exc.strerror}"))
    except (BadLine, UnicodeDecodeError) as exc:
        return cli.refuse(InvalidArgument("batch", f"{args.batch}: {exc}"))
    cli.facts = Facts(retry=f"the same --batch {args.batch}")
    size = args.batch_size
    tally: Counter[str] = Counter()
    if not cli.json:
        cli.out("  ".join(["LINE", "TRANSFER", "STATE", "AMOUNT", "DETAIL"]))
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        response = cli.client.transfer(
            "CreateTransfers",
            tpb.CreateTransfersRequest(transfers=[item.request for item in chunk]),
        )
        for item, result in zip(chunk, response.results, strict=True):
            tally[_print_result(cli, item, result)] += 1
    counts = ", ".join(f"{label} {n}" for label, n in sorted(tally.items()))
    cli.note(f"{len(items)} transfers in {-(-len(items) // size)} batches: {counts}")
    if any(label.startswith(("UNAVAILABLE", "DEADLINE")) for label in tally):
        cli.note(f"run the same command again for the outcome of the others ({cli.facts.retry})")
        return EXIT_UNAVAILABLE
    if any(label not in ("COMPLETED", "PENDING") for label in tally):
        return EXIT_REFUSED
    return EXIT_OK


def _print_result(cli: Cli, item: Item, result: tpb.CreateTransferResult) -> str:
    """Prints one item's result; its label for the tally."""
    request = item.request
    if result.HasField("transfer"):
        t = result.transfer
        state = enum_name(tpb.TransferState.Name(t.state), "TRANSFER_STATE_")
        if cli.json:
            cli.emit({"line": item.line, "transfer": to_dict(t)})
        else:
            detail = t.failure_reason
            cli.out(f"{item.line}  {t.transfer_id}  {state}  {money(t.amount, t.currency)}"
                    + (f"  {detail}" if detail else ""))  # fmt: skip
        return state
    error = _ItemError(result.error)
    simple = request.amount and not request.legs
    facts = Facts(
        amount=request.amount if simple else None,
        transfer=(request.from_account_id, request.to_account_id) if simple else None,
        transfer_id=request.transfer_id,
    )
    failure = describe(error, facts, cli.client.transfer_service, cli.client.timeout)
    if cli.json:
        cli.emit(
            {"line": item.line, "transfer_id": request.transfer_id, "error": failure.to_dict()}
        )
    else:
        label = failure.reason or failure.code
        cli.out(f"{item.line}  {request.transfer_id}  {label}  {request.amount}  {failure.message}")
    return f"{failure.code}/{failure.reason}" if failure.reason else failure.code
