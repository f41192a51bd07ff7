"""The transfer service's side of an ExecuteSteps stream: a chain of steps is waited for as
one, answered in step order, and cut short by a refusal, its deadline or a broken stream."""

from __future__ import annotations

import asyncio
from typing import Any

from bank.v1 import account_pb2 as pb
from transfer_service.accounts_client import Chain, StepStream, StreamingAccounts, _Chain
from transfer_service.domain import AccountStep, Action, Applied, Refused, Undecided

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


def _accounts(stream: StepStream) -> StreamingAccounts:
    return StreamingAccounts({"127.0.0.1:1": stream})


def _domain_chain(reference: str) -> Chain:
    steps = [
        AccountStep(Action.RESERVE, "a", 5),
        AccountStep(Action.CREDIT, "b", 5),
        AccountStep(Action.CAPTURE, "a", 5),
    ]
    return (steps, reference, 1, "EUR")


def _answer_chain(stream: StepStream, reference: str, *outcomes: Any) -> None:
    mine = [i for i in sorted(stream._waiting) if _reference(stream, i) == reference]
    chain = stream._waiting[mine[0]]
    for step_id, outcome in zip(mine, outcomes, strict=False):
        if not chain.ended.done():
            chain.answered(step_id, outcome)


def _reference(stream: StepStream, step_id: int) -> str:
    for step in stream._sent:
        if step.step_id == step_id:
            return getattr(step, step.WhichOneof("action")).reference
    raise KeyError(step_id)


async def _waves(accounts: StreamingAccounts, chains: list[Chain], into: list) -> None:
    async for wave in accounts.run_many(chains):
        into.append(sorted(wave, key=lambda item: item[0]))


async def test_chains_run_together_are_answered_in_waves_as_their_outcomes_come() -> None:
    stream = _stream()
    stream._ordered = True
    stream._sent = []  # type: ignore[attr-defined]
    waves: list = []
    task = asyncio.create_task(_waves(_accounts(stream), [_domain_chain(r) for r in "xyz"], waves))
    await asyncio.sleep(0)
    stream._sent.extend(stream._outbox)  # type: ignore[attr-defined]
    assert len(stream._outbox) == 9  # every chain in the one message
    _answer_chain(stream, "y", ACCOUNT, ACCOUNT, ACCOUNT)
    await asyncio.sleep(0.01)
    assert waves == [[(1, [Applied("EUR")] * 3)]]
    _answer_chain(stream, "x", ACCOUNT, CLOSED)
    _answer_chain(stream, "z", ACCOUNT, ACCOUNT, ACCOUNT)
    await asyncio.wait_for(task, 5)
    assert waves[1] == [
        (0, [Applied("EUR"), Refused("ACCOUNT_CLOSED", "closed", {})]),
        (2, [Applied("EUR")] * 3),
    ]
    assert not stream._waiting


async def test_chains_run_together_past_their_deadline_are_undecided() -> None:
    stream = _stream(deadline=0.05)
    stream._ordered = True
    stream._sent = []  # type: ignore[attr-defined]
    waves: list = []
    chains = [_domain_chain(r) for r in "xy"]
    task = asyncio.create_task(_waves(_accounts(stream), chains, waves))
    await asyncio.sleep(0)
    stream._sent.extend(stream._outbox)  # type: ignore[attr-defined]
    _answer_chain(stream, "x", ACCOUNT, ACCOUNT, ACCOUNT)
    await asyncio.wait_for(task, 5)
    answered = dict(item for wave in waves for item in wave)
    assert answered[0] == [Applied("EUR")] * 3
    assert len(answered[1]) == 1 and isinstance(answered[1][0], Undecided)
    assert not stream._waiting
