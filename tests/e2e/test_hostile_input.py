"""Hostile input against both services as real processes, and the limits, one by one.

Hypothesis sends every RPC well-formed messages with hostile field values (empty, huge,
control and non-ASCII characters, int64 extremes, malformed ids and ids of real accounts,
page tokens of other listings), then bodies that do not decode at all. Whatever comes in,
a service answers a clear code (never UNKNOWN or INTERNAL), every refusal carries an
ErrorInfo of domain bank.v1 naming a field that is really wrong, a refusal stores nothing,
and the service keeps serving.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc import StatusCode
from hypothesis import given, settings
from hypothesis import strategies as st

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from grpc_common import limits
from grpc_common.errors import DOMAIN
from shared_kernel.page_tokens import MAX_TOKEN_LENGTH
from shared_kernel.values import (
    MAX_KEY_LENGTH,
    MAX_OWNER_LENGTH,
    MAX_PAGE_SIZE,
)
from tests.e2e.conftest import new_account, refusal
from tests.e2e.hostile_checks import (
    _CODES,
    _involved,
    _refused,
    _state,
    _summary,
    call,
    check,
)
from tests.e2e.hostile_model import (
    BODY_EXAMPLES,
    CALL_TIMEOUT,
    HOSTILE,
    HOSTILE_EXAMPLES,
    INT32_MAX,
    INT64_MAX,
    MAX_ID_LENGTH,
    READS,
    RPCS,
    SENT,
    SERVICES,
    Clients,
    Pool,
    Rpc,
    _of,
)
from tests.e2e.hostile_strategies import (
    NOT_UTF8,
    _nested,
    bodies,
    requests,
    string_paths,
)


@pytest.fixture(scope="module")
def pool(bank) -> Pool:
    rich, other = new_account(bank, 1_000_000), new_account(bank, 1_000_000)
    usd = new_account(bank, 5_000, currency="USD")
    empty = new_account(bank, owner="Zoë Ünïcødé")
    closed = new_account(bank)
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=closed.account_id))
    full = new_account(bank, INT64_MAX)
    accounts, transfers = bank.accounts, bank.transfers
    for n in range(3):
        accounts.Deposit(
            apb.DepositRequest(account_id=rich.account_id, amount=1, request_id=f"{n}")
        )
        transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=rich.account_id, to_account_id=other.account_id, amount=1
            )
        )
    tokens = []
    for account in (rich, other):
        for size in (1, 2):
            tokens.append(
                accounts.ListAccountEvents(
                    apb.ListAccountEventsRequest(account_id=account.account_id, page_size=size)
                ).next_page_token
            )
            tokens.append(
                transfers.ListTransfers(
                    tpb.ListTransfersRequest(account_id=account.account_id, page_size=size)
                ).next_page_token
            )
    assert all(tokens)
    ids = [a.account_id for a in (rich, other, usd, empty, closed, full)]
    return Pool(ids=ids, tokens=tokens, rich=rich.account_id, other=other.account_id)


@pytest.fixture(scope="module")
def clients(bank) -> Iterator[Clients]:
    assert bank.account is not None and bank.transfer is not None
    account_side = grpc.insecure_channel(bank.account.address)
    transfer_side = grpc.insecure_channel(bank.transfer.address)
    channels = {
        "bank.v1.AccountService": account_side,
        "bank.v1.ReservationService": account_side,
        "bank.v1.TransferService": transfer_side,
    }
    yield Clients(channels)
    account_side.close()
    transfer_side.close()


# ---------------------------------------------------------------------------------------
# Fuzzing


@pytest.mark.parametrize("service", SERVICES)
@settings(HOSTILE, max_examples=HOSTILE_EXAMPLES)
@given(data=st.data())
def test_hostile_messages_get_clear_answers_and_refusals_store_nothing(
    clients, pool, service, data
):
    rpc = data.draw(st.sampled_from(_of(service)), label="rpc")
    request = data.draw(requests(rpc, pool), label="request")
    involved = [] if rpc.name in READS else _involved(request, pool)
    # A refused transfer may hold and release on its source, and a refused step is stored
    # (so every repeat is refused alike): versions may move; money never.
    with_version = rpc.service == "bank.v1.AccountService"
    before = _state(clients, involved, with_version)
    answer = call(clients, rpc, request)
    check(rpc, request, answer)
    if _refused(rpc, answer):
        after = _state(clients, involved, with_version)
        assert after == before or _expired_meanwhile(clients, before, after), (
            f"{rpc} refused ({answer.code.name}) but changed state: {_summary(request)}"
        )


def _expired_meanwhile(clients: Clients, before: dict[str, tuple], after: dict[str, tuple]) -> bool:
    """Whether the only change is holds of earlier examples' pending transfers released by
    their expiry, which runs on the clock and may fall between the two reads."""
    get = clients.typed(next(r for r in RPCS if r.name == "GetTransfer"))
    for account_id, old in before.items():
        new = after[account_id]
        if new == old:
            continue
        removed = set(old[3]) - set(new[3])
        if not removed or set(new[3]) - set(old[3]) or new[0] != old[0] or new[2] != old[2]:
            return False
        if new[1] != old[1] - sum(amount for _, amount in removed):
            return False
        for reference, _ in removed:
            transfer = get(tpb.GetTransferRequest(transfer_id=reference), timeout=CALL_TIMEOUT)
            if transfer.state != tpb.TRANSFER_STATE_EXPIRED:
                return False
    return True


def _decodes(rpc: Rpc, body: bytes | list[bytes]) -> bool:
    try:
        for one in body if isinstance(body, list) else [body]:
            rpc.request_type.FromString(one)
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize("service", SERVICES)
@settings(HOSTILE, max_examples=BODY_EXAMPLES)
@given(data=st.data())
def test_bodies_that_do_not_decode_are_invalid_argument(clients, service, data):
    rpc = data.draw(st.sampled_from(_of(service)), label="rpc")
    body = data.draw(bodies(rpc), label="body")
    answer = call(clients, rpc, body)
    check(rpc, body, answer)
    if answer.code == StatusCode.RESOURCE_EXHAUSTED:
        assert max(map(len, body if rpc.client_streaming else [body])) > limits.limit_of(
            f"/{rpc.service}/{rpc.name}"
        ), f"{rpc}: {answer}"
        return
    if not _decodes(rpc, body):
        assert answer.code == StatusCode.INVALID_ARGUMENT, f"{rpc}: {answer}"
        assert answer.info.metadata["field"] == "request"


STRING_FIELDS = [
    (rpc, name, path) for rpc in RPCS for path, name in string_paths(rpc.request_type.DESCRIPTOR)
]


@pytest.mark.parametrize(
    ("rpc", "name", "path"), STRING_FIELDS, ids=[f"{r}.{n}" for r, n, _ in STRING_FIELDS]
)
def test_a_string_field_that_is_not_utf8_is_invalid_argument(clients, pool, rpc, name, path):
    # Alone, and behind a real account's id, so that nothing else is wrong with the message.
    prefix = _nested((*path[:-1], 1), pool.rich.encode()) if path[-1] != 1 else b""
    for bad in NOT_UTF8:
        for body in (_nested(path, bad), prefix + _nested(path, bad)):
            answer = call(clients, rpc, [body] if rpc.client_streaming else body)
            assert answer.code == StatusCode.INVALID_ARGUMENT, f"{rpc}.{name}: {answer}"
            assert (answer.info.domain, answer.info.reason, answer.info.metadata["field"]) == (
                DOMAIN,
                "INVALID_ARGUMENT",
                "request",
            )
            assert "UTF-8" in answer.details


# ---------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize("side", ["account", "transfer"])
def test_a_message_above_the_maximum_size_is_resource_exhausted(bank, clients, pool, side):
    """Above what any method takes, grpc itself refuses it before any of our code runs, so
    it carries no ErrorInfo; above its method's limit, it is refused undecoded."""
    big = "x" * (limits.LARGEST + 1)
    over = "x" * (limits.UNARY + 1)
    if side == "account":
        rpc = next(r for r in RPCS if r.name == "OpenAccount")
        request = apb.OpenAccountRequest(owner=big, currency="EUR")
        above_method = apb.OpenAccountRequest(owner=over, currency="EUR")
        below = apb.OpenAccountRequest(owner=over[:-1024], currency="EUR")
    else:
        rpc = next(r for r in RPCS if r.name == "GetTransfer")
        request = tpb.GetTransferRequest(transfer_id=big)
        above_method = tpb.GetTransferRequest(transfer_id=over)
        below = tpb.GetTransferRequest(transfer_id=over[:-1024])
    answer = call(clients, rpc, request)
    assert answer.code == StatusCode.RESOURCE_EXHAUSTED, answer
    answer = call(clients, rpc, above_method)
    assert answer.code == StatusCode.RESOURCE_EXHAUSTED, answer
    assert answer.info is not None and answer.info.reason == "MESSAGE_TOO_LARGE"
    # Just under the method's limit it reaches the service, which names the field.
    answer = call(clients, rpc, below)
    assert answer.code == StatusCode.INVALID_ARGUMENT, answer
    assert answer.info.metadata["field"] == ("owner" if side == "account" else "transfer_id")
    assert clients.serving(rpc.service)
    assert clients.account(pool.rich).account_id == pool.rich


