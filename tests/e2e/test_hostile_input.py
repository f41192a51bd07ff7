"""Hostile input against both services as real processes, and the limits, one by one.

Hypothesis sends every RPC well-formed messages with hostile field values (empty, huge,
control and non-ASCII characters, int64 extremes, malformed ids and ids of real accounts,
page tokens of other listings), then bodies that do not decode at all. Whatever comes in,
a service answers a clear code (never UNKNOWN or INTERNAL), every refusal carries an
ErrorInfo of domain bank.v1 naming a field that is really wrong, a refusal stores nothing,
and the service keeps serving.
"""

from __future__ import annotations

import base64
import operator
import string
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc import StatusCode
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from grpc_common import limits
from grpc_common.errors import DOMAIN, error_info
from shared_kernel.errors import InvalidArgument
from shared_kernel.page_tokens import MAX_TOKEN_LENGTH
from shared_kernel.values import (
    MAX_KEY_LENGTH,
    MAX_OWNER_LENGTH,
    MAX_PAGE_SIZE,
    parse_amount,
    parse_currency,
    parse_id,
    parse_key,
    parse_owner,
    parse_page_size,
    parse_version,
)
from tests.e2e.conftest import new_account, refusal

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


@pytest.fixture(scope="module")
def pool(bank) -> Pool:
    rich, other = new_account(bank, 1_000_000), new_account(bank, 1_000_000)
    usd = new_account(bank, 5_000, currency="USD")
    empty = new_account(bank, owner="Zoë Ünïcødé")
    closed = new_account(bank)
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=closed.account_id))
    full = new_account(bank, INT64_MAX)
    accounts, transfers = bank.accounts, bank.transfers
    for n in range(3):
        accounts.Deposit(
            apb.DepositRequest(account_id=rich.account_id, amount=1, request_id=f"{n}")
        )
        transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=rich.account_id, to_account_id=other.account_id, amount=1
            )
        )
    tokens = []
    for account in (rich, other):
        for size in (1, 2):
            tokens.append(
                accounts.ListAccountEvents(
                    apb.ListAccountEventsRequest(account_id=account.account_id, page_size=size)
                ).next_page_token
            )
            tokens.append(
                transfers.ListTransfers(
                    tpb.ListTransfersRequest(account_id=account.account_id, page_size=size)
                ).next_page_token
            )
    assert all(tokens)
    ids = [a.account_id for a in (rich, other, usd, empty, closed, full)]
    return Pool(ids=ids, tokens=tokens, rich=rich.account_id, other=other.account_id)


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


@pytest.fixture(scope="module")
def clients(bank) -> Iterator[Clients]:
    assert bank.account is not None and bank.transfer is not None
    account_side = grpc.insecure_channel(bank.account.address)
    transfer_side = grpc.insecure_channel(bank.transfer.address)
    channels = {
        "bank.v1.AccountService": account_side,
        "bank.v1.ReservationService": account_side,
        "bank.v1.TransferService": transfer_side,
    }
    yield Clients(channels)
    account_side.close()
    transfer_side.close()


# ---------------------------------------------------------------------------------------
# Strategies

EDGE_STRINGS = [
    " ",
    "\t",
    "\r\n",
    "\x00",
    "\x7f",
    "\x1b[2J",
    "null",
    "0",
    "-1",
    "'; DROP TABLE events; --",
    "../../etc/passwd",
    "%s%s%n",
    "{}",
    "urn:uuid:",
    "\u202eRTL",
    "\ufeff",
    "\u200b",
    "\U0010ffff",
    "é",
    "😀",
    "a" * MAX_ID_LENGTH,
    "a" * (MAX_ID_LENGTH + 1),
    "x" * MAX_KEY_LENGTH,
    "x" * (MAX_KEY_LENGTH + 1),
    "x" * MAX_OWNER_LENGTH,
    "x" * (MAX_OWNER_LENGTH + 1),
    "A" * MAX_TOKEN_LENGTH,
    "A" * (MAX_TOKEN_LENGTH + 1),
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
]
# Spellings of a UUID: the ones a lenient parser accepts, and near misses.
UUID_FORMS: list[Callable[[uuid.UUID], str]] = [
    str,
    lambda u: str(u).upper(),
    lambda u: "{" + str(u) + "}",
    lambda u: "urn:uuid:" + str(u),
    operator.attrgetter("hex"),
    lambda u: str(u)[:-1],
    lambda u: str(u) + "0",
    lambda u: " " + str(u),
    lambda u: str(u) + "\n",
    lambda u: str(u).replace("-", "\u2010"),
    lambda u: "{" * 16 + u.hex + "}" * 16,
    lambda u: "{" * 16 + u.hex + "}" * 17,
]
REUSED_IDS = [str(uuid.UUID(int=n)) for n in (1, 2, 3)]
INT64_EDGES = [0, 1, -1, INT64_MAX, INT64_MAX - 1, INT64_MIN, INT64_MIN + 1, 2**31, -(2**31)]
INT32_EDGES = [0, 1, -1, 50, MAX_PAGE_SIZE, MAX_PAGE_SIZE + 1, INT32_MAX, INT32_MIN]


