"""The writer's connection kept between appends (``KeptConnection``), with stand-ins for
pooled connections."""

from __future__ import annotations

import threading

from event_store.kept import KeptConnection


class Pooled:
    """A pooled connection as far as ``KeptConnection`` uses one: it can be closed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_connection_given_back_on_a_turn_is_taken_on_the_next() -> None:
    kept = KeptConnection()
    pooled = Pooled()
    with kept.turn() as mine:
        assert mine and kept.take() is None
        kept.give_back(pooled, mine)
    assert kept.connection is pooled and not pooled.closed
    with kept.turn() as mine:
        assert mine and kept.take() is pooled
        assert kept.connection is None


def test_while_one_thread_has_its_turn_another_gets_none_and_returns_its_own() -> None:
    kept = KeptConnection()
    first, other = Pooled(), Pooled()
    turns: list[bool] = []

    def append_meanwhile() -> None:
        with kept.turn() as theirs:
            turns.append(theirs)
            kept.give_back(other, theirs)

    with kept.turn() as mine:
        kept.give_back(first, mine)
        thread = threading.Thread(target=append_meanwhile)
        thread.start()
        thread.join()
    assert turns == [False]
    assert other.closed  # back to the pool
    assert kept.connection is first and not first.closed


def test_closing_returns_the_kept_connection_and_keeps_none_after() -> None:
    kept = KeptConnection()
    first, later = Pooled(), Pooled()
    with kept.turn() as mine:
        kept.give_back(first, mine)
    kept.close()
    assert first.closed and kept.connection is None
    with kept.turn() as mine:
        assert mine
        kept.give_back(later, mine)
    assert later.closed and kept.connection is None
