"""One ExecuteSteps call, driven against in-memory accounts: which steps run and when, how
their outcomes are batched, when a chain is stored as one sequence, and when the call ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from grpc import StatusCode

from account_service.domain import Account
from account_service.grpc_api.step_stream import StepStream
from account_service.mailboxes import Decision
from account_service.sequences import SequenceStep
from account_service.views import AccountView, view
from bank.v1 import account_pb2 as pb
from event_store import StoreUnavailable

ADA = "11111111-1111-4111-8111-111111111111"
BOB = "22222222-2222-4222-8222-222222222222"
CYD = "33333333-3333-4333-8333-333333333333"


class FakeAccounts:
    """Accounts as a step stream uses them, over in-memory aggregates.

    A command is decided and answered on a later round of the loop, or once ``held`` is
    set when the test holds answers back. A sequence is declined, stored whole, or failed
    with nothing stored, as ``sequences`` says.
    """

    def __init__(self, sequences: str = "decline") -> None:
        self.accounts: dict[str, Account] = {}
        self.submitted: list[str] = []  # the account of each command, in order
        self.offered: list[list[str]] = []  # the accounts of each sequence offered
        self.offers: list[int] = []  # sequences per submit_sequences call
        self.sequences = sequences
        self.held: asyncio.Event | None = None

    def open(self, account_id: str, balance: int = 0, currency: str = "EUR") -> None:
        account = Account.empty(account_id)
        for event in account.open("Owner", currency):
            account.apply(event)
        if balance:
            for event in account.deposit(balance, "opening"):
                account.apply(event)
        self.accounts[account_id] = account

    def submit(self, account_id: str, decision: Decision) -> asyncio.Future[AccountView]:
        self.submitted.append(account_id)
        future: asyncio.Future[AccountView] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().create_task(self._answer(account_id, decision, future))
        return future

    async def _answer(
        self, account_id: str, decision: Decision, future: asyncio.Future[AccountView]
    ) -> None:
        if self.held is not None:
            await self.held.wait()
        await asyncio.sleep(0)
        account = self.accounts.setdefault(account_id, Account.empty(account_id))
        try:
            events = decision(account)
        except Exception as exc:
            future.set_exception(exc)
            return
        for event in events:
            account.apply(event)
        future.set_result(view(account))

    def _sequence(self, steps: Sequence[SequenceStep]) -> asyncio.Future[list[AccountView]] | None:
        self.offered.append([account_id for account_id, _ in steps])
        if self.sequences == "decline":
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[AccountView]] = loop.create_future()
        if self.sequences == "fail":
            loop.call_soon(future.set_exception, StoreUnavailable("database down"))
            return future
        after: dict[str, Account] = {}
        views: list[AccountView] = []
        before: AccountView | None = None
        for account_id, decide in steps:
            account = after.setdefault(account_id, self.accounts[account_id].copy())
            for event in decide(before)(account):
                account.apply(event)
            before = view(account)
            views.append(before)
        self.accounts.update(after)
        loop.call_soon(future.set_result, views)
        return future

    def submit_sequences(
        self, sequences: Sequence[Sequence[SequenceStep]]
    ) -> list[asyncio.Future[list[AccountView]] | None]:
        self.offers.append(len(sequences))
        return [self._sequence(steps) for steps in sequences]


def reserve(
    step_id: int, account_id: str, amount: int, after: int = 0, reference: str = "t-1"
) -> pb.Step:
    request = pb.ReserveRequest(account_id=account_id, reference=reference, amount=amount)
    return pb.Step(step_id=step_id, after_step_id=after, reserve=request)


def credit(step_id: int, account_id: str, amount: int, after: int = 0) -> pb.Step:
    request = pb.CreditRequest(account_id=account_id, reference="t-1", amount=amount)
    return pb.Step(step_id=step_id, after_step_id=after, credit=request)


def capture(step_id: int, account_id: str, after: int = 0) -> pb.Step:
    request = pb.CaptureRequest(account_id=account_id, reference="t-1")
    return pb.Step(step_id=step_id, after_step_id=after, capture=request)


def transfer(first: int, source: str, target: str, amount: int) -> list[pb.Step]:
    """A transfer's forward steps as one chain: reserve, then credit, then capture."""
    return [
        reserve(first, source, amount),
        credit(first + 1, target, amount, after=first),
        capture(first + 2, source, after=first + 1),
    ]


