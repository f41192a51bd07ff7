"""The bank command's messages and exit statuses for rich error statuses, without servers.

The command's synchronous client runs against a ``grpc_testing`` channel, which plays both
services: each test answers the calls the command makes, in order, and reads what the
command printed.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import grpc_testing
import pytest

from account_service import domain
from account_service.grpc_api.errors import ERRORS as ACCOUNT_ERRORS
from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli import client as cli_client
from bank_cli.__main__ import build_parser
from bank_cli.client import Client
from bank_cli.display import money
from event_store import StoreUnavailable
from grpc_common.errors import rich_status
from shared_kernel.errors import InvalidArgument
from transfer_service.application import TransferPending
from transfer_service.grpc_api.errors import ERRORS as TRANSFER_ERRORS

ADA = str(uuid.uuid4())
BOB = str(uuid.uuid4())
ACCOUNTS_ADDRESS = "accounts.test:50051"
TRANSFERS_ADDRESS = "transfers.test:50052"

_ACCOUNT_SERVICE = apb.DESCRIPTOR.services_by_name["AccountService"]
_TRANSFER_SERVICE = tpb.DESCRIPTOR.services_by_name["TransferService"]


def _method(name: str) -> Any:
    service = _TRANSFER_SERVICE if name in _TRANSFER_SERVICE.methods_by_name else _ACCOUNT_SERVICE
    return service.methods_by_name[name]


@dataclass
class Run:
    status: int
    out: str
    err: str
    requests: list[Any]


def _ok(response: Any) -> tuple[Any, grpc.Status | None]:
    return response, None


def _fail(status: grpc.Status) -> tuple[Any, grpc.Status | None]:
    return None, status


def _plain(code: grpc.StatusCode, details: str) -> grpc.Status:
    """A status without an ErrorInfo, as a proxy or the gRPC library itself sends."""
    status = rich_status(code, "X", details)
    return type(status)(status.code, status.details, ())


def drive(capsys, argv: list[str], answers: list[tuple[str, tuple[Any, Any]]]) -> Run:
    """Runs ``bank <argv>`` against a testing channel answering each call in turn."""
    channel = grpc_testing.channel(
        [_ACCOUNT_SERVICE, _TRANSFER_SERVICE], grpc_testing.strict_real_time()
    )
    client = Client(
        channel,
        channel,
        accounts_address=ACCOUNTS_ADDRESS,
        transfers_address=TRANSFERS_ADDRESS,
        timeout=5,
    )
    args = build_parser().parse_args(argv)
    outcome: list[int] = []
    command = threading.Thread(target=lambda: outcome.append(args.func(args, client=client)))
    command.start()
    requests = []
    for name, (response, status) in answers:
        _, request, rpc = channel.take_unary_unary(_method(name))
        requests.append(request)
        if status is None:
            rpc.terminate(response, (), grpc.StatusCode.OK, "")
        else:
            rpc.terminate(None, status.trailing_metadata, status.code, status.details)
    command.join(10)
    assert not command.is_alive(), "the command is still waiting for a call"
    captured = capsys.readouterr()
    return Run(outcome[0], captured.out, captured.err, requests)


def _account(account_id: str = ADA, **fields: Any) -> apb.Account:
    values = {"owner": "Ada", "currency": "EUR", "status": apb.ACCOUNT_STATUS_OPEN, **fields}
    return apb.Account(account_id=account_id, **values)


# --------------------------------------------------------------------------- account calls


def test_insufficient_funds_in_major_units_with_the_currency_looked_up(capsys):
    refusal = ACCOUNT_ERRORS.status_for(
        domain.InsufficientFunds(ADA, available=750, requested=1000)
    )
    run = drive(
        capsys,
        ["withdraw", ADA, "1000"],
        [("Withdraw", _fail(refusal)), ("GetAccount", _ok(_account(balance=750, available=750)))],
    )
    assert run.status == cli_client.EXIT_REFUSED == 1
    assert run.err.strip() == (
        "bank withdraw: refused: insufficient funds (available 7.50 EUR, requested 10.00 EUR)"
    )
    assert run.out == ""
    assert run.requests[1].account_id == ADA


def test_insufficient_funds_in_minor_units_when_the_currency_cannot_be_told(capsys):
    refusal = ACCOUNT_ERRORS.status_for(
        domain.InsufficientFunds(ADA, available=750, requested=1000)
    )
    run = drive(
        capsys,
        ["withdraw", ADA, "1000"],
        [
            ("Withdraw", _fail(refusal)),
            ("GetAccount", _fail(_plain(grpc.StatusCode.UNAVAILABLE, "down"))),
        ],
    )
    assert run.status == 1
    assert "(available 750, requested 1000) [minor units]" in run.err


def test_json_error_object_on_stdout_and_the_message_on_stderr(capsys):
    refusal = ACCOUNT_ERRORS.status_for(
        domain.InsufficientFunds(ADA, available=750, requested=1000)
    )
    run = drive(
        capsys,
        ["withdraw", ADA, "1000", "--json"],
        [("Withdraw", _fail(refusal)), ("GetAccount", _ok(_account()))],
    )
    error = json.loads(run.out)["error"]
    assert error["code"] == "FAILED_PRECONDITION"
    assert error["reason"] == "INSUFFICIENT_FUNDS"
    assert error["metadata"] == {"account_id": ADA, "available": "750", "requested": "1000"}
    assert error["exit_status"] == 1
    assert error["message"] in run.err


def test_account_not_empty_shows_what_it_still_holds(capsys):
    refusal = ACCOUNT_ERRORS.status_for(domain.AccountNotEmpty(ADA, balance=1200, reserved=300))
    run = drive(
        capsys,
        ["close", ADA],
        [("CloseAccount", _fail(refusal)), ("GetAccount", _ok(_account(currency="JPY")))],
    )
    assert run.status == 1
    assert f"refused: account {ADA} is not empty (balance 1200 JPY, reserved 300 JPY)" in run.err


def test_a_closed_account_refuses_without_a_lookup(capsys):
    refusal = ACCOUNT_ERRORS.status_for(domain.AccountIsClosed(ADA))
    run = drive(capsys, ["deposit", ADA, "5"], [("Deposit", _fail(refusal))])
    assert (run.status, run.err.strip()) == (1, f"bank deposit: refused: account {ADA} is closed")


def test_invalid_argument_names_the_field_and_exits_2(capsys):
    refusal = ACCOUNT_ERRORS.status_for(InvalidArgument("account_id", "not a UUID"))
    run = drive(capsys, ["show", "nope"], [("GetAccount", _fail(refusal))])
    assert run.status == cli_client.EXIT_USAGE == 2
    assert run.err.strip() == "bank show: invalid argument: account_id: not a UUID"


def test_not_found_exits_3(capsys):
    refusal = ACCOUNT_ERRORS.status_for(domain.AccountNotFound(ADA))
    run = drive(capsys, ["history", ADA], [("GetAccount", _fail(refusal))])
    assert run.status == cli_client.EXIT_NOT_FOUND == 3
    assert run.err.strip() == f"bank history: not found: account {ADA} does not exist"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            domain.ReferenceReused("salary", "deposit"),
            "refused: request id 'salary' was already used for a deposit with other contents;"
            " choose another --request-id",
        ),
        (
            domain.BalanceOutOfRange(ADA, 2**63 - 10, 20),
            f"refused: the balance of account {ADA} would exceed the largest amount",
        ),
    ],
)
def test_other_deposit_refusals_exit_1(capsys, exc, expected):
    answers = [("Deposit", _fail(ACCOUNT_ERRORS.status_for(exc)))]
    if isinstance(exc, domain.BalanceOutOfRange):
        answers.append(("GetAccount", _ok(_account())))
    run = drive(capsys, ["deposit", ADA, "20", "--request-id", "salary"], answers)
    assert run.status == 1
    assert expected in run.err


@pytest.mark.parametrize("currency", ["EUR", "usd", "JPY"])
def test_an_iso_4217_currency_is_sent_upper_case(capsys, currency):
    run = drive(
        capsys,
        ["open", "--owner", "Eve", "--currency", currency, "--account-id", ADA],
        [("OpenAccount", _ok(_account(currency=currency.upper())))],
    )
    assert run.status == 0, run.err
    assert run.requests[0].currency == currency.upper()


def test_a_currency_outside_iso_4217_is_refused_before_any_call(capsys):
    run = drive(capsys, ["open", "--owner", "Eve", "--currency", "XYZ"], [])
    assert run.status == cli_client.EXIT_USAGE == 2
    assert run.requests == []
    assert run.err.strip() == (
        "bank open: invalid argument: currency: XYZ is not an ISO 4217 currency code"
    )


def test_a_currency_outside_iso_4217_as_json(capsys):
    run = drive(capsys, ["open", "--owner", "Eve", "--currency", "xyz", "--json"], [])
    assert run.status == 2
    error = json.loads(run.out)["error"]
    assert (error["code"], error["reason"]) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert (error["metadata"], error["exit_status"]) == ({"field": "currency"}, 2)


def test_account_already_exists_exits_1(capsys):
    refusal = ACCOUNT_ERRORS.status_for(domain.AccountAlreadyExists(ADA))
    run = drive(
        capsys,
        ["open", "--owner", "Eve", "--currency", "eur", "--account-id", ADA],
        [("OpenAccount", _fail(refusal))],
    )
    assert run.status == 1
    assert f"refused: account {ADA} already exists with another owner or currency" in run.err
    assert run.requests[0].currency == "EUR"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            _plain(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"),
            f"unavailable: cannot reach the account service at {ACCOUNTS_ADDRESS}"
            " (failed to connect to all addresses); safe to retry with --request-id r-1",
        ),
        (
            ACCOUNT_ERRORS.status_for(StoreUnavailable("db down")),
            "unavailable: the service cannot reach its database;"
            " safe to retry with --request-id r-1",
        ),
        (
            _plain(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
            f"timed out: no answer from the account service at {ACCOUNTS_ADDRESS} within 5s",
        ),
    ],
)
def test_unavailable_exits_4_and_says_how_to_retry(capsys, status, expected):
    run = drive(capsys, ["deposit", ADA, "20", "--request-id", "r-1"], [("Deposit", _fail(status))])
    assert run.status == cli_client.EXIT_UNAVAILABLE == 4
    assert expected in run.err


def test_a_fresh_request_id_is_printed_so_that_the_retry_can_use_it(capsys):
    run = drive(
        capsys,
        ["deposit", ADA, "2500"],
        [("Deposit", _fail(_plain(grpc.StatusCode.UNAVAILABLE, "down")))],
    )
    request_id = run.requests[0].request_id
    assert uuid.UUID(request_id)
    assert f"safe to retry with --request-id {request_id}" in run.err


def test_an_unexpected_code_exits_5(capsys):
    run = drive(
        capsys,
        ["show", ADA],
        [("GetAccount", _fail(_plain(grpc.StatusCode.INTERNAL, "boom")))],
    )
    assert run.status == cli_client.EXIT_ERROR == 5
    assert f"error: the account service at {ACCOUNTS_ADDRESS} answered INTERNAL: boom" in run.err


# --------------------------------------------------------------------------- transfers


def _transfer_refusal(reason: str, transfer_id: str) -> grpc.Status:
    """What the transfer service answers for a transfer that ended FAILED with ``reason``."""
    codes = {"ACCOUNT_NOT_FOUND": grpc.StatusCode.NOT_FOUND}
    code = codes.get(reason, grpc.StatusCode.FAILED_PRECONDITION)
    return rich_status(
        code, reason, f"transfer {transfer_id} failed: {reason}", {"transfer_id": transfer_id}
    )


def test_transfer_refused_for_funds_looks_up_what_the_source_has(capsys):
    transfer_id = str(uuid.uuid4())
    run = drive(
        capsys,
        ["transfer", ADA, BOB, "1000", "--transfer-id", transfer_id],
        [
            ("CreateTransfer", _fail(_transfer_refusal("INSUFFICIENT_FUNDS", transfer_id))),
            ("GetAccount", _ok(_account(ADA, balance=750, available=750))),
            ("GetAccount", _ok(_account(BOB, owner="Bob"))),
        ],
    )
    assert run.status == 1
    assert run.err.strip() == (
        "bank transfer: refused: insufficient funds (available 7.50 EUR, requested 10.00 EUR);"
        f" transfer {transfer_id} is recorded as FAILED, nothing moved"
    )
    assert [r.account_id for r in run.requests[1:]] == [ADA, BOB]


def test_transfer_to_a_missing_account_names_it(capsys):
    transfer_id = str(uuid.uuid4())
    missing = ACCOUNT_ERRORS.status_for(domain.AccountNotFound(BOB))
    run = drive(
        capsys,
        ["transfer", ADA, BOB, "100", "--transfer-id", transfer_id],
        [
            ("CreateTransfer", _fail(_transfer_refusal("ACCOUNT_NOT_FOUND", transfer_id))),
            ("GetAccount", _ok(_account(ADA))),
            ("GetAccount", _fail(missing)),
        ],
    )
    assert run.status == 3
    assert f"not found: target account {BOB} does not exist; transfer {transfer_id}" in run.err


def test_transfer_between_currencies_says_which_holds_what(capsys):
    transfer_id = str(uuid.uuid4())
    run = drive(
        capsys,
        ["transfer", ADA, BOB, "100", "--transfer-id", transfer_id],
        [
            ("CreateTransfer", _fail(_transfer_refusal("CURRENCY_MISMATCH", transfer_id))),
            ("GetAccount", _ok(_account(ADA))),
            ("GetAccount", _ok(_account(BOB, currency="USD"))),
        ],
    )
    assert run.status == 1
    assert "currency mismatch: the source account holds EUR, the target account USD" in run.err


def test_transfer_pending_explains_and_gives_the_id_to_retry_with(capsys):
    run = drive(
        capsys,
        ["transfer", ADA, BOB, "100"],
        [("CreateTransfer", _fail(TRANSFER_ERRORS.status_for(TransferPending("t-1"))))],
    )
    chosen = run.requests[0].transfer_id
    assert uuid.UUID(chosen)
    assert run.status == 4
    message = run.err.strip()
    assert message.startswith("bank transfer: pending: transfer t-1 is recorded and still running")
    assert "run the same command with --transfer-id t-1 to get its outcome" in message
    assert "never moves money twice" in message


def test_transfer_unreachable_gives_the_chosen_id(capsys):
    run = drive(
        capsys,
        ["transfer", ADA, BOB, "100"],
        [("CreateTransfer", _fail(_plain(grpc.StatusCode.UNAVAILABLE, "connection refused")))],
    )
    chosen = run.requests[0].transfer_id
    assert run.status == 4
    assert f"cannot reach the transfer service at {TRANSFERS_ADDRESS}" in run.err
    assert f"run the same command with --transfer-id {chosen}" in run.err


def test_transfer_already_exists_exits_1(capsys):
    transfer_id = str(uuid.uuid4())
    refusal = rich_status(
        grpc.StatusCode.ALREADY_EXISTS,
        "TRANSFER_ALREADY_EXISTS",
        "other contents",
        {"transfer_id": transfer_id},
    )
    run = drive(
        capsys,
        ["transfer", ADA, BOB, "100", "--transfer-id", transfer_id],
        [("CreateTransfer", _fail(refusal))],
    )
    assert run.status == 1
    assert f"refused: transfer {transfer_id} already exists" in run.err


# --------------------------------------------------------------------------- watch


def test_watch_prints_events_then_exits_4_when_the_stream_breaks(capsys, monkeypatch):
    printed = threading.Event()
    emit = cli_client.Cli.emit

    def emit_and_tell(self: cli_client.Cli, obj: Any) -> None:
        emit(self, obj)
        printed.set()

    monkeypatch.setattr(cli_client.Cli, "emit", emit_and_tell)
    channel = grpc_testing.channel(
        [_ACCOUNT_SERVICE, _TRANSFER_SERVICE], grpc_testing.strict_real_time()
    )
    client = Client(channel, channel, accounts_address=ACCOUNTS_ADDRESS, timeout=5)
    args = build_parser().parse_args(["watch", ADA, "--json", "--from-version", "3"])
    outcome: list[int] = []
    command = threading.Thread(target=lambda: outcome.append(args.func(args, client=client)))
    command.start()
    _, _, rpc = channel.take_unary_unary(_method("GetAccount"))
    rpc.terminate(_account(), (), grpc.StatusCode.OK, "")
    _, request, stream = channel.take_unary_stream(_method("WatchAccount"))
    assert (request.account_id, request.from_version) == (ADA, 3)
    stream.send_response(
        apb.AccountEvent(
            account_id=ADA, version=4, type=apb.ACCOUNT_EVENT_TYPE_DEPOSITED, amount=250
        )
    )
    assert printed.wait(5)
    stream.terminate((), grpc.StatusCode.UNAVAILABLE, "going away")
    command.join(10)
    captured = capsys.readouterr()
    assert outcome == [4]
    event, error = (json.loads(line) for line in captured.out.splitlines())
    assert (event["version"], event["type"], event["amount"]) == (
        "4",
        "ACCOUNT_EVENT_TYPE_DEPOSITED",
        "250",
    )
    assert error["error"]["code"] == "UNAVAILABLE"
    assert "unavailable: cannot reach the account service" in captured.err


# --------------------------------------------------------------------------- amounts


@pytest.mark.parametrize(
    ("minor", "currency", "shown"),
    [
        (2500, "EUR", "25.00 EUR"),
        (5, "EUR", "0.05 EUR"),
        (-750, "USD", "-7.50 USD"),
        (1000, "JPY", "1000 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (2500, None, "2500"),
    ],
)
def test_money_in_major_units(minor, currency, shown):
    assert money(minor, currency) == shown


@pytest.mark.parametrize("text", ["25.00", "0", "-5", "ten", "9223372036854775808"])
def test_amounts_that_are_not_whole_positive_minor_units_are_usage_errors(capsys, text):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["deposit", ADA, text])
    assert exit_.value.code == 2
    assert "AMOUNT" in capsys.readouterr().err