def _huge() -> st.SearchStrategy[str]:
    """Strings of up to ~100 KB of UTF-8, cheap to draw: one character, repeated."""
    chars = st.sampled_from(["x", "é", "\x00", "😀", "-", "{", "A", "\u202e"])
    return st.builds(lambda c, n: c * (n // len(c.encode())), chars, st.integers(1, 100_000))


def _uuid_spellings(uuids: st.SearchStrategy[uuid.UUID]) -> st.SearchStrategy[str]:
    return st.builds(lambda u, form: form(u), uuids, st.sampled_from(UUID_FORMS))


def _texts(pool: Pool | None) -> st.SearchStrategy[str]:
    branches = [
        st.just(""),
        st.text(max_size=64),  # any code point but surrogates
        st.text(st.characters(codec="ascii"), max_size=160),  # control characters included
        st.text(st.characters(min_codepoint=0x80, codec="utf-8"), max_size=64),
        _huge(),
        st.sampled_from(EDGE_STRINGS),
        _uuid_spellings(st.uuids()),
    ]
    if pool is not None:
        branches.append(_uuid_spellings(st.sampled_from(pool.uuids())))
    return st.one_of(branches)


Kinds = dict[str, st.SearchStrategy]


def _strategies(pool: Pool | None) -> tuple[Kinds, Kinds]:
    """Per kind of field: plausible values, and hostile ones.

    Plausible values (real accounts, keys that repeat, small amounts) carry requests past
    validation into the business rules and the store.
    """
    texts = _texts(pool)
    ids = st.sampled_from(pool.ids) if pool is not None else st.uuids().map(str)
    tokens = [st.just(""), texts]
    issued_tokens = [st.just("")]
    if pool is not None:
        issued = st.sampled_from(pool.tokens)
        issued_tokens.append(issued)
        tokens += [
            issued,
            st.builds(lambda t, n: t[:n], issued, st.integers(0, 40)),
            st.builds(lambda t, c: t[:-1] + c, issued, st.sampled_from("A_-=+/\u00e9")),
            issued.map(lambda t: t + "=="),
            issued.map(lambda t: t * 2),
            st.sampled_from(pool.ids).map(
                lambda i: base64.urlsafe_b64encode(
                    b"\0" * 12 + f"account-events:{i}|1".encode()
                ).decode()
            ),
        ]
    int64s = st.one_of(
        st.sampled_from(INT64_EDGES), st.integers(INT64_MIN, INT64_MAX), st.integers(-3, 1_000)
    )
    int32s = st.one_of(
        st.sampled_from(INT32_EDGES), st.integers(INT32_MIN, INT32_MAX), st.integers(-3, 2_000)
    )
    printable = st.sampled_from(string.printable[:95])
    hostile = {
        "id": texts,
        "new_id": texts,
        "key": st.one_of(
            texts,
            st.text(printable, min_size=1, max_size=MAX_KEY_LENGTH),
            st.sampled_from(["opening", "0", "1", "k", "x" * MAX_KEY_LENGTH]),
        ),
        "currency": st.one_of(
            texts,
            st.sampled_from(["EUR", "USD", "eur", "EURO", "E1R", "ÉUR"]),
            st.text(st.sampled_from(string.ascii_uppercase), min_size=3, max_size=3),
        ),
        "owner": st.one_of(texts, st.text(min_size=1, max_size=MAX_OWNER_LENGTH)),
        "page_token": st.one_of(tokens),
        "text": texts,
        "int64": int64s,
        "int32": int32s,
        "uint64": st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)),
        "uint32": st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1)),
        "bool": st.booleans(),
        "bytes": st.binary(max_size=64),
    }
    hostile |= {"amount": int64s, "page_size": int32s, "version": int64s}
    plausible = {
        "id": st.one_of(ids, ids, ids, st.uuids().map(str)),
        # Mostly fresh, now and then one used before: a repeat or a reuse.
        "new_id": st.one_of(st.just(""), st.uuids().map(str), st.sampled_from(REUSED_IDS)),
        # A few keys, so that repeats, reuse with other contents and settled holds happen.
        "key": st.one_of(
            st.sampled_from(["k1", "k2", "k3", "opening", "0"]),
            st.text(printable, min_size=1, max_size=MAX_KEY_LENGTH),
        ),
        "currency": st.sampled_from(["EUR", "EUR", "USD"]),
        "owner": st.one_of(st.just("Ada"), st.text(printable, min_size=1, max_size=40)),
        "page_token": st.one_of(issued_tokens),
        "amount": st.one_of(st.integers(1, 1_000), st.sampled_from([INT64_MAX, 2**62])),
        "page_size": st.integers(0, MAX_PAGE_SIZE + 1),
        "version": st.integers(0, 12),
    }
    return {kind: plausible.get(kind, strategy) for kind, strategy in hostile.items()}, hostile