async def requests_of(*requests: Sequence[pb.Step]) -> AsyncIterator[pb.ExecuteStepsRequest]:
    for steps in requests:
        yield pb.ExecuteStepsRequest(steps=steps)


async def answers(stream: StepStream, *requests: Sequence[pb.Step]) -> list[list[pb.StepOutcome]]:
    """The outcomes of each response of the call, until it ends."""
    return [list(response.outcomes) async for response in stream.answer(requests_of(*requests))]


def by_step(responses: list[list[pb.StepOutcome]]) -> dict[int, pb.StepOutcome]:
    outcomes = [outcome for response in responses for outcome in response]
    found = {outcome.step_id: outcome for outcome in outcomes}
    assert len(found) == len(outcomes), "a step answered twice"
    return found


def balances(accounts: FakeAccounts, *ids: str) -> list[tuple[int, int]]:
    return [(accounts.accounts[i].balance, accounts.accounts[i].reserved) for i in ids]


async def test_each_step_runs_on_its_account_and_is_answered() -> None:
    accounts = FakeAccounts()
    accounts.open(ADA, 100)
    accounts.open(BOB, 50)
    stream = StepStream(accounts)
    outcomes = by_step(await answers(stream, [reserve(1, ADA, 30), reserve(2, BOB, 20)]))
    assert sorted(accounts.submitted) == sorted([ADA, BOB])
    assert (outcomes[1].account.account_id, outcomes[1].account.reserved) == (ADA, 30)
    assert (outcomes[2].account.account_id, outcomes[2].account.reserved) == (BOB, 20)
    assert balances(accounts, ADA, BOB) == [(100, 30), (50, 20)]


