"""The hostile-input suite's model: every RPC of the protos, the real accounts and page
tokens mixed into requests, blocking clients, and what counts as a clear answer."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc import StatusCode
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from shared_kernel.values import (
    parse_amount,
    parse_currency,
    parse_id,
    parse_key,
    parse_owner,
    parse_page_size,
    parse_version,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_ID_LENGTH = 64
HOSTILE_EXAMPLES = 1000  # per gRPC service
BODY_EXAMPLES = 120  # undecodable or barely decodable bodies, per service
CALL_TIMEOUT = 15.0
# A watch on a real account from a version it has not reached waits for live events; the
# deadline ends it, and DEADLINE_EXCEEDED is then the client's own verdict.
WATCH_TIMEOUT = 0.25
HOSTILE = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

FORBIDDEN = {StatusCode.UNKNOWN, StatusCode.INTERNAL}
CLEAR_CODES = {
    StatusCode.OK,
    StatusCode.INVALID_ARGUMENT,
    StatusCode.NOT_FOUND,
    StatusCode.ALREADY_EXISTS,
    StatusCode.FAILED_PRECONDITION,
    StatusCode.OUT_OF_RANGE,
    StatusCode.UNAVAILABLE,
    # EPOCH_FENCED: a step from a driver older than one the account has heard from.
    StatusCode.ABORTED,
    # MESSAGE_TOO_LARGE: above the method's size limit, refused undecoded.
    StatusCode.RESOURCE_EXHAUSTED,
    # A hold for an owner the account does not have (ReserveRequest.owner).
    StatusCode.PERMISSION_DENIED,
}
REASONS = {
    "INVALID_ARGUMENT",
    "ACCOUNT_NOT_FOUND",
    "TRANSFER_NOT_FOUND",
    "ACCOUNT_ALREADY_EXISTS",
    "TRANSFER_ALREADY_EXISTS",
    "REFERENCE_REUSED",
    "INSUFFICIENT_FUNDS",
    "ACCOUNT_CLOSED",
    "CURRENCY_MISMATCH",
    "ACCOUNT_NOT_EMPTY",
    "RESERVATION_NOT_FOUND",
    "RESERVATION_SETTLED",
    "BALANCE_OUT_OF_RANGE",
    "STORE_UNAVAILABLE",
    "TRANSFER_PENDING",
    "CONTENTION",
    "STEP_NOT_RUN",
    "EPOCH_FENCED",
    "EXCEEDS_PENDING_AMOUNT",
    "TRANSFER_NOT_PENDING",
    "TRANSFER_NOT_COMPLETED",
    "EXCEEDS_REVERSIBLE_AMOUNT",
    "MESSAGE_TOO_LARGE",
    "PERMISSION_DENIED",
}
# Fields whose validity does not depend on the rest of the request or on stored state.
RULES: dict[str, Callable[[object], object]] = {
    "account_id": lambda v: parse_id(v, "account_id"),
    "transfer_id": lambda v: parse_id(v, "transfer_id"),
    "from_account_id": lambda v: parse_id(v, "from_account_id"),
    "to_account_id": lambda v: parse_id(v, "to_account_id"),
    "request_id": lambda v: parse_key(v, "request_id"),
    "reference": lambda v: parse_key(v, "reference"),
    "amount": parse_amount,
    "currency": parse_currency,
    "owner": parse_owner,
    "page_size": parse_page_size,
    "from_version": lambda v: parse_version(v, "from_version"),
    "as_of_version": lambda v: parse_version(v, "as_of_version"),
    "overdraft_limit": lambda v: parse_version(v, "overdraft_limit"),
    "epoch": lambda v: parse_version(-1 if v > INT64_MAX else v, "epoch"),
}
OPTIONAL_IDS = {("OpenAccount", "account_id"), ("CreateTransfer", "transfer_id")}
READS = {"GetAccount", "ListAccountEvents", "WatchAccount", "GetTransfer", "ListTransfers"}

# Requests sent per gRPC service (snapshots and health checks not included).
SENT: Counter[str] = Counter()


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request_type: type[Message]
    response_type: type[Message]
    streaming: bool  # the server streams its answer
    client_streaming: bool = False  # the client streams its requests: a list of messages

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    def __str__(self) -> str:
        return f"{self.service.rsplit('.', 1)[-1]}.{self.name}"


def _rpcs() -> list[Rpc]:
    """Every RPC of the public contract, read from the descriptors so none is forgotten."""
    found = []
    for module, name in [
        (apb, "AccountService"),
        (apb, "ReservationService"),
        (tpb, "TransferService"),
    ]:
        service = module.DESCRIPTOR.services_by_name[name]
        for method in service.methods:
            found.append(
                Rpc(
                    service.full_name,
                    method.name,
                    GetMessageClass(method.input_type),
                    GetMessageClass(method.output_type),
                    method.server_streaming,
                    method.client_streaming,
                )
            )
    return found


RPCS = _rpcs()
SERVICES = sorted({rpc.service for rpc in RPCS})


def _of(service: str) -> list[Rpc]:
    return [rpc for rpc in RPCS if rpc.service == service]


# ---------------------------------------------------------------------------------------
# The bank under attack: real accounts to mix in, real page tokens, one channel each side


@dataclass
class Pool:
    """Real accounts of every kind, and page tokens issued by real listings."""

    ids: list[str]
    tokens: list[str]
    rich: str
    other: str
    _strategies: dict[object, st.SearchStrategy] = field(default_factory=dict, repr=False)

    def uuids(self) -> list[uuid.UUID]:
        return [uuid.UUID(i) for i in self.ids]


@dataclass
class Clients:
    channels: dict[str, grpc.Channel]

    def _factory(self, rpc: Rpc) -> Callable[..., Callable[..., object]]:
        channel = self.channels[rpc.service]
        return {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[rpc.client_streaming, rpc.streaming]

    def typed(self, rpc: Rpc) -> Callable[..., object]:
        return self._factory(rpc)(
            rpc.path,
            request_serializer=rpc.request_type.SerializeToString,
            response_deserializer=rpc.response_type.FromString,
        )

    def raw(self, rpc: Rpc) -> Callable[..., object]:
        return self._factory(rpc)(rpc.path, request_serializer=None, response_deserializer=None)

    def account(self, account_id: str) -> apb.Account:
        get = self.typed(next(r for r in RPCS if r.name == "GetAccount"))
        return get(apb.GetAccountRequest(account_id=account_id), timeout=CALL_TIMEOUT)

    def serving(self, service: str) -> bool:
        health = health_pb2_grpc.HealthStub(self.channels[service])
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