_BY_NAME = {
    "account_id": "id",
    "transfer_id": "new_id",
    "from_account_id": "id",
    "to_account_id": "id",
    "request_id": "key",
    "reference": "key",
    "currency": "currency",
    "owner": "owner",
    "page_token": "page_token",
    "amount": "amount",
    "page_size": "page_size",
    "from_version": "version",
}
_BY_TYPE = {
    FieldDescriptor.TYPE_STRING: "text",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_SINT64: "int64",
    FieldDescriptor.TYPE_SFIXED64: "int64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_SINT32: "int32",
    FieldDescriptor.TYPE_SFIXED32: "int32",
    FieldDescriptor.TYPE_ENUM: "int32",  # proto3 enums are open: any int32 is well-formed
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_FIXED64: "uint64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_FIXED32: "uint32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_BYTES: "bytes",
}


def _field(fld: FieldDescriptor, kinds: tuple[Kinds, Kinds], depth: int) -> tuple | None:
    """Plausible and hostile values for ``fld``."""
    if fld.type == FieldDescriptor.TYPE_MESSAGE:
        if depth >= 3 or fld.message_type.GetOptions().map_entry:
            return None
        nested = _message(fld.message_type, kinds, depth + 1)
        values = (nested, nested)
    else:
        kind = _BY_NAME.get(fld.name) or _BY_TYPE.get(fld.type)
        if kind is None:
            return None
        values = (kinds[0][kind], kinds[1][kind])
    return tuple(st.lists(v, max_size=4) for v in values) if fld.is_repeated else values


def _message(descriptor, kinds: tuple[Kinds, Kinds], depth: int = 0) -> st.SearchStrategy:
    """Messages of ``descriptor``, nested ones included: all plausible, one field hostile
    (so that a refusal can only be about that field), or all hostile."""
    cls = GetMessageClass(descriptor)
    plausible, hostile = {}, {}
    for fld in descriptor.fields:
        if fld.containing_oneof is None and (values := _field(fld, kinds, depth)) is not None:
            plausible[fld.name], hostile[fld.name] = values
    fields = st.one_of(
        st.fixed_dictionaries(plausible),
        st.fixed_dictionaries(hostile),
        *(
            [
                st.sampled_from(sorted(hostile)).flatmap(
                    lambda name: st.fixed_dictionaries({**plausible, name: hostile[name]})
                )
            ]
            if hostile
            else []
        ),
    )
    choices = []
    for oneof in descriptor.oneofs:
        options = [st.just({})]
        for fld in oneof.fields:
            if (values := _field(fld, kinds, depth)) is not None:
                options.append(st.fixed_dictionaries({fld.name: st.one_of(values)}))
        choices.append(st.one_of(options))

    def build(parts: tuple[dict, ...]) -> Message:
        merged: dict = {}
        for part in parts:
            merged.update(part)
        return cls(**merged)

    return st.tuples(fields, *choices).map(build)


_UNPOOLED: dict[object, st.SearchStrategy] = {}


def requests(rpc: Rpc, pool: Pool | None) -> st.SearchStrategy[Message | list[Message]]:
    """Well-formed requests of ``rpc`` (a list of them when the client streams)."""
    cache = pool._strategies if pool is not None else _UNPOOLED
    if rpc not in cache:
        one = _message(rpc.request_type.DESCRIPTOR, _strategies(pool))
        cache[rpc] = st.lists(one, min_size=1, max_size=3) if rpc.client_streaming else one
    return cache[rpc]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested(path: tuple[int, ...], payload: bytes) -> bytes:
    """``payload`` as the field at ``path`` (field numbers, outermost first)."""
    for number in reversed(path):
        payload = _length_delimited(number, payload)
    return payload


def string_paths(descriptor, depth: int = 0) -> list[tuple[tuple[int, ...], str]]:
    """Every string field, nested ones included: its path of field numbers and its name."""
    found = []
    for fld in descriptor.fields:
        if fld.type == fld.TYPE_STRING:
            found.append(((fld.number,), fld.name))
        elif fld.type == fld.TYPE_MESSAGE and depth < 3:
            for path, name in string_paths(fld.message_type, depth + 1):
                found.append(((fld.number, *path), f"{fld.name}.{name}"))
    return found


