"""Rich error statuses on the wire: what the error table sends is what a client reads.

The client side runs against a ``grpc_testing`` channel, which plays the server's part.
"""

from __future__ import annotations

import threading

import grpc
import grpc_testing
import pytest

from account_service import domain
from account_service.grpc_api.errors import ERRORS
from bank.v1 import account_pb2, account_pb2_grpc
from grpc_common.errors import DOMAIN, error_info, rich_status
from shared_kernel.errors import InvalidArgument

_RESERVE = account_pb2.DESCRIPTOR.services_by_name["ReservationService"].methods_by_name["Reserve"]


def _answer_with(status: grpc.Status) -> grpc.RpcError:
    """Makes one Reserve call whose server side answers ``status``; the client's error."""
    channel = grpc_testing.channel(
        account_pb2.DESCRIPTOR.services_by_name.values(), grpc_testing.strict_real_time()
    )
    stub = account_pb2_grpc.ReservationServiceStub(channel)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            stub.Reserve(account_pb2.ReserveRequest(account_id="a", reference="t", amount=1))
        except grpc.RpcError as error:
            outcome.append(error)

    client = threading.Thread(target=call)
    client.start()
    _, _, rpc = channel.take_unary_unary(_RESERVE)
    rpc.terminate(None, status.trailing_metadata, status.code, status.details)
    client.join(5)
    assert len(outcome) == 1
    return outcome[0]


def test_client_reads_the_reason_and_metadata_the_table_sent():
    status = ERRORS.status_for(domain.InsufficientFunds("acc-1", available=3, requested=5))
    assert status is not None
    error = _answer_with(status)
    info = error_info(error)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (info.domain, info.reason) == (DOMAIN, "INSUFFICIENT_FUNDS")
    assert info.metadata["available"] == "3"


def test_invalid_argument_names_the_field():
    status = ERRORS.status_for(InvalidArgument("reference", "required"))
    info = error_info(_answer_with(status))
    assert (info.reason, info.metadata["field"]) == ("INVALID_ARGUMENT", "reference")


def test_a_status_without_details_has_no_error_info():
    plain = rich_status(grpc.StatusCode.UNAVAILABLE, "X", "down")
    error = _answer_with(type(plain)(plain.code, plain.details, ()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error) is None


@pytest.mark.parametrize(
    ("exc", "code", "reason"),
    [
        (domain.AccountNotFound("a"), grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
        (domain.AccountIsClosed("a"), grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSED"),
        (domain.BalanceOutOfRange("a", 1, 2), grpc.StatusCode.OUT_OF_RANGE, "BALANCE_OUT_OF_RANGE"),
        (
            domain.ReferenceReused("r", "deposit"),
            grpc.StatusCode.ALREADY_EXISTS,
            "REFERENCE_REUSED",
        ),
    ],
)
def test_the_table_maps_domain_refusals_to_contract_codes(exc, code, reason):
    refusal = ERRORS.refusal_for(exc)
    assert (refusal.code, refusal.reason) == (code, reason)


def test_an_unknown_exception_is_not_in_the_table():
    assert ERRORS.status_for(RuntimeError("bug")) is None
