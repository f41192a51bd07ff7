"""Validation of the values the contract defines: ids, amounts, keys, currencies, page sizes.

Each function returns the value in its canonical form or raises ``InvalidArgument`` naming
the offending field.
"""

from __future__ import annotations

import functools
import re
import uuid

from shared_kernel.errors import InvalidArgument

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
MAX_KEY_LENGTH = 128
MAX_OWNER_LENGTH = 200
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_CURRENCY = re.compile(r"[A-Z]{3}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


def new_id() -> str:
    """A fresh UUID in canonical form."""
    return str(uuid.uuid4())


def parse_id(value: str, field: str) -> str:
    """A UUID, returned in canonical lower-case form."""
    if not value:
        raise InvalidArgument(field, "required")
    # Only the canonical 8-4-4-4-12 spelling, so one id has one spelling (case aside).
    if not _UUID.fullmatch(value):
        raise InvalidArgument(field, "not a UUID (8-4-4-4-12 hexadecimal digits)")
    return value.lower()


def parse_optional_id(value: str, field: str) -> str:
    """A client-supplied UUID, or a fresh one when the field is empty."""
    return parse_id(value, field) if value else new_id()


def parse_amount(value: int, field: str = "amount") -> int:
    if value <= 0:
        raise InvalidArgument(field, "must be greater than 0")
    if value > INT64_MAX:
        raise InvalidArgument(field, "must fit in int64")
    return value


def parse_key(value: str, field: str) -> str:
    """An idempotency key (request_id or reference): 1-128 printable ASCII characters."""
    if not value:
        raise InvalidArgument(field, "required")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_KEY_LENGTH} characters")
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise InvalidArgument(field, "must be printable ASCII")
    return value


def parse_currency(value: str, field: str = "currency") -> str:
    """An ISO 4217 code of a currency with a minor unit (EUR, USD, JPY): amounts are counted
    in minor units, so codes without one (metals, units of account, XXX, XTS) are refused."""
    if not _CURRENCY.fullmatch(value):
        raise InvalidArgument(field, "must be three upper-case letters (ISO 4217)")
    exponents = _iso_exponents()
    if value not in exponents:
        raise InvalidArgument(field, f"{value} is not an ISO 4217 currency code")
    if exponents[value] is None:
        raise InvalidArgument(
            field, f"{value} has no minor unit (a metal, a unit of account, XXX or XTS)"
        )
    return value


@functools.cache
def _iso_exponents() -> dict[str, int | None]:
    """Every ISO 4217 code with the number of decimals of its minor unit (None: none)."""
    # Imported on first use: reading the ISO table costs a few tens of milliseconds.
    from iso4217 import Currency

    return {c.code: c.exponent for c in Currency}


def parse_owner(value: str, field: str = "owner") -> str:
    if not value.strip():
        raise InvalidArgument(field, "required")
    if len(value) > MAX_OWNER_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_OWNER_LENGTH} characters")
    if not value.isprintable():
        raise InvalidArgument(field, "must not contain control characters")
    return value


def parse_page_size(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)


def parse_version(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    return value