def _valid(rpc: Rpc, pool: Pool) -> Message:
    """A request of ``rpc`` that nothing is wrong with, on real accounts."""
    values = {
        "account_id": pool.rich,
        "transfer_id": str(uuid.uuid4()),
        "from_account_id": pool.rich,
        "to_account_id": pool.other,
        "request_id": f"limit-{uuid.uuid4()}",
        "reference": f"limit-{uuid.uuid4()}",
        "amount": 1,
        "currency": "EUR",
        "owner": "Ada",
    }
    names = rpc.request_type.DESCRIPTOR.fields_by_name
    return rpc.request_type(**{k: v for k, v in values.items() if k in names})


ID_FIELDS = [
    (rpc, name)
    for rpc in RPCS
    for name in rpc.request_type.DESCRIPTOR.fields_by_name
    if name in {"account_id", "transfer_id", "from_account_id", "to_account_id"}
]
KEY_FIELDS = [
    (rpc, name)
    for rpc in RPCS
    for name in rpc.request_type.DESCRIPTOR.fields_by_name
    if name in {"request_id", "reference"}
]


@pytest.mark.parametrize(("rpc", "name"), ID_FIELDS, ids=[f"{r}.{n}" for r, n in ID_FIELDS])
def test_an_id_longer_than_64_characters_is_invalid_argument(clients, pool, rpc, name):
    before = _state(clients, [pool.rich, pool.other], with_version=True)
    # A spelling the UUID parser would otherwise take for the real account: the cap decides.
    padded = "{" * 16 + uuid.UUID(pool.rich).hex + "}" * 17
    assert len(padded) == MAX_ID_LENGTH + 1
    for value in (padded, "7" * 4_000):  # within the method's size limit: the cap decides
        request = _valid(rpc, pool)
        setattr(request, name, value)
        answer = call(clients, rpc, request)
        assert answer.code == StatusCode.INVALID_ARGUMENT, f"{rpc}.{name}: {answer}"
        assert answer.info.metadata["field"] == name
    assert _state(clients, [pool.rich, pool.other], with_version=True) == before


