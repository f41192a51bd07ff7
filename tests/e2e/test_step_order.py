"""ExecuteSteps with Step.after_step_id, against a real account service: a sequence of steps
in one request runs one step at a time, each only after the one before succeeded."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import account_pb2_grpc as apb_grpc
from tests.e2e.conftest import new_account
from transfer_service.accounts_client import CHANNEL_OPTIONS, StepStream, StreamingAccounts
from transfer_service.domain import AccountStep, Action, Applied, Refused

pytestmark = pytest.mark.e2e


def _run(bank, *requests: apb.ExecuteStepsRequest) -> tuple[dict[int, apb.StepOutcome], tuple]:
    """Sends the requests on one stream; every outcome by step id, and the initial metadata."""
    call = bank.reservations.ExecuteSteps(iter(requests), timeout=30)
    outcomes = {o.step_id: o for response in call for o in response.outcomes}
    return outcomes, tuple(call.initial_metadata())


def _sequence(source: str, target: str, reference: str, amount: int) -> list[apb.Step]:
    return [
        apb.Step(
            step_id=1,
            reserve=apb.ReserveRequest(account_id=source, reference=reference, amount=amount),
        ),
        apb.Step(
            step_id=2,
            after_step_id=1,
            credit=apb.CreditRequest(account_id=target, reference=reference, amount=amount),
        ),
        apb.Step(
            step_id=3,
            after_step_id=2,
            capture=apb.CaptureRequest(account_id=source, reference=reference),
        ),
    ]


def _balances(bank, *ids: str) -> list[tuple[int, int]]:
    accounts = [bank.accounts.GetAccount(apb.GetAccountRequest(account_id=i)) for i in ids]
    return [(a.balance, a.reserved) for a in accounts]


def test_the_stream_says_it_runs_steps_in_order(bank):
    _, metadata = _run(bank, apb.ExecuteStepsRequest())
    assert ("bank-step-order", "after") in metadata


def test_a_whole_transfer_in_one_request_moves_the_money_once(bank):
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    steps = _sequence(ada, bob, str(uuid.uuid4()), 30)
    outcomes, _ = _run(bank, apb.ExecuteStepsRequest(steps=steps))
    assert [outcomes[i].WhichOneof("result") for i in (1, 2, 3)] == ["account"] * 3
    # The credit took the reserve's currency.
    assert outcomes[2].account.currency == "EUR"
    assert _balances(bank, ada, bob) == [(70, 0), (30, 0)]
    # The same request again changes nothing: the settled hold is not placed again, and
    # the steps after it do not run.
    outcomes, _ = _run(bank, apb.ExecuteStepsRequest(steps=steps))
    assert outcomes[1].error.reason == "RESERVATION_SETTLED"
    assert outcomes[1].error.metadata["outcome"] == "captured"
    assert [outcomes[i].error.reason for i in (2, 3)] == ["STEP_NOT_RUN"] * 2
    assert _balances(bank, ada, bob) == [(70, 0), (30, 0)]


def test_a_sequence_over_accounts_in_memory_is_stored_in_one_transaction(bank):
    """Both accounts were just opened through the service, so it holds them, idle: the three
    steps are decided at once and their events share one commit (one timestamp)."""
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    outcomes, _ = _run(bank, apb.ExecuteStepsRequest(steps=_sequence(ada, bob, "r-1", 30)))
    assert [outcomes[i].WhichOneof("result") for i in (1, 2, 3)] == ["account"] * 3
    assert [(outcomes[i].account.balance, outcomes[i].account.reserved) for i in (1, 2, 3)] == [
        (100, 30),
        (30, 0),
        (70, 0),
    ]
    events = [
        e
        for account_id in (ada, bob)
        for e in bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=account_id)
        ).events
        if e.reference == "r-1"
    ]
    assert sorted(apb.AccountEventType.Name(e.type) for e in events) == [
        "ACCOUNT_EVENT_TYPE_CREDITED",
        "ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED",
        "ACCOUNT_EVENT_TYPE_RESERVED",
    ]
    assert len({e.occurred_at.ToMicroseconds() for e in events}) == 1
    assert _balances(bank, ada, bob) == [(70, 0), (30, 0)]


def test_a_step_that_follows_a_step_of_its_own_id_is_run_once_after_it(bank):
    """Step ids are the client's: one may repeat an id and name it. The service must neither
    loop over such a chain nor lose a step of it."""
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    reserve, credit, _ = _sequence(ada, bob, "r-dup", 30)
    credit.step_id = 1  # follows step 1, and is step 1 itself
    call = bank.reservations.ExecuteSteps(
        iter([apb.ExecuteStepsRequest(steps=[reserve, credit])]), timeout=10
    )
    outcomes = [o for response in call for o in response.outcomes]
    assert [(o.step_id, o.WhichOneof("result")) for o in outcomes] == [(1, "account")] * 2
    assert [o.account.account_id for o in outcomes] == [ada, bob]
    assert _balances(bank, ada, bob) == [(100, 30), (30, 0)]


def test_a_refused_step_stops_the_steps_after_it(bank):
    ada, carol = new_account(bank, 100).account_id, new_account(bank).account_id
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=carol))
    outcomes, _ = _run(bank, apb.ExecuteStepsRequest(steps=_sequence(ada, carol, "r-1", 30)))
    assert outcomes[1].WhichOneof("result") == "account"
    assert outcomes[2].error.reason == "ACCOUNT_CLOSED"
    not_run = outcomes[3].error
    assert (not_run.code, not_run.reason) == (grpc.StatusCode.ABORTED.value[0], "STEP_NOT_RUN")
    assert not_run.metadata["after_step_id"] == "2"
    # The hold stays until it is released; nothing was captured.
    assert _balances(bank, ada) == [(100, 30)]
    bank.reservations.Release(apb.ReleaseRequest(account_id=ada, reference="r-1"))
    assert _balances(bank, ada) == [(100, 0)]


def test_a_step_refused_at_once_still_answers_the_steps_after_it(bank):
    bob = new_account(bank).account_id
    steps = _sequence("not-an-id", bob, "r-2", 30)
    outcomes, _ = _run(bank, apb.ExecuteStepsRequest(steps=steps))
    assert outcomes[1].error.reason == "INVALID_ARGUMENT"
    assert [outcomes[i].error.reason for i in (2, 3)] == ["STEP_NOT_RUN"] * 2
    assert _balances(bank, bob) == [(0, 0)]


@pytest.mark.parametrize("after", [7, 2])
def test_after_a_step_not_earlier_in_the_request_is_invalid(bank, after):
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    steps = _sequence(ada, bob, str(uuid.uuid4()), 30)
    steps[1].after_step_id = after  # unknown (7), or itself (2)
    outcomes, _ = _run(bank, apb.ExecuteStepsRequest(steps=steps))
    assert outcomes[1].WhichOneof("result") == "account"
    assert outcomes[2].error.reason == "INVALID_ARGUMENT"
    assert outcomes[2].error.metadata["field"] == "after_step_id"
    # Its follower follows a step that was never placed: invalid as well, never run.
    assert outcomes[3].error.reason == "INVALID_ARGUMENT"
    assert _balances(bank, ada, bob) == [(100, 30), (0, 0)]


def test_steps_of_an_earlier_request_cannot_be_followed(bank):
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    first, *rest = _sequence(ada, bob, str(uuid.uuid4()), 30)
    outcomes, _ = _run(
        bank, apb.ExecuteStepsRequest(steps=[first]), apb.ExecuteStepsRequest(steps=rest)
    )
    assert outcomes[1].WhichOneof("result") == "account"
    assert outcomes[2].error.metadata["field"] == "after_step_id"
    assert _balances(bank, ada, bob) == [(100, 30), (0, 0)]


def test_the_transfer_services_client_sends_the_three_calls_as_one_sequence(bank):
    ada, bob = new_account(bank, 100).account_id, new_account(bank).account_id
    carol = new_account(bank).account_id
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=carol))

    def transfer(source: str, target: str, amount: int) -> list[AccountStep]:
        return [
            AccountStep(Action.RESERVE, source, amount),
            AccountStep(Action.CREDIT, target, amount),
            AccountStep(Action.CAPTURE, source),
        ]

    async def scenario() -> tuple[list, list, list]:
        async with grpc.aio.insecure_channel(bank.account.address) as channel:
            stream = StepStream(channel)
            accounts = StreamingAccounts({bank.account.address: stream})
            try:
                # Until the stream has said it can, the steps go one at a time.
                first = await accounts.run(transfer(ada, bob, 10), str(uuid.uuid4()), 1)
                assert stream._ordered
                whole = await accounts.run(transfer(ada, bob, 20), str(uuid.uuid4()), 1)
                refused = await accounts.run(transfer(ada, carol, 5), "to-carol", 1)
                return first, whole, refused
            finally:
                await accounts.close()

    first, whole, refused = asyncio.run(scenario())
    assert first == [Applied("EUR")] * 3
    assert whole == [Applied("EUR")] * 3
    assert refused[0] == Applied("EUR") and len(refused) == 2
    assert isinstance(refused[1], Refused) and refused[1].reason == "ACCOUNT_CLOSED"
    assert _balances(bank, ada, bob) == [(70, 5), (30, 0)]
    bank.reservations.Release(apb.ReleaseRequest(account_id=ada, reference="to-carol"))
    assert _balances(bank, ada) == [(70, 0)]


async def test_a_step_stream_left_idle_is_not_cut_for_its_pings(bank):
    """The transfer service pings its step streams to notice a silent peer; an idle stream
    must not be answered GOAWAY "too_many_pings" (the server's default allows one ping per
    5 minutes) and broken. Pinged every 11 s here, just above what the server allows and
    twice as often as the transfer service does, so that a minute shows it."""
    ada = new_account(bank, 100).account_id
    reference = str(uuid.uuid4())
    options = [
        *CHANNEL_OPTIONS,
        ("grpc.keepalive_time_ms", 11_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with grpc.aio.insecure_channel(bank.account.address, options=options) as channel:
        call = apb_grpc.ReservationServiceStub(channel).ExecuteSteps()
        reserve = apb.ReserveRequest(account_id=ada, reference=reference, amount=30)
        await call.write(apb.ExecuteStepsRequest(steps=[apb.Step(step_id=1, reserve=reserve)]))
        first = await asyncio.wait_for(call.read(), 10)
        # Without the server's allowance the stream broke after 60 s of this.
        await asyncio.sleep(75)
        capture = apb.CaptureRequest(account_id=ada, reference=reference)
        await call.write(apb.ExecuteStepsRequest(steps=[apb.Step(step_id=2, capture=capture)]))
        second = await asyncio.wait_for(call.read(), 10)
        await call.done_writing()
    assert [o.step_id for o in first.outcomes] == [1]
    assert [(o.step_id, o.account.balance) for o in second.outcomes] == [(2, 70)]
