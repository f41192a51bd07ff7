"""Hypothesis strategies for the hostile-input suite: well-formed messages with hostile
field values for any RPC, and bodies that do not decode."""

from __future__ import annotations

import base64
import operator
import string
import uuid
from collections.abc import Callable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from shared_kernel.page_tokens import MAX_TOKEN_LENGTH
from shared_kernel.values import (
    MAX_KEY_LENGTH,
    MAX_OWNER_LENGTH,
    MAX_PAGE_SIZE,
)
from tests.e2e.hostile_model import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    MAX_ID_LENGTH,
    Pool,
    Rpc,
)

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