@pytest.mark.parametrize(("rpc", "name"), KEY_FIELDS, ids=[f"{r}.{n}" for r, n in KEY_FIELDS])
def test_a_key_longer_than_128_characters_is_invalid_argument(clients, pool, rpc, name):
    before = _state(clients, [pool.rich], with_version=True)
    for value in ("k" * (MAX_KEY_LENGTH + 1), "k" * 4_000):
        request = _valid(rpc, pool)
        setattr(request, name, value)
        answer = call(clients, rpc, request)
        assert answer.code == StatusCode.INVALID_ARGUMENT, f"{rpc}.{name}: {answer}"
        assert answer.info.metadata["field"] == name
    assert _state(clients, [pool.rich], with_version=True) == before


def test_steps_with_too_long_ids_or_keys_are_refused_one_by_one(clients, pool):
    rpc = next(r for r in RPCS if r.name == "ExecuteSteps")
    padded = "{" * 16 + uuid.UUID(pool.rich).hex + "}" * 17
    long_key = "k" * (MAX_KEY_LENGTH + 1)
    steps = [
        apb.Step(step_id=1, reserve=apb.ReserveRequest(account_id=padded, reference="r", amount=1)),
        apb.Step(
            step_id=2,
            credit=apb.CreditRequest(
                account_id=pool.rich, reference=long_key, amount=1, currency="EUR"
            ),
        ),
        apb.Step(step_id=3, capture=apb.CaptureRequest(account_id=pool.rich, reference=long_key)),
        apb.Step(step_id=4, release=apb.ReleaseRequest(account_id="7" * 10_000, reference="r")),
        apb.Step(step_id=5),
    ]
    before = _state(clients, [pool.rich], with_version=True)
    answer = call(clients, rpc, [apb.ExecuteStepsRequest(steps=steps)])
    assert answer.code == StatusCode.OK, answer
    refused = {
        outcome.step_id: (_CODES[outcome.error.code], outcome.error.metadata["field"])
        for response in answer.responses
        for outcome in response.outcomes
    }
    invalid = StatusCode.INVALID_ARGUMENT
    assert refused == {
        1: (invalid, "account_id"),
        2: (invalid, "reference"),
        3: (invalid, "reference"),
        4: (invalid, "account_id"),
        5: (invalid, "action"),
    }
    assert _state(clients, [pool.rich], with_version=True) == before


