"""Opaque page tokens: a listing's name and a cursor, with an integrity tag.

A token is only good for the listing that issued it (same RPC, same account); anything
else, including a token edited by hand, is refused as ``INVALID_ARGUMENT``; so is a cursor
that is not ASCII digits within int64, even under a valid tag (the built-in key is public).
The tag keys on the key of ``--page-token-key-file`` or ``BANK_PAGE_TOKEN_KEY`` when set,
so replicas that share the key accept each other's tokens; tokens carry no secrets either
way, but only a key of one's own keeps callers from making tokens of their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from shared_kernel.errors import InvalidArgument

BUILTIN_KEY = b"bank.v1 page token"
_KEY = os.environ.get("BANK_PAGE_TOKEN_KEY", "").encode() or BUILTIN_KEY
_TAG_BYTES = 12
MAX_TOKEN_LENGTH = 512
INT64_MAX = 2**63 - 1
_DIGITS = frozenset("0123456789")


def set_key(key: bytes) -> None:
    """Tags tokens with ``key`` from now on (tokens tagged before are refused)."""
    global _KEY
    if not key:
        raise ValueError("an empty page-token key")
    _KEY = key


def uses_builtin_key() -> bool:
    """Whether tokens are tagged with the key every copy of this code knows."""
    return _KEY == BUILTIN_KEY


def _tag(payload: bytes) -> bytes:
    return hmac.new(_KEY, payload, hashlib.sha256).digest()[:_TAG_BYTES]


def encode(listing: str, cursor: int) -> str:
    payload = f"{listing}|{cursor}".encode()
    return base64.urlsafe_b64encode(_tag(payload) + payload).decode().rstrip("=")


def decode(token: str, listing: str, field: str = "page_token") -> int:
    """The cursor in ``token``; refuses tokens this listing did not issue."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument(field, "not a page token from this listing")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, UnicodeEncodeError):
        raise InvalidArgument(field, "not a page token from this listing") from None
    tag, payload = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(payload)):
        raise InvalidArgument(field, "not a page token from this listing")
    name, _, cursor = payload.decode(errors="replace").rpartition("|")
    if name != listing or not cursor or not set(cursor) <= _DIGITS or len(cursor) > 19:
        raise InvalidArgument(field, "not a page token from this listing")
    value = int(cursor)
    if value > INT64_MAX:
        raise InvalidArgument(field, "not a page token from this listing")
    return value
