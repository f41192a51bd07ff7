"""Log formats: lines for people (``text``) or one JSON object per line (``json``).

Every line names the service that wrote it (``account-service``, ``transfer-service``):
a text line after its level, a JSON line in ``service``. A JSON line holds ``time`` (UTC,
RFC 3339 with milliseconds), ``level``, ``service``, ``logger`` and ``message``, then
whichever of these apply: ``transfer_id`` and ``account_id`` when the
line is about one, ``trace_id`` and ``span_id`` when tracing is on and a span is current,
``exception`` (the traceback) when one is logged.

The ids come from ``IdFilter``, which reads the rendered message: a UUID right after the
word ``transfer`` or ``account`` (also ``transfer_id``/``account_id``, with ``=`` or ``:``
between) is that transfer's or account's id. The services already write their log lines
that way ("transfer 4fa2…: reserve not decided …"), so no call site needs to change, and a
UUID named by anything else (a request id, a reference) is never taken for one. A call
may also pass the ids itself, ``extra={"transfer_id": …}``, which wins.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from types import TracebackType

from grpc_common import tracing

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(service)s %(name)s: %(message)s"
ID_FIELDS = ("transfer_id", "account_id")

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_NAMED_ID = re.compile(
    rf"\b(transfer|account)(?:[ _]id)?\s*[=:]?\s*['\"]?({_UUID})(?![0-9a-fA-F-])",
    re.IGNORECASE,
)


class IdFilter(logging.Filter):
    """Sets ``record.transfer_id`` / ``record.account_id`` from the message; passes every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: the handler reports it, not this filter
            return True
        for match in _NAMED_ID.finditer(message):
            field = f"{match.group(1).lower()}_id"
            if getattr(record, field, None) is None:
                setattr(record, field, match.group(2))
        return True


class ServiceFilter(logging.Filter):
    """Sets ``record.service`` to the process's service name; passes every record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "service": getattr(record, "service", None) or "",
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ID_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = str(value)
        ids = tracing.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _rfc3339(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def configure(level: str, log_format: str = "text", service: str = "-") -> None:
    """Send the process's log to stderr at ``level``, in ``log_format`` (``text``/``json``),
    each line naming ``service``."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {FORMATS}")
    handler = logging.StreamHandler(sys.stderr)
    # On the handler, not a logger: it sees the records of every logger.
    handler.addFilter(ServiceFilter(service))
    if log_format == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
        logging.basicConfig(level=level.upper(), handlers=[handler])
        return
    handler.setFormatter(JsonFormatter())
    handler.addFilter(IdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # Warnings and uncaught exceptions too, so that every line of the log is JSON.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("uncaught").critical(
        "uncaught %s", kind.__name__, exc_info=(kind, value, traceback)
    )