NOT_UTF8 = [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"ok\x80", b"\xf8\x88\x80\x80\x80"]


def bodies(rpc: Rpc) -> st.SearchStrategy[bytes | list[bytes]]:
    """Raw request bodies: random bytes, cut or padded messages, strings that are not UTF-8."""
    valid = _message(rpc.request_type.DESCRIPTOR, _strategies(None)).map(
        lambda m: m.SerializeToString()
    )
    paths = [path for path, _ in string_paths(rpc.request_type.DESCRIPTOR)]
    one = st.one_of(
        st.binary(max_size=512),
        st.builds(lambda b, n: b[:n], valid, st.integers(0, 200)),
        st.builds(operator.add, valid, st.binary(min_size=1, max_size=16)),
        st.builds(
            lambda b, path, bad: b + _nested(path, bad),
            valid,
            st.sampled_from(paths),
            st.sampled_from(NOT_UTF8),
        ),
        st.builds(_varint, st.integers(0, 2**64 - 1)),
    )
    if rpc.client_streaming:
        return st.lists(st.one_of(one, valid), min_size=1, max_size=3)
    return one


# ---------------------------------------------------------------------------------------
# Calls and what every answer must satisfy


@dataclass
class Answer:
    code: StatusCode
    details: str
    info: object | None
    responses: list = field(default_factory=list)


def _is_raw(request: object) -> bool:
    return isinstance(request, bytes) or (
        isinstance(request, list) and all(isinstance(r, bytes) for r in request)
    )


def call(clients: Clients, rpc: Rpc, request: object) -> Answer:
    """One call, typed or raw; a watch is asked for its first event only."""
    SENT[rpc.service] += 1
    method = clients.raw(rpc) if _is_raw(request) else clients.typed(rpc)
    try:
        if rpc.client_streaming:
            answer = method(iter(request), timeout=CALL_TIMEOUT)
            responses = list(answer) if rpc.streaming else [answer]
        elif rpc.streaming:
            stream = method(request, timeout=WATCH_TIMEOUT)
            try:
                responses = [next(stream)]
            finally:
                stream.cancel()
        else:
            responses = [method(request, timeout=CALL_TIMEOUT)]
    except grpc.RpcError as error:
        return Answer(error.code(), error.details() or "", error_info(error))
    return Answer(StatusCode.OK, "", None, responses)


def _summary(request: object) -> str:
    if isinstance(request, list):
        return "[" + ", ".join(_summary(r) for r in request) + "]"
    if isinstance(request, bytes):
        return f"{len(request)} bytes {request[:64]!r}"
    parts = []
    for fld, value in request.ListFields():
        shown = repr(value)
        if len(shown) > 120:
            shown = f"{shown[:100]}… ({len(shown)} chars)"
        parts.append(f"{fld.name}={shown}")
    return f"{type(request).__name__}({', '.join(parts)})"


def _refuses(rule: Callable[[object], object], value: object) -> bool:
    try:
        rule(value)
    except InvalidArgument:
        return True
    return False


def _canonical(value: str) -> str | None:
    try:
        return parse_id(value, "id")
    except InvalidArgument:
        return None


def _may_refuse(rpc_name: str, request: Message, name: str) -> bool:
    """Whether a refusal naming field ``name`` of ``request`` is right."""
    if name not in request.DESCRIPTOR.fields_by_name:
        return False
    value = getattr(request, name)
    if (rpc_name, name) in OPTIONAL_IDS:
        return bool(value) and _refuses(RULES[name], value)
    if name == "to_account_id" and not _refuses(RULES[name], value):
        return _canonical(value) == _canonical(request.from_account_id)
    if name in RULES:
        return _refuses(RULES[name], value)
    return True  # page_token: whether it was issued for this listing is the server's to say


def _check_info(info: object, code: StatusCode, what: str) -> None:
    assert info is not None and info.domain == DOMAIN, what
    assert info.reason in REASONS, what
    assert code != StatusCode.INVALID_ARGUMENT or "field" in info.metadata, what


