"""The stored form of transfer events: the class name as type, and a JSON-ready dict.

Fields with a default may be missing from what is stored (events recorded before the field
existed); every other field must be there with its JSON type. ``CreditRefused``, the name a
refused credit was once stored under, reads as the ``TransferRefused`` it was.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from transfer_service.domain import EVENT_CLASSES, TransferEvent, TransferRefused

_EVENT_TYPES: dict[str, type] = {cls.__name__: cls for cls in EVENT_CLASSES}
_LEGACY: dict[str, type] = {"CreditRefused": TransferRefused}
_MISSING = dataclasses.MISSING


def _runtime(hint: Any) -> type:
    return typing.get_origin(hint) or hint


# (field, JSON type, required) per event type, in declaration order.
_FIELDS: dict[type, tuple[tuple[str, type, bool], ...]] = {
    cls: tuple(
        (
            f.name,
            _runtime(typing.get_type_hints(cls)[f.name]),
            f.default is _MISSING and f.default_factory is _MISSING,
        )
        for f in dataclasses.fields(cls)
    )
    for cls in EVENT_CLASSES
}


# Defaults are not stored: a simple transfer's request is stored as it always was.
_DEFAULTS: dict[type, dict[str, Any]] = {
    cls: {
        f.name: f.default if f.default_factory is _MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
        if f.default is not _MISSING or f.default_factory is not _MISSING
    }
    for cls in EVENT_CLASSES
}


def encode(event: TransferEvent) -> tuple[str, dict[str, Any]]:
    fields = _FIELDS.get(type(event))
    if fields is None:
        raise ValueError(f"not a transfer event: {event!r}")
    defaults = _DEFAULTS[type(event)]
    data = {}
    for name, _, _ in fields:
        value = getattr(event, name)
        if name not in defaults or value != defaults[name]:
            data[name] = value
    return type(event).__name__, data


def decode(type_name: str, data: dict[str, Any]) -> TransferEvent:
    """The event stored as ``(type_name, data)``; ``ValueError`` if it is not a valid one."""
    cls = _EVENT_TYPES.get(type_name) or _LEGACY.get(type_name)
    if cls is None:
        raise ValueError(f"unknown transfer event type {type_name!r}")
    if not isinstance(data, dict):
        raise ValueError(f"{type_name}: data must be a JSON object")
    fields = _FIELDS[cls]
    unknown = set(data) - {name for name, _, _ in fields}
    if unknown:
        raise ValueError(f"{type_name}: unknown fields {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, expected, required in fields:
        if name not in data:
            if required:
                raise ValueError(f"{type_name} needs field {name!r}")
            continue
        value = data[name]
        # Exact types: bool is an int subclass, but a stored true/false is never an amount.
        if type(value) is not expected:
            raise ValueError(f"{type_name}.{name} must be {expected.__name__}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)  # type: ignore[no-any-return]
