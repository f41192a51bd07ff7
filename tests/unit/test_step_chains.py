"""The transfer service's side of an ExecuteSteps stream: a chain of steps is waited for as
one, answered in step order, and cut short by a refusal, its deadline or a broken stream."""

from __future__ import annotations

import asyncio
from typing import Any

from bank.v1 import account_pb2 as pb
from transfer_service.accounts_client import StepStream, _Chain
from transfer_service.domain import Applied, Refused, Undecided

ACCOUNT = pb.Account(currency="EUR")
CLOSED = pb.StepError(code=9, reason="ACCOUNT_CLOSED", message="closed")


class _Channel:
    """Enough of a channel for a stub to be built; no call is ever made on it."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _chain(size: int) -> _Chain:
    chain = _Chain(asyncio.get_running_loop().create_future(), size)
    chain.ids.extend(range(1, size + 1))
    return chain


def _steps() -> list[pb.Step]:
    return [
        pb.Step(reserve=pb.ReserveRequest(account_id="a", reference="t", amount=5)),
        pb.Step(credit=pb.CreditRequest(account_id="b", reference="t", amount=5)),
        pb.Step(capture=pb.CaptureRequest(account_id="a", reference="t")),
    ]


def _stream(deadline: float = 5.0) -> StepStream:
    stream = StepStream(_Channel(), deadline=deadline)  # type: ignore[arg-type]
    # A pump that never ends: the steps stay with the stream, as if sent.
    stream._pump = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
    return stream


async def test_a_chain_ends_once_every_outcome_is_in_whatever_their_order() -> None:
    chain = _chain(3)
    chain.answered(2, ACCOUNT)
    chain.answered(3, ACCOUNT)
    assert not chain.ended.done()
    chain.answered(1, ACCOUNT)
    assert chain.ended.done()
    assert chain.outcomes == [ACCOUNT, ACCOUNT, ACCOUNT]


async def test_a_chain_ends_at_a_refusal_once_the_steps_before_it_are_answered() -> None:
    chain = _chain(3)
    chain.answered(2, CLOSED)
    assert not chain.ended.done()
    chain.answered(1, ACCOUNT)
    assert chain.ended.done()


async def test_the_answers_are_the_outcomes_up_to_the_first_refusal() -> None:
    stream = _stream()
    stream._ordered = True
    task = asyncio.create_task(stream.run(_steps()))
    await asyncio.sleep(0)
    for step_id, outcome in zip(sorted(stream._waiting), (ACCOUNT, CLOSED, ACCOUNT), strict=True):
        chain = stream._waiting.pop(step_id)
        if not chain.ended.done():
            chain.answered(step_id, outcome)
    answers = await asyncio.wait_for(task, 5)
    assert answers == [Applied("EUR"), Refused("ACCOUNT_CLOSED", "closed", {})]
    assert not stream._waiting


async def test_past_its_deadline_a_chain_answers_what_came_and_undecided_after_it() -> None:
    stream = _stream(deadline=0.05)
    stream._ordered = True
    task = asyncio.create_task(stream.run(_steps()))
    await asyncio.sleep(0)
    first = min(stream._waiting)
    stream._waiting.pop(first).answered(first, ACCOUNT)
    answers = await asyncio.wait_for(task, 5)
    assert answers[0] == Applied("EUR")
    assert len(answers) == 2 and isinstance(answers[1], Undecided)
    assert "no outcome within" in answers[1].why
    assert not stream._waiting


async def test_a_broken_stream_ends_the_chains_sent_and_keeps_those_not_sent() -> None:
    stream = _stream()
    stream._ordered = True
    sent = asyncio.create_task(stream.run(_steps()))
    await asyncio.sleep(0)
    stream._outbox.clear()  # on the wire
    unsent = asyncio.create_task(stream.run(_steps()))
    await asyncio.sleep(0)
    stream._fail_all("stream broke: UNAVAILABLE")
    (answer,) = await asyncio.wait_for(sent, 5)
    assert answer == Undecided("stream broke: UNAVAILABLE")
    assert not unsent.done() and len(stream._waiting) == 3
    unsent.cancel()