def check(rpc: Rpc, request: object, answer: Answer) -> None:
    """The answer is a clear one, and a refusal names a field that is really wrong."""
    what = f"{rpc} answered {answer.code.name} ({answer.details[:200]!r}) to {_summary(request)}"
    assert answer.code not in FORBIDDEN, what
    if rpc.streaming and not rpc.client_streaming and answer.code == StatusCode.DEADLINE_EXCEEDED:
        return
    assert answer.code in CLEAR_CODES, what
    if answer.code == StatusCode.OK:
        if rpc.name == "ExecuteSteps" and not _is_raw(request):
            check_outcomes(request, answer.responses)
        return
    _check_info(answer.info, answer.code, what)
    if answer.code == StatusCode.RESOURCE_EXHAUSTED:
        assert answer.info.reason == "MESSAGE_TOO_LARGE", what
        return
    if answer.code == StatusCode.PERMISSION_DENIED:
        assert dict(answer.info.metadata) == {"check": "owner"}, what
        assert request.owner, what
        return
    if answer.code == StatusCode.ABORTED:
        assert answer.info.reason == "EPOCH_FENCED", what
        assert rpc.service == "bank.v1.ReservationService", what
    if answer.code != StatusCode.INVALID_ARGUMENT:
        return
    name = answer.info.metadata["field"]
    if _is_raw(request):
        assert name in {"request", *rpc.request_type.DESCRIPTOR.fields_by_name}, what
    else:
        assert not rpc.client_streaming and _may_refuse(rpc.name, request, name), what


_CODES = {code.value[0]: code for code in StatusCode}


def check_outcomes(requests: list[Message], responses: list[Message]) -> None:
    """ExecuteSteps: one outcome per step, each refusal as clear as a unary call's."""
    steps: dict[int, list[Message]] = {}
    for request in requests:
        for step in request.steps:
            steps.setdefault(step.step_id, []).append(step)
    outcomes = [outcome for response in responses for outcome in response.outcomes]
    assert Counter(o.step_id for o in outcomes) == Counter(
        {step_id: len(same) for step_id, same in steps.items()}
    ), f"outcomes do not match steps: {_summary(requests)}"
    for outcome in outcomes:
        if outcome.WhichOneof("result") != "error":
            continue
        error, candidates = outcome.error, steps[outcome.step_id]
        code = _CODES.get(error.code, StatusCode.UNKNOWN)
        what = f"step {outcome.step_id} answered {code.name} ({error.message!r}): {candidates}"
        # ABORTED/STEP_NOT_RUN: a step sent to run after one that did not succeed.
        clear = CLEAR_CODES - {StatusCode.OK} | {StatusCode.ABORTED}
        assert code not in FORBIDDEN and code in clear, what
        assert error.reason in REASONS, what
        if code == StatusCode.ABORTED and error.reason != "EPOCH_FENCED":
            assert error.reason == "STEP_NOT_RUN", what
            assert any(step.after_step_id for step in candidates), what
        if code == StatusCode.INVALID_ARGUMENT:
            name = error.metadata["field"]
            assert any(
                (name == "action" and step.WhichOneof("action") is None)
                # after_step_id naming no earlier step of its request (or a step that was
                # itself refused so).
                or (name == "after_step_id" and step.after_step_id != 0)
                or (
                    step.WhichOneof("action") is not None
                    and _may_refuse(
                        step.WhichOneof("action").capitalize(),
                        getattr(step, step.WhichOneof("action")),
                        name,
                    )
                )
                for step in candidates
            ), what


def _refused(rpc: Rpc, answer: Answer) -> bool:
    """Whether the call, all of it, was refused, so that it must have stored nothing."""
    if rpc.name == "ExecuteSteps" and answer.code == StatusCode.OK:
        outcomes = [o for response in answer.responses for o in response.outcomes]
        return all(
            o.WhichOneof("result") == "error" and o.error.code != StatusCode.UNAVAILABLE.value[0]
            for o in outcomes
        )
    ambiguous = {StatusCode.OK, StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED}
    return answer.code not in ambiguous


def _involved(request: object, pool: Pool) -> list[str]:
    """The real accounts a request names, however it spells their ids."""
    found: set[str] = set()

    def visit(message: Message) -> None:
        for fld, value in message.ListFields():
            values = value if fld.is_repeated else [value]
            for item in values:
                if fld.type == fld.TYPE_MESSAGE:
                    visit(item)
                elif fld.type == fld.TYPE_STRING and len(item) <= MAX_ID_LENGTH:
                    if (canonical := _canonical(item)) in pool.ids:
                        found.add(canonical)

    for message in request if isinstance(request, list) else [request]:
        visit(message)
    return sorted(found)


def _state(clients: Clients, ids: list[str], with_version: bool) -> dict[str, tuple]:
    states = {}
    for account_id in ids:
        a = clients.account(account_id)
        refs = tuple(sorted((r.reference, r.amount) for r in a.reservations))
        states[account_id] = (a.balance, a.reserved, a.status, refs) + (
            (a.version,) if with_version else ()
        )
    return states


# ---------------------------------------------------------------------------------------
# Fuzzing


