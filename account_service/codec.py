"""How account events are stored: a type name (the event's class name) and a JSON object.

``decode`` is strict about what it needs (every field without a default present, with the
right JSON type) and ignores keys it does not know, so a stored row that is damaged fails
loudly while an added field does not break older readers, and events stored before a field
with a default was added still read.
"""

from __future__ import annotations

import builtins
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from account_service.domain import EVENT_CLASSES, AccountEvent

_BY_NAME: dict[str, type] = {cls.__name__: cls for cls in EVENT_CLASSES}
_MISSING = dataclasses.MISSING


def _runtime(hint: Any) -> type:
    return typing.get_origin(hint) or hint


# Resolved once: (field name, JSON type, required) per event class, in declaration order.
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


def encode(event: AccountEvent) -> tuple[str, dict[str, Any]]:
    """The stored form of ``event``: its type name and a JSON-serialisable dict."""
    fields = _FIELDS.get(type(event))
    if fields is None:
        raise TypeError(f"not an account event: {event!r}")
    return type(event).__name__, {name: getattr(event, name) for name, _, _ in fields}


def decode(type: str, data: Mapping[str, Any]) -> AccountEvent:
    """The event stored as ``type`` with ``data``; ValueError if it is not one."""
    cls = _BY_NAME.get(type)
    if cls is None:
        raise ValueError(f"unknown account event type {type!r}")
    if not isinstance(data, Mapping):
        raise ValueError(f"{type}: data must be a JSON object")
    kwargs: dict[str, Any] = {}
    for name, expected, required in _FIELDS[cls]:
        if name not in data:
            if required:
                raise ValueError(f"{type}: missing field {name!r}")
            continue
        value = data[name]
        # Exact type: bool is an int subclass but never a valid amount.
        if builtins.type(value) is not expected:
            raise ValueError(
                f"{type}: field {name!r} must be {expected.__name__},"
                f" got {builtins.type(value).__name__}"
            )
        kwargs[name] = value
    return cls(**kwargs)
