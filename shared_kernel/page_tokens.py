"""Opaque page tokens: a listing's name and a cursor, with an integrity tag.

A token is only good for the listing that issued it (same RPC, same account); anything
else, including a token edited by hand, is refused as ``INVALID_ARGUMENT``. The tag keys
on ``BANK_PAGE_TOKEN_KEY`` when set, so replicas that share the key accept each other's
tokens; tokens carry no secrets either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from shared_kernel.errors import InvalidArgument

_KEY = os.environ.get("BANK_PAGE_TOKEN_KEY", "bank.v1 page token").encode()
_TAG_BYTES = 12
MAX_TOKEN_LENGTH = 512


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
    if name != listing or not cursor.isdigit():
        raise InvalidArgument(field, "not a page token from this listing")
    return int(cursor)