@pytest.mark.parametrize("service", SERVICES)
@settings(HOSTILE, max_examples=HOSTILE_EXAMPLES)
@given(data=st.data())
def test_hostile_messages_get_clear_answers_and_refusals_store_nothing(
    clients, pool, service, data
):
    rpc = data.draw(st.sampled_from(_of(service)), label="rpc")
    request = data.draw(requests(rpc, pool), label="request")
    involved = [] if rpc.name in READS else _involved(request, pool)
    # A refused transfer may hold and release on its source, and a refused step is stored
    # (so every repeat is refused alike): versions may move; money never.
    with_version = rpc.service == "bank.v1.AccountService"
    before = _state(clients, involved, with_version)
    answer = call(clients, rpc, request)
    check(rpc, request, answer)
    if _refused(rpc, answer):
        after = _state(clients, involved, with_version)
        assert after == before or _expired_meanwhile(clients, before, after), (
            f"{rpc} refused ({answer.code.name}) but changed state: {_summary(request)}"
        )


def _expired_meanwhile(clients: Clients, before: dict[str, tuple], after: dict[str, tuple]) -> bool:
    """Whether the only change is holds of earlier examples' pending transfers released by
    their expiry, which runs on the clock and may fall between the two reads."""
    get = clients.typed(next(r for r in RPCS if r.name == "GetTransfer"))
    for account_id, old in before.items():
        new = after[account_id]
        if new == old:
            continue
        removed = set(old[3]) - set(new[3])
        if not removed or set(new[3]) - set(old[3]) or new[0] != old[0] or new[2] != old[2]:
            return False
        if new[1] != old[1] - sum(amount for _, amount in removed):
            return False
        for reference, _ in removed:
            transfer = get(tpb.GetTransferRequest(transfer_id=reference), timeout=CALL_TIMEOUT)
            if transfer.state != tpb.TRANSFER_STATE_EXPIRED:
                return False
    return True


def _decodes(rpc: Rpc, body: bytes | list[bytes]) -> bool:
    try:
        for one in body if isinstance(body, list) else [body]:
            rpc.request_type.FromString(one)
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize("service", SERVICES)
@settings(HOSTILE, max_examples=BODY_EXAMPLES)
@given(data=st.data())
def test_bodies_that_do_not_decode_are_invalid_argument(clients, service, data):
    rpc = data.draw(st.sampled_from(_of(service)), label="rpc")
    body = data.draw(bodies(rpc), label="body")
    answer = call(clients, rpc, body)
    check(rpc, body, answer)
    if answer.code == StatusCode.RESOURCE_EXHAUSTED:
        assert max(map(len, body if rpc.client_streaming else [body])) > limits.limit_of(
            f"/{rpc.service}/{rpc.name}"
        ), f"{rpc}: {answer}"
        return
    if not _decodes(rpc, body):
        assert answer.code == StatusCode.INVALID_ARGUMENT, f"{rpc}: {answer}"
        assert answer.info.metadata["field"] == "request"


STRING_FIELDS = [
    (rpc, name, path) for rpc in RPCS for path, name in string_paths(rpc.request_type.DESCRIPTOR)
]


@pytest.mark.parametrize(
    ("rpc", "name", "path"), STRING_FIELDS, ids=[f"{r}.{n}" for r, n, _ in STRING_FIELDS]
)
def test_a_string_field_that_is_not_utf8_is_invalid_argument(clients, pool, rpc, name, path):
    # Alone, and behind a real account's id, so that nothing else is wrong with the message.
    prefix = _nested((*path[:-1], 1), pool.rich.encode()) if path[-1] != 1 else b""
    for bad in NOT_UTF8:
        for body in (_nested(path, bad), prefix + _nested(path, bad)):
            answer = call(clients, rpc, [body] if rpc.client_streaming else body)
            assert answer.code == StatusCode.INVALID_ARGUMENT, f"{rpc}.{name}: {answer}"
            assert (answer.info.domain, answer.info.reason, answer.info.metadata["field"]) == (
                DOMAIN,
                "INVALID_ARGUMENT",
                "request",
            )
            assert "UTF-8" in answer.details


