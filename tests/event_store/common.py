"""What the conformance suites of the event store share: events to append, their summaries,
and any JSON value."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st

from event_store import NewEvent, RecordedEvent

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def ev(type_: str = "Happened", tags: tuple[str, ...] = (), **data: Any) -> NewEvent:
    return NewEvent(type_, data, tags)


def summary(events: list[RecordedEvent]) -> list[tuple[str, int, str, dict[str, Any]]]:
    return [(e.stream_id, e.version, e.type, e.data) for e in events]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


# Fresh stream ids across hypothesis examples on one store.
example_ids = itertools.count()
