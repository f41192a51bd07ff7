"""The stored form of transfer events: the class name as type, and a JSON-ready dict."""

from __future__ import annotations

import dataclasses
from typing import Any

from transfer_service.domain import (
    CreditRefused,
    TransferCompleted,
    TransferCredited,
    TransferEvent,
    TransferFailed,
    TransferRequested,
    TransferReserved,
)

_EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        TransferRequested,
        TransferReserved,
        TransferCredited,
        CreditRefused,
        TransferCompleted,
        TransferFailed,
    )
}

# Field types as runtime classes; the dataclasses' own annotations are strings.
_FIELD_TYPES: dict[str, dict[str, type]] = {
    name: {f.name: {"str": str, "int": int}[f.type] for f in dataclasses.fields(cls)}
    for name, cls in _EVENT_TYPES.items()
}


def encode(event: TransferEvent) -> tuple[str, dict[str, Any]]:
    name = type(event).__name__
    if _EVENT_TYPES.get(name) is not type(event):
        raise ValueError(f"not a transfer event: {event!r}")
    # Flat events of str and int fields: a plain copy (``asdict`` recurses and deep-copies).
    return name, {field: getattr(event, field) for field in _FIELD_TYPES[name]}


def decode(type_name: str, data: dict[str, Any]) -> TransferEvent:
    """The event stored as ``(type_name, data)``; ``ValueError`` if it is not a valid one."""
    cls = _EVENT_TYPES.get(type_name)
    if cls is None:
        raise ValueError(f"unknown transfer event type {type_name!r}")
    fields = _FIELD_TYPES[type_name]
    if set(data) != set(fields):
        raise ValueError(f"{type_name} needs fields {sorted(fields)}, got {sorted(data)}")
    for field, expected in fields.items():
        value = data[field]
        # bool is an int subclass, but a stored true/false is never an amount.
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ValueError(f"{type_name}.{field} must be {expected.__name__}, got {value!r}")
    return cls(**data)