def test_keys_of_exactly_128_characters_are_taken(bank, pool):
    account = new_account(bank, 10)
    key = "k" * MAX_KEY_LENGTH
    deposited = bank.accounts.Deposit(
        apb.DepositRequest(account_id=account.account_id, amount=1, request_id=key)
    )
    bank.reservations.Reserve(
        apb.ReserveRequest(account_id=account.account_id, reference=key, amount=2)
    )
    released = bank.reservations.Release(
        apb.ReleaseRequest(account_id=account.account_id, reference=key)
    )
    assert (deposited.balance, released.balance, released.reserved) == (11, 11, 0)


def test_an_owner_longer_than_200_characters_is_invalid_argument(bank):
    for owner in ("x" * MAX_OWNER_LENGTH, "é" * MAX_OWNER_LENGTH, "😀" * MAX_OWNER_LENGTH):
        opened = bank.accounts.OpenAccount(apb.OpenAccountRequest(owner=owner, currency="EUR"))
        assert opened.owner == owner
    for owner in ("x" * (MAX_OWNER_LENGTH + 1), "é" * 2_000):
        code, _, metadata = refusal(
            lambda owner=owner: bank.accounts.OpenAccount(
                apb.OpenAccountRequest(owner=owner, currency="EUR")
            )
        )
        assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "owner")


def test_a_page_token_longer_than_any_issued_is_invalid_argument(bank, pool):
    token = "A" * (MAX_TOKEN_LENGTH + 1)
    for call_ in (
        lambda: bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=pool.rich, page_token=token)
        ),
        lambda: bank.transfers.ListTransfers(
            tpb.ListTransfersRequest(account_id=pool.rich, page_token=token)
        ),
    ):
        code, _, metadata = refusal(call_)
        assert (code, metadata["field"]) == (StatusCode.INVALID_ARGUMENT, "page_token")


def _in_flight(calls: list[Callable[[], grpc.Future]], window: int = 100) -> None:
    for start in range(0, len(calls), window):
        futures = [make() for make in calls[start : start + window]]
        for future in futures:
            future.result(timeout=CALL_TIMEOUT)


def test_page_sizes_above_the_maximum_are_served_as_the_maximum(bank):
    account = new_account(bank)
    alice, bob = new_account(bank, 10_000), new_account(bank)
    accounts, transfers = bank.accounts, bank.transfers
    _in_flight(
        [
            lambda n=n: accounts.Deposit.future(
                apb.DepositRequest(account_id=account.account_id, amount=1, request_id=str(n))
            )
            for n in range(MAX_PAGE_SIZE + 1)
        ]
    )
    _in_flight(
        [
            lambda: transfers.CreateTransfer.future(
                tpb.CreateTransferRequest(
                    from_account_id=alice.account_id, to_account_id=bob.account_id, amount=1
                )
            )
            for _ in range(MAX_PAGE_SIZE + 1)
        ]
    )
    # 1 + 1001 events; 1001 transfers.
    for size in (MAX_PAGE_SIZE + 1, INT32_MAX):
        first = accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=account.account_id, page_size=size)
        )
        rest = accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(
                account_id=account.account_id, page_size=size, page_token=first.next_page_token
            )
        )
        assert (len(first.events), len(rest.events), rest.next_page_token) == (1000, 2, "")
        first = transfers.ListTransfers(
            tpb.ListTransfersRequest(account_id=bob.account_id, page_size=size)
        )
        rest = transfers.ListTransfers(
            tpb.ListTransfersRequest(
                account_id=bob.account_id, page_size=size, page_token=first.next_page_token
            )
        )
        assert (len(first.transfers), len(rest.transfers), rest.next_page_token) == (1000, 1, "")
    default = accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=account.account_id)
    )
    assert len(default.events) == 50 and default.next_page_token


# ---------------------------------------------------------------------------------------
# Afterwards


def test_both_services_still_serve_after_all_of_it(clients, pool, capsys):
    for service in SERVICES:
        assert clients.serving(service), service
    assert clients.account(pool.rich).account_id == pool.rich
    with capsys.disabled():
        counts = ", ".join(f"{service} {SENT[service]}" for service in SERVICES)
        print(f"\nhostile input: requests sent per service: {counts}")