# ---------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize("side", ["account", "transfer"])
def test_a_message_above_the_maximum_size_is_resource_exhausted(bank, clients, pool, side):
    """Above what any method takes, grpc itself refuses it before any of our code runs, so
    it carries no ErrorInfo; above its method's limit, it is refused undecoded."""
    big = "x" * (limits.LARGEST + 1)
    over = "x" * (limits.UNARY + 1)
    if side == "account":
        rpc = next(r for r in RPCS if r.name == "OpenAccount")
        request = apb.OpenAccountRequest(owner=big, currency="EUR")
        above_method = apb.OpenAccountRequest(owner=over, currency="EUR")
        below = apb.OpenAccountRequest(owner=over[:-1024], currency="EUR")
    else:
        rpc = next(r for r in RPCS if r.name == "GetTransfer")
        request = tpb.GetTransferRequest(transfer_id=big)
        above_method = tpb.GetTransferRequest(transfer_id=over)
        below = tpb.GetTransferRequest(transfer_id=over[:-1024])
    answer = call(clients, rpc, request)
    assert answer.code == StatusCode.RESOURCE_EXHAUSTED, answer
    answer = call(clients, rpc, above_method)
    assert answer.code == StatusCode.RESOURCE_EXHAUSTED, answer
    assert answer.info is not None and answer.info.reason == "MESSAGE_TOO_LARGE"
    # Just under the method's limit it reaches the service, which names the field.
    answer = call(clients, rpc, below)
    assert answer.code == StatusCode.INVALID_ARGUMENT, answer
    assert answer.info.metadata["field"] == ("owner" if side == "account" else "transfer_id")
    assert clients.serving(rpc.service)
    assert clients.account(pool.rich).account_id == pool.rich


def _valid(rpc: Rpc, pool: Pool) -> Message:
    """A request of ``rpc`` that nothing is wrong with, on real accounts."""
    values = {
        "account_id": pool.rich,
        "transfer_id": str(uuid.uuid4()),
        "from_account_id": pool.rich,
        "to_account_id": pool.other,
        "request_id": f"limit-{uuid.uuid4()}",
        "reference": f"limit-{uuid.uuid4()}",
        "amount": 1,
        "currency": "EUR",
        "owner": "Ada",
    }
    names = rpc.request_type.DESCRIPTOR.fields_by_name
    return rpc.request_type(**{k: v for k, v in values.items() if k in names})


ID_FIELDS = [
    (rpc, name)
    for rpc in RPCS
    for name in rpc.request_type.DESCRIPTOR.fields_by_name
    if name in {"account_id", "transfer_id", "from_account_id", "to_account_id"}
]
KEY_FIELDS = [
    (rpc, name)
    for rpc in RPCS
    for name in rpc.request_type.DESCRIPTOR.fields_by_name
    if name in {"request_id", "reference"}
]


@pytest.mark.parametrize(("rpc", "name"), ID_FIELDS, ids=[f"{r}.{n}" for r, n in ID_FIELDS])
def test_an_id_longer_than_64_characters_is_invalid_argument(clients, pool, rpc, name):
    before = _state(clients, [pool.rich, pool.other], with_version=True)
    # A spelling the UUID parser would otherwise take for the real account: the cap decides.
    padded = "{" * 16 + uuid.UUID(pool.rich).hex + "}" * 17
    assert len(padded) == MAX_ID_LENGTH + 1
    for value in (padded, "7" * 4_000):  # within the method's size limit: the cap decides
        request = _valid(rpc, pool)
        setattr(request, name, value)
        answer = call(clients, rpc, request)
        assert answer.code == StatusCode.INVALID_ARGUMENT, f"{rpc}.{name}: {answer}"
        assert answer.info.metadata["field"] == name
    assert _state(clients, [pool.rich, pool.other], with_version=True) == before


@pytest.mark.parametrize(("rpc", "name"), KEY_FIELDS, ids=[f"{r}.{n}" for r, n in KEY_FIELDS])
def test_a_key_longer_than_128_characters_is_invalid_argument(clients, pool, rpc, name):
    before = _state(clients, [pool.rich], with_version=True)
    for value in ("k" * (MAX_KEY_LENGTH + 1), "k" * 4_000):
        request = _valid(rpc, pool)
        setattr(request, name, value)
        answer = call(clients, rpc, request)
        assert answer.code == StatusCode.INVALID_ARGUMENT, f"{rpc}.{name}: {answer}"
        assert answer.info.metadata["field"] == name
    assert _state(clients, [pool.rich], with_version=True) == before


def test_steps_with_too_long_ids_or_keys_are_refused_one_by_one(clients, pool):
    rpc = next(r for r in RPCS if r.name == "ExecuteSteps")
    padded = "{" * 16 + uuid.UUID(pool.rich).hex + "}" * 17
    long_key = "k" * (MAX_KEY_LENGTH + 1)
    steps = [
        apb.Step(step_id=1, reserve=apb.ReserveRequest(account_id=padded, reference="r", amount=1)),
        apb.Step(
            step_id=2,
            credit=apb.CreditRequest(
                account_id=pool.rich, reference=long_key, amount=1, currency="EUR"
            ),
        ),
        apb.Step(step_id=3, capture=apb.CaptureRequest(account_id=pool.rich, reference=long_key)),
        apb.Step(step_id=4, release=apb.ReleaseRequest(account_id="7" * 10_000, reference="r")),
        apb.Step(step_id=5),
    ]
    before = _state(clients, [pool.rich], with_version=True)
    answer = call(clients, rpc, [apb.ExecuteStepsRequest(steps=steps)])
    assert answer.code == StatusCode.OK, answer
    refused = {
        outcome.step_id: (_CODES[outcome.error.code], outcome.error.metadata["field"])
        for response in answer.responses
        for outcome in response.outcomes
    }
    invalid = StatusCode.INVALID_ARGUMENT
    assert refused == {
        1: (invalid, "account_id"),
        2: (invalid, "reference"),
        3: (invalid, "reference"),
        4: (invalid, "account_id"),
        5: (invalid, "action"),
    }
    assert _state(clients, [pool.rich], with_version=True) == before