async def test_a_follower_starts_only_after_the_step_it_follows_succeeded() -> None:
    accounts = FakeAccounts()
    accounts.open(ADA, 100, currency="USD")
    accounts.open(BOB, 0, currency="USD")
    accounts.held = asyncio.Event()
    stream = StepStream(accounts)
    call = asyncio.create_task(answers(stream, [reserve(1, ADA, 30), credit(2, BOB, 30, 1)]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert accounts.submitted == [ADA]  # the credit waits for the reserve's outcome
    accounts.held.set()
    outcomes = by_step(await call)
    assert accounts.submitted == [ADA, BOB]
    # The credit had no currency of its own: it took the one the reserve answered with.
    assert outcomes[2].account.currency == "USD"
    assert balances(accounts, ADA, BOB) == [(100, 30), (30, 0)]


async def test_the_followers_of_a_refused_step_are_answered_step_not_run() -> None:
    accounts = FakeAccounts()
    accounts.open(ADA, 10)
    accounts.open(BOB)
    stream = StepStream(accounts)
    outcomes = by_step(await answers(stream, transfer(1, ADA, BOB, 30)))
    assert outcomes[1].error.code == StatusCode.FAILED_PRECONDITION.value[0]
    assert outcomes[1].error.reason == "INSUFFICIENT_FUNDS"
    for step_id, after in [(2, "1"), (3, "2")]:
        assert outcomes[step_id].error.code == StatusCode.ABORTED.value[0]
        assert outcomes[step_id].error.reason == "STEP_NOT_RUN"
        assert outcomes[step_id].error.metadata["after_step_id"] == after
    assert accounts.submitted == [ADA]  # nothing of the followers ran
    assert balances(accounts, ADA, BOB) == [(10, 0), (0, 0)]


async def test_an_after_step_id_that_names_no_earlier_step_is_invalid_argument() -> None:
    accounts = FakeAccounts()
    accounts.open(ADA, 100)
    accounts.open(BOB, 100)
    stream = StepStream(accounts)
    outcomes = by_step(
        await answers(
            stream,
            [reserve(1, ADA, 10)],
            # 1 is in the request before; 4 comes later in this one; 9 is nowhere.
            [
                reserve(2, BOB, 10, after=1),
                reserve(3, BOB, 10, after=4),
                reserve(4, ADA, 5, reference="t-4"),
            ],
            [reserve(5, BOB, 10, after=9)],
        )
    )
    for step_id in (2, 3, 5):
        assert outcomes[step_id].error.code == StatusCode.INVALID_ARGUMENT.value[0]
        assert outcomes[step_id].error.reason == "INVALID_ARGUMENT"
        assert outcomes[step_id].error.metadata["field"] == "after_step_id"
    assert outcomes[1].WhichOneof("result") == outcomes[4].WhichOneof("result") == "account"
    assert accounts.submitted == [ADA, ADA]


async def test_the_outcomes_of_a_chain_travel_in_one_message() -> None:
    accounts = FakeAccounts()
    accounts.open(ADA, 100)
    accounts.open(BOB)
    accounts.open(CYD, 100)
    stream = StepStream(accounts)
    responses = await answers(stream, [*transfer(1, ADA, BOB, 30), reserve(4, CYD, 5)])
    assert [ADA, BOB, ADA] == [a for a in accounts.submitted if a != CYD]  # step by step
    chain = [response for response in responses if any(o.step_id == 1 for o in response)]
    assert [[o.step_id for o in response] for response in chain] == [[1, 2, 3]]
    assert by_step(responses)[4].account.reserved == 5
    assert balances(accounts, ADA, BOB) == [(70, 0), (30, 0)]


async def test_a_chain_over_idle_accounts_is_stored_as_one_sequence() -> None:
    accounts = FakeAccounts(sequences="accept")
    accounts.open(ADA, 100)
    accounts.open(BOB)
    stream = StepStream(accounts)
    responses = await answers(stream, transfer(1, ADA, BOB, 30))
    assert accounts.offered == [[ADA, BOB, ADA]]
    assert accounts.submitted == []
    assert [[o.step_id for o in response] for response in responses] == [[1, 2, 3]]
    outcomes = by_step(responses)
    assert (outcomes[1].account.reserved, outcomes[3].account.balance) == (30, 70)
    assert outcomes[2].account.balance == 30
    assert balances(accounts, ADA, BOB) == [(70, 0), (30, 0)]


async def test_chains_that_share_an_account_in_one_message_are_offered_together() -> None:
    accounts = FakeAccounts(sequences="accept")
    for account_id in (ADA, BOB, CYD):
        accounts.open(account_id, 100)
    stream = StepStream(accounts)
    # A transfer from ADA to BOB and a hold and credit of another on CYD and BOB: both
    # chains name BOB.
    other = [
        reserve(4, CYD, 5, reference="t-2"),
        pb.Step(
            step_id=5,
            after_step_id=4,
            credit=pb.CreditRequest(account_id=BOB, reference="t-2", amount=5),
        ),
    ]
    outcomes = by_step(await answers(stream, [*transfer(1, ADA, BOB, 30), *other]))
    assert (accounts.offers, accounts.offered) == ([2], [[ADA, BOB, ADA], [CYD, BOB]])
    assert accounts.submitted == []
    assert all(outcomes[n].WhichOneof("result") == "account" for n in range(1, 6))
    assert balances(accounts, ADA, BOB, CYD) == [(70, 0), (135, 0), (100, 5)]


async def test_a_chain_alone_on_its_accounts_is_offered_beside_others() -> None:
    accounts = FakeAccounts(sequences="accept")
    for account_id in (ADA, BOB, CYD):
        accounts.open(account_id, 100)
    stream = StepStream(accounts)
    await answers(stream, [*transfer(1, ADA, BOB, 30), reserve(4, CYD, 5)])
    assert accounts.offered == [[ADA, BOB, ADA]]  # the lone reserve is no chain


async def test_the_chains_of_one_message_are_offered_together() -> None:
    """In one call, in the order of the message; lone steps are no chains."""
    accounts = FakeAccounts(sequences="accept")
    dan, eve = "44444444-4444-4444-8444-444444444444", "55555555-5555-4555-8555-555555555555"
    for account_id in (ADA, BOB, CYD, dan):
        accounts.open(account_id, 100)
    accounts.open(eve)

    def chain(first: int, source: str, target: str, amount: int) -> list[pb.Step]:
        steps = transfer(first, source, target, amount)
        for step in steps:
            getattr(step, step.WhichOneof("action")).reference = f"t-{first}"
        return steps

    message = [*chain(1, ADA, BOB, 30), reserve(4, dan, 1), *chain(5, CYD, dan, 20)]
    outcomes = by_step(await answers(StepStream(accounts), message))
    assert (accounts.offers, accounts.offered) == ([2], [[ADA, BOB, ADA], [CYD, dan, CYD]])
    assert accounts.submitted == [dan]
    assert all(outcomes[n].WhichOneof("result") == "account" for n in range(1, 8))
    assert balances(accounts, ADA, BOB, CYD, dan) == [(70, 0), (130, 0), (80, 0), (120, 1)]


async def test_a_declined_sequence_runs_step_by_step() -> None:
    accounts = FakeAccounts(sequences="decline")
    accounts.open(ADA, 100)
    accounts.open(BOB)
    stream = StepStream(accounts)
    outcomes = by_step(await answers(stream, transfer(1, ADA, BOB, 30)))
    assert accounts.offered == [[ADA, BOB, ADA]]
    assert accounts.submitted == [ADA, BOB, ADA]
    assert [outcomes[n].WhichOneof("result") for n in (1, 2, 3)] == ["account"] * 3
    assert balances(accounts, ADA, BOB) == [(70, 0), (30, 0)]


async def test_a_sequence_whose_append_fails_runs_step_by_step() -> None:
    accounts = FakeAccounts(sequences="fail")
    accounts.open(ADA, 100)
    accounts.open(BOB)
    stream = StepStream(accounts)
    responses = await answers(stream, transfer(1, ADA, BOB, 30))
    assert accounts.offered == [[ADA, BOB, ADA]]
    assert accounts.submitted == [ADA, BOB, ADA]
    outcomes = by_step(responses)  # each step answered once, by the step-by-step run
    assert [outcomes[n].WhichOneof("result") for n in (1, 2, 3)] == ["account"] * 3
    assert balances(accounts, ADA, BOB) == [(70, 0), (30, 0)]


async def test_the_call_ends_once_reading_is_done_and_nothing_is_in_flight() -> None:
    accounts = FakeAccounts()
    accounts.open(ADA, 100)
    accounts.held = asyncio.Event()
    stream = StepStream(accounts)
    call = asyncio.create_task(answers(stream, [reserve(1, ADA, 30)]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not call.done()  # every request read, one step still in flight
    accounts.held.set()
    responses = await asyncio.wait_for(call, 5)
    assert [[o.step_id for o in response] for response in responses] == [[1]]


async def test_a_call_without_steps_ends_at_once() -> None:
    stream = StepStream(FakeAccounts())
    assert await asyncio.wait_for(answers(stream), 5) == []


async def test_stop_reading_ends_the_call_once_the_steps_read_are_answered() -> None:
    accounts = FakeAccounts()
    accounts.open(ADA, 100)
    accounts.held = asyncio.Event()
    more: asyncio.Queue[list[pb.Step]] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.ExecuteStepsRequest]:
        while True:  # the caller never says it is done
            yield pb.ExecuteStepsRequest(steps=await more.get())

    stream = StepStream(accounts)
    received: list[int] = []

    async def call() -> None:
        async for response in stream.answer(requests()):
            received.extend(o.step_id for o in response.outcomes)

    answering = asyncio.create_task(call())
    more.put_nowait([reserve(1, ADA, 30)])
    for _ in range(20):
        await asyncio.sleep(0)
    stream.stop_reading()
    more.put_nowait([reserve(2, ADA, 30)])  # sent after the stop: never read
    for _ in range(20):
        await asyncio.sleep(0)
    assert not answering.done()  # step 1 is still to be answered
    accounts.held.set()
    await asyncio.wait_for(answering, 5)
    assert received == [1]
    assert accounts.submitted == [ADA]
    assert balances(accounts, ADA) == [(100, 30)]
