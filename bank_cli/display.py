"""Text for people: money in major units, timestamps, ages, aligned tables, progress."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TextIO

from google.protobuf import timestamp_pb2

# ISO 4217 currencies whose minor unit is not the hundredth; every other code has 2 decimals.
_DECIMALS: dict[str, int] = {
    **dict.fromkeys(
        "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}


def decimals(currency: str) -> int:
    """How many digits of an amount in ``currency`` follow the decimal point."""
    return _DECIMALS.get(currency.upper(), 2)


def money(minor: int, currency: str | None) -> str:
    """``2500, "EUR"`` -> ``"25.00 EUR"``; without a currency, the minor units as they are."""
    if not currency:
        return str(minor)
    places = decimals(currency)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**places)
    body = f"{whole}.{fraction:0{places}d}" if places else str(whole)
    return f"{sign}{body} {currency}"


def timestamp(value: timestamp_pb2.Timestamp) -> str:
    """UTC, to the second; empty when the timestamp is unset."""
    if not value.seconds and not value.nanos:
        return ""
    return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(value: timestamp_pb2.Timestamp, now: datetime | None = None) -> str:
    """How long ago ``value`` was: ``42s``, ``5m 03s``, ``2h 05m``, ``3d 04h``."""
    if not value.seconds and not value.nanos:
        return ""
    now = now or datetime.now(UTC)
    seconds = max(int((now - value.ToDatetime(tzinfo=UTC)).total_seconds()), 0)
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d {hrs:02d}h"
    if hours:
        return f"{hours}h {mins:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def enum_name(full: str, prefix: str) -> str:
    """``ACCOUNT_STATUS_OPEN`` -> ``OPEN``."""
    return full[len(prefix) :] if full.startswith(prefix) else full


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    """Columns separated by two spaces, each as wide as its widest cell.

    Columns whose index is in ``right`` (amounts) are aligned to the right.
    """
    rows = [list(row) for row in rows]
    right = set(right)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def fields(pairs: Iterable[tuple[str, str]]) -> str:
    """``key  value`` lines, the values in one column."""
    pairs = list(pairs)
    width = max((len(key) for key, _ in pairs), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}".rstrip() for key, value in pairs)


class Progress:
    """A ``\\r`` counter on stderr, shown only when stderr is a terminal."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self._label = label
        self._total = total
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = _isatty(self._stream)
        self._shown = 0
        self._last = 0.0

    def update(self, count: int) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        total = f"/{self._total}" if self._total else ""
        text = f"\r{self._label} {count}{total}"
        self._shown = len(text)
        self._stream.write(text)
        self._stream.flush()

    def done(self) -> None:
        if self._enabled and self._shown:
            self._stream.write("\r" + " " * self._shown + "\r")
            self._stream.flush()
            self._shown = 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