def test_keys_of_exactly_128_characters_are_taken(bank, pool):
    account = new_account(bank, 10)
    key = "k" * MAX_KEY_LENGTH
    deposited = bank.accounts.Deposit(
        apb.DepositRequest(account_id=account.account_id, amount=1, request_id=key)
    )
    bank.reservations.Reserve(
        apb.ReserveRequest(account_id=account.account_id, reference=key, amount=2)
    )
    released = bank.reservations.Release(
        apb.ReleaseRequest(account_id=account.account_id, reference=key)
    )
    assert (deposited.balance, released.balance, released.reserved) == (11, 11, 0)


def test_an_owner_longer_than_200_characters_is_invalid_argument(bank):
    for owner in ("x" * MAX_OWNER_LENGTH, "é" * MAX_OWNER_LENGTH, "😀" * MAX_OWNER_LENGTH):
        opened = bank.accounts.OpenAccount(apb.OpenAccountRequest(owner=owner, currency="EUR"))
        assert opened.owner == owner
    for owner in ("x" * (MAX_OWNER_LENGTH + 1), "é" * 2_000):
        code, _, metadata = refusal(
            lambda owner=owner: bank.accounts.OpenAccount(
                apb.OpenAccountRequest(owner=owner, currency="EUR")
            )
        )
        assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "owner")


def test_a_page_token_longer_than_any_issued_is_invalid_argument(bank, pool):
    token = "A" * (MAX_TOKEN_LENGTH + 1)
    for call_ in (
        lambda: bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=pool.rich, page_token=token)
        ),
        lambda: bank.transfers.ListTransfers(
            tpb.ListTransfersRequest(account_id=pool.rich, page_token=token)
        ),
    ):
        code, _, metadata = refusal(call_)
        assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "page_token")


def _in_flight(calls: list[Callable[[], grpc.Future]], window: int = 100) -> None:
    for start in range(0, len(calls), window):
        futures = [make() for make in calls[start : start + window]]
        for future in futures:
            future.result(timeout=CALL_TIMEOUT)


def test_page_sizes_above_the_maximum_are_served_as_the_maximum(bank):
    account = new_account(bank)
    alice, bob = new_account(bank, 10_000), new_account(bank)
    accounts, transfers = bank.accounts, bank.transfers
    _in_flight(
        [
            lambda n=n: accounts.Deposit.future(
                apb.DepositRequest(account_id=account.account_id, amount=1, request_id=str(n))
            )
            for n in range(MAX_PAGE_SIZE + 1)
        ]
    )
    _in_flight(
        [
            lambda: transfers.CreateTransfer.future(
                tpb.CreateTransferRequest(
                    from_account_id=alice.account_id, to_account_id=bob.account_id, amount=1
                )
            )
            for _ in range(MAX_PAGE_SIZE + 1)
        ]
    )
    # 1 + 1001 events; 1001 transfers.
    for size in (MAX_PAGE_SIZE + 1, INT32_MAX):
        first = accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=account.account_id, page_size=size)
        )
        rest = accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(
                account_id=account.account_id, page_size=size, page_token=first.next_page_token
            )
        )
        assert (len(first.events), len(rest.events), rest.next_page_token) == (1000, 2, "")
        first = transfers.ListTransfers(
            tpb.ListTransfersRequest(account_id=bob.account_id, page_size=size)
        )
        rest = transfers.ListTransfers(
            tpb.ListTransfersRequest(
                account_id=bob.account_id, page_size=size, page_token=first.next_page_token
            )
        )
        assert (len(first.transfers), len(rest.transfers), rest.next_page_token) == (1000, 1, "")
    default = accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=account.account_id)
    )
    assert len(default.events) == 50 and default.next_page_token


# ---------------------------------------------------------------------------------------
# Afterwards


def test_both_services_still_serve_after_all_of_it(clients, pool, capsys):
    for service in SERVICES:
        assert clients.serving(service), service
    assert clients.account(pool.rich).account_id == pool.rich
    with capsys.disabled():
        counts = ", ".join(f"{service} {SENT[service]}" for service in SERVICES)
        print(f"\nhostile input: requests sent per service: {counts}")
