"""The crash matrix: the bank dies at every crash point and still ends every transfer exactly once.

For each crash point (every one of ``transfer_service.process.POINTS`` and the account
service's ``account-after-append``) and each kind of transfer whose path crosses it — a
simple transfer, one refused by its target (closed), a payment with a fee (two legs), one
whose fee leg is refused, a pending hold that is posted for less, voided, or left to
expire, and a simple transfer sent as an item of a ``CreateTransfers`` batch — the service
is armed with ``BANK_CRASH_POINT`` and the transfer is run into it.
The test checks that the process died at that point, that the two stores as they stand at
that instant already pass ``bank audit`` (the transfer in flight, or ended as its end
requires), then restarts the service unarmed on the same port and database, repeats the
client's calls until they answer, and checks the end: every transfer ended as its kind
says, balances moved by exactly what ended COMPLETED, nothing reserved or held, no
reference applied twice, and a clean audit. Beyond the matrix, the account service dies the
same way amid batches sent at once over a few accounts.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.audit import read_events
from bank_cli.audit_checks import AuditReport, audit
from grpc_common.errors import error_info
from shared_kernel.crash import ACCOUNT_AFTER_APPEND, CRASH_EXIT_CODE
from tests.e2e.conftest import new_account
from tests.e2e.harness import Bank, ServiceProcess
from transfer_service import process as p
from transfer_service.domain import Action

pytestmark = pytest.mark.e2e

OPENING = 1_000
OUTCOME_WITHIN = 60.0
HOLD, POSTED, FEE = 30, 12, 5

# What each kind of transfer ends as, and what it moves: (ada, bob, dan).
ENDS = {
    "simple": ("COMPLETED", (-HOLD, HOLD, 0)),
    "refused": ("FAILED/ACCOUNT_CLOSED", (0, 0, 0)),
    "legs": ("COMPLETED", (-HOLD - FEE, HOLD, FEE)),
    "legs-refused": ("FAILED/ACCOUNT_CLOSED", (0, 0, 0)),
    "post": ("COMPLETED", (-POSTED, POSTED, 0)),
    "void": ("VOIDED", (0, 0, 0)),
    "expire": ("EXPIRED", (0, 0, 0)),
    # A simple transfer, then its reversal: nothing moved in the end.
    "reversal": ("COMPLETED", (0, 0, 0)),
    # A simple transfer as an item of CreateTransfers: driven with the batch's others.
    "batch": ("COMPLETED", (-HOLD, HOLD, 0)),
}
PENDING = ("post", "void", "expire")
# The transfer points each kind of transfer passes.
_EVERY = {p.AFTER_RECORD_REQUESTED, p.AFTER_RESERVE_ANSWERED, p.AFTER_RECORD_RESERVED}
REACHES = {
    "simple": _EVERY | {p.AFTER_CREDIT_ANSWERED, p.AFTER_RECORD_CREDITED, p.AFTER_CAPTURE_ANSWERED},
    "refused": _EVERY | {p.AFTER_CREDIT_ANSWERED, p.AFTER_RECORD_REFUSED, p.AFTER_RELEASE_ANSWERED},
    "legs": _EVERY
    | {
        p.ANSWERED[Action.HOLD_CREDIT],
        p.AFTER_CREDIT_ANSWERED,
        p.ANSWERED[Action.CONFIRM_CREDIT],
        p.AFTER_RECORD_CREDITED,
        p.AFTER_CAPTURE_ANSWERED,
    },
    "legs-refused": _EVERY
    | {
        p.ANSWERED[Action.HOLD_CREDIT],
        p.AFTER_CREDIT_ANSWERED,
        p.AFTER_RECORD_REFUSED,
        p.ANSWERED[Action.CANCEL_CREDIT],
        p.AFTER_RELEASE_ANSWERED,
    },
    "post": _EVERY
    | {
        p.AFTER_RECORD_POST,
        p.AFTER_CREDIT_ANSWERED,
        p.AFTER_RECORD_CREDITED,
        p.AFTER_CAPTURE_ANSWERED,
    },
    "void": _EVERY | {p.AFTER_RECORD_VOID, p.AFTER_RELEASE_ANSWERED},
    "expire": _EVERY | {p.AFTER_RECORD_EXPIRY, p.AFTER_RELEASE_ANSWERED},
    # The reversal's own crossings (its request is recorded with what it sets aside).
    "reversal": {
        p.AFTER_RECORD_REVERSAL,
        p.AFTER_RESERVE_ANSWERED,
        p.AFTER_CREDIT_ANSWERED,
        p.AFTER_RECORD_CREDITED,
        p.AFTER_CAPTURE_ANSWERED,
    },
}
REACHES["batch"] = REACHES["simple"]
# Points a reversal shares with its original: the reversal crosses them the second time.
_SECOND_TIME = {"reversal": _EVERY | REACHES["simple"]}
# The account service's appends on each kind's way (accounts not in memory, so a chain goes
# step by step; a refusal is an append of its own; an undo over accounts now in memory is
# one append): a crash after each in turn.
ACCOUNT_APPENDS = {"simple": 3, "refused": 3, "legs": 5, "legs-refused": 4, "post": 3, "void": 2}
# The reversal's accounts are in memory by then: its three steps are one append, the 4th.
ACCOUNT_APPENDS_FROM = {"reversal": (4, 4)}


@dataclass(frozen=True)
class Case:
    point: str
    kind: str
    after: int = 1  # BANK_CRASH_AFTER

    @property
    def service(self) -> str:
        return "account" if self.point == ACCOUNT_AFTER_APPEND else "transfer"

    @property
    def id(self) -> str:
        suffix = f"-{self.after}" if self.service == "account" or self.after > 1 else ""
        return f"{self.point}{suffix}-{self.kind}"


CASES = [
    *(
        Case(point, kind, 2 if point in _SECOND_TIME.get(kind, ()) else 1)
        for kind, points in REACHES.items()
        for point in sorted(points)
    ),
    *(
        Case(ACCOUNT_AFTER_APPEND, kind, n)
        for kind, appends in ACCOUNT_APPENDS.items()
        for n in range(1, appends + 1)
    ),
    *(
        Case(ACCOUNT_AFTER_APPEND, kind, n)
        for kind, (first, last) in ACCOUNT_APPENDS_FROM.items()
        for n in range(first, last + 1)
    ),
]


def test_every_crash_point_is_in_the_matrix():
    assert {case.point for case in CASES} == {*p.POINTS, ACCOUNT_AFTER_APPEND}
    every_path = {(point, kind) for kind, points in REACHES.items() for point in points}
    assert {(c.point, c.kind) for c in CASES if c.service == "transfer"} == every_path
    # The reversal crosses the points it shares with its original the second time.
    assert all(
        c.after == 2
        for c in CASES
        if c.kind == "reversal" and c.point != p.AFTER_RECORD_REVERSAL and c.service == "transfer"
    )


# --- the matrix as measured, printed when the module ends ----------------------------------

_ROWS: list[tuple[str, ...]] = []
_HEADER = ("crash point", "service", "transfer", "died", "at crash", "client saw", "recovery",
           "outcome")  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def print_matrix(pytestconfig) -> Iterator[None]:
    yield
    if not _ROWS:
        return
    rows = [_HEADER, *_ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n\ncrash matrix (" + str(len(_ROWS)) + " cases)\n" + "\n".join(lines))


# --- a transfer of each kind, as a client drives it -----------------------------------------


@dataclass
class Accounts:
    ada: str
    bob: str
    dan: str
    carol: str  # closed: refuses credits


def _set_up(bank: Bank) -> Accounts:
    ada = new_account(bank, OPENING, owner="Ada").account_id
    bob = new_account(bank, owner="Bob").account_id
    dan = new_account(bank, owner="Dan").account_id
    carol = new_account(bank, owner="Carol").account_id
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=carol))
    return Accounts(ada, bob, dan, carol)


def _request(kind: str, a: Accounts) -> tpb.CreateTransferRequest:
    request = tpb.CreateTransferRequest(transfer_id=str(uuid.uuid4()))
    if kind in ("legs", "legs-refused"):
        fee_to = a.dan if kind == "legs" else a.carol
        request.legs.extend(
            [
                tpb.Leg(from_account_id=a.ada, to_account_id=a.bob, amount=HOLD),
                tpb.Leg(from_account_id=a.ada, to_account_id=fee_to, amount=FEE),
            ]
        )
        return request
    request.from_account_id = a.ada
    request.to_account_id = a.carol if kind == "refused" else a.bob
    request.amount = HOLD
    if kind in PENDING:
        request.pending = True
        if kind == "expire":
            request.expires_after.CopyFrom(Duration(seconds=1))
    return request


def _one_of_a_batch(transfers, request: tpb.CreateTransferRequest) -> tpb.Transfer:
    """``request`` as the one item of a ``CreateTransfers`` call; its transfer, or the item's
    status raised as the call's would be."""
    batch = tpb.CreateTransfersRequest(transfers=[request])
    (result,) = transfers.CreateTransfers(batch, timeout=30).results
    if not result.HasField("transfer"):
        raise _ItemError(result.error)
    return result.transfer


class _ItemError(grpc.RpcError):
    def __init__(self, status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return next(c for c in grpc.StatusCode if c.value[0] == self._status.code)

    def details(self) -> str:
        return self._status.message


def _answer(call: Callable[[], tpb.Transfer]) -> str:
    """The state the call answered with (FAILED/<reason> for a refusal), or raises the
    RpcError that decided nothing."""
    try:
        return tpb.TransferState.Name(call().state).removeprefix("TRANSFER_STATE_")
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            info = error_info(error)
            return f"FAILED/{info.reason if info else '?'}"
        raise


def _until_answered(call: Callable[[], tpb.Transfer]) -> str:
    """Repeats a call until it answers with a state (over a restart, say)."""
    deadline = time.monotonic() + OUTCOME_WITHIN
    while True:
        try:
            return _answer(call)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _drive(bank: Bank, kind: str, request: tpb.CreateTransferRequest) -> str:
    """Everything the client does for a transfer of ``kind``, each call repeated until it
    answers; the end state."""
    stub = lambda: bank.transfers  # noqa: E731 - a fresh channel for each attempt
    if kind == "batch":
        return _until_answered(lambda: _one_of_a_batch(stub(), request))
    created = _until_answered(lambda: stub().CreateTransfer(request, timeout=30))
    transfer_id = request.transfer_id
    if kind == "post":
        post = tpb.PostTransferRequest(transfer_id=transfer_id, amount=POSTED)
        return _until_answered(lambda: stub().PostTransfer(post, timeout=30))
    if kind == "void":
        void = tpb.VoidTransferRequest(transfer_id=transfer_id)
        return _until_answered(lambda: stub().VoidTransfer(void, timeout=30))
    if kind == "reversal":
        back = tpb.ReverseTransferRequest(
            transfer_id=transfer_id, reversal_id=_reversal_id(request)
        )
        return _until_answered(lambda: stub().ReverseTransfer(back, timeout=30))
    if kind == "expire":
        get = tpb.GetTransferRequest(transfer_id=transfer_id)
        deadline = time.monotonic() + OUTCOME_WITHIN
        while (state := _until_answered(lambda: stub().GetTransfer(get, timeout=30))) != "EXPIRED":
            assert time.monotonic() < deadline, f"still {state}"
            time.sleep(0.1)
        return state
    return created


def _reversal_id(request: tpb.CreateTransferRequest) -> str:
    """The reversal's id, fixed for a transfer so that the client's repeats are repeats."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, request.transfer_id))


def _arm(service: ServiceProcess, case: Case) -> None:
    service.env = {"BANK_CRASH_POINT": case.point, "BANK_CRASH_AFTER": str(case.after)}


def _stores(bank: Bank) -> AuditReport:
    return audit(read_events(bank.accounts_db), read_events(bank.transfers_db))


def _event_keys(bank: Bank, account_id: str) -> Counter[tuple[str, str]]:
    keys: Counter[tuple[str, str]] = Counter()
    token = ""
    while True:
        page = bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(account_id=account_id, page_size=1000, page_token=token)
        )
        keys.update((apb.AccountEventType.Name(e.type), e.reference) for e in page.events)
        token = page.next_page_token
        if not token:
            return keys


def _check_accounts(bank: Bank, balances: dict[str, int]) -> None:
    """Each account holds exactly its balance, nothing reserved or held, no reference
    applied twice."""
    for account_id, balance in balances.items():
        account = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account_id))
        assert (account.balance, account.reserved, account.pending_credits) == (balance, 0, 0)
        assert not account.reservations
        twice = {key: n for key, n in _event_keys(bank, account_id).items() if n > 1}
        assert not twice, f"applied more than once on {account_id}: {twice}"


def _stop_and_audit(bank: Bank) -> None:
    """Both services stop cleanly, and what they leave passes the audit, nothing in flight."""
    codes = bank.stop()
    assert codes == {"transfer_service": 0, "account_service": 0}, codes
    final = _stores(bank)
    assert final.ok, final.render()
    assert (final.in_flight, final.totals.reserved) == ([], 0)


def _run_case(bank: Bank, case: Case) -> tuple[str, ...]:
    """Runs one case on a started bank (the transfer service armed for transfer points)."""
    accounts = _set_up(bank)
    target = bank.account if case.service == "account" else bank.transfer
    assert target is not None
    if case.service == "account":
        # Armed only now, so that setting up the accounts does not count towards the crash.
        assert bank.account.stop() == 0
        _arm(bank.account, case)
        bank.account.start()
    victim = _request(case.kind, accounts)
    with_crash = bank.transfers  # opened before the crash: it sees the service die
    pool = ThreadPoolExecutor(1)
    driving = pool.submit(_first_call, with_crash, case.kind, victim)
    assert target.wait_exit(OUTCOME_WITHIN) == CRASH_EXIT_CODE, target.log()
    assert f"crash point {case.point!r} reached" in target.log()
    crashed_at = time.monotonic()

    # The instant of the crash, as the two stores hold it: the audit must already pass.
    at_crash = _stores(bank)
    assert at_crash.ok, at_crash.render()
    stood = (
        f"{at_crash.in_flight[0].state} +{'+'.join(at_crash.in_flight[0].applied) or 'nothing'}"
        if at_crash.in_flight
        else ", ".join(sorted(at_crash.states)) or "nothing recorded"
    )

    target.env = {}
    target.start()
    client_saw = driving.result(OUTCOME_WITHIN)
    pool.shutdown()
    ended = _drive(bank, case.kind, victim)
    recovery = time.monotonic() - crashed_at
    other = _request("simple", accounts)
    other.amount = 1
    after = _drive(bank, "simple", other)

    expected_end, moved = ENDS[case.kind]
    assert (ended, after) == (expected_end, "COMPLETED")
    ada, bob, dan = (OPENING + moved[0] - 1, moved[1] + 1, moved[2])
    _check_accounts(bank, {accounts.ada: ada, accounts.bob: bob, accounts.dan: dan})
    _stop_and_audit(bank)
    return (
        case.point + (f" #{case.after}" if case.service == "account" else ""),
        case.service,
        case.kind,
        f"exit {CRASH_EXIT_CODE}",
        stood,
        client_saw,
        f"{recovery:.1f}s",
        f"{ended}; balances ok, audit ok",
    )


def _first_call(transfers, kind: str, request: tpb.CreateTransferRequest) -> str:
    """The client's calls up to the crash: what the first that did not answer saw."""
    try:
        if kind == "batch":
            return f"answered: {_answer(lambda: _one_of_a_batch(transfers, request))}"
        state = _answer(lambda: transfers.CreateTransfer(request, timeout=OUTCOME_WITHIN))
        transfer_id = request.transfer_id
        if kind == "post":
            post = tpb.PostTransferRequest(transfer_id=transfer_id, amount=POSTED)
            state = _answer(lambda: transfers.PostTransfer(post, timeout=OUTCOME_WITHIN))
        elif kind == "void":
            void = tpb.VoidTransferRequest(transfer_id=transfer_id)
            state = _answer(lambda: transfers.VoidTransfer(void, timeout=OUTCOME_WITHIN))
        elif kind == "reversal":
            back = tpb.ReverseTransferRequest(
                transfer_id=transfer_id, reversal_id=_reversal_id(request)
            )
            state = _answer(lambda: transfers.ReverseTransfer(back, timeout=OUTCOME_WITHIN))
        return f"answered: {state}"
    except grpc.RpcError as error:
        return error.code().name


# --- the matrix ----------------------------------------------------------------------------


@pytest.fixture
def crash_bank(tmp_path) -> Iterator[Callable[[Case, str, str], Bank]]:
    banks: list[Bank] = []

    def start(case: Case, accounts_db: str, transfers_db: str) -> Bank:
        bank = Bank(accounts_db, transfers_db, tmp_path)
        if case.service == "transfer":
            bank.transfer_env = {
                "BANK_CRASH_POINT": case.point,
                "BANK_CRASH_AFTER": str(case.after),
            }
        banks.append(bank)
        return bank.start()

    yield start
    for bank in banks:
        for service in (bank.transfer, bank.account):
            if service is not None and service.process is not None:
                service.kill()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_crash_point(case, crash_bank, tmp_path, capsys):
    bank = crash_bank(
        case, f"sqlite:///{tmp_path}/accounts.db", f"sqlite:///{tmp_path}/transfers.db"
    )
    row = _run_case(bank, case)
    _ROWS.append(row)
    with capsys.disabled():
        print(f"\n  {case.id}: {row[-1]} (recovery {row[-2]})", end="")


@pytest.mark.postgres
@pytest.mark.parametrize(
    "case",
    [Case(p.AFTER_CREDIT_ANSWERED, "simple"), Case(p.AFTER_RECORD_POST, "post")],
    ids=lambda case: case.id,
)
def test_crash_point_on_postgres(case, crash_bank, postgres_schema_url, capsys):
    bank = crash_bank(case, postgres_schema_url(), postgres_schema_url())
    row = _run_case(bank, case)
    _ROWS.append((f"{row[0]} (Postgres)", *row[1:]))
    with capsys.disabled():
        print(f"\n  {case.id} on Postgres: {row[-1]} (recovery {row[-2]})", end="")


# --- batches at once over a few accounts ------------------------------------------------------


def _until_batch_ended(bank: Bank, batch: tpb.CreateTransfersRequest) -> dict[str, str]:
    """Repeats the batch until every item answers with an end state; each item's state."""
    deadline = time.monotonic() + OUTCOME_WITHIN
    while True:
        try:
            results = bank.transfers.CreateTransfers(batch, timeout=30).results
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        states = {
            item.transfer_id: tpb.TransferState.Name(result.transfer.state)
            if result.HasField("transfer")
            else f"error {result.error.code}"
            for item, result in zip(batch.transfers, results, strict=True)
        }
        if all(
            state in ("TRANSFER_STATE_COMPLETED", "TRANSFER_STATE_FAILED")
            for state in states.values()
        ):
            return states
        assert time.monotonic() < deadline, states
        time.sleep(0.1)


def test_a_crash_amid_batches_sent_at_once_over_a_few_accounts(tmp_path):
    """Six batches of twenty at once over six accounts: their chains meet on every account,
    each taking whichever path it finds (its message's one append, one that follows the
    append before it, or step by step). The account service dies after its third append,
    with more decided and waiting; restarted, every transfer ends once, balances moved by
    exactly what completed, nothing held, no reference applied twice, a clean audit."""
    bank = Bank(
        f"sqlite:///{tmp_path}/accounts.db", f"sqlite:///{tmp_path}/transfers.db", tmp_path
    ).start()
    try:
        opening = 10_000
        ids = [new_account(bank, opening).account_id for _ in range(6)]
        assert bank.account.stop() == 0
        bank.account.env = {"BANK_CRASH_POINT": ACCOUNT_AFTER_APPEND, "BANK_CRASH_AFTER": "3"}
        bank.account.start()
        for account_id in ids:  # in the service's memory, where sequences are decided
            bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account_id))
        rng = random.Random(7)
        batches = [
            tpb.CreateTransfersRequest(
                transfers=[
                    tpb.CreateTransferRequest(
                        transfer_id=str(uuid.uuid4()),
                        from_account_id=source,
                        to_account_id=target,
                        amount=rng.randint(1, 9),
                    )
                    for source, target in (rng.sample(ids, 2) for _ in range(20))
                ]
            )
            for _ in range(6)
        ]
        with_crash = bank.transfers
        with ThreadPoolExecutor(len(batches)) as pool:
            calls = [pool.submit(with_crash.CreateTransfers, b, timeout=30) for b in batches]
            assert bank.account.wait_exit(OUTCOME_WITHIN) == CRASH_EXIT_CODE, bank.account.log()
            at_crash = _stores(bank)
            assert at_crash.ok, at_crash.render()
            bank.account.env = {}
            bank.account.start()
            for call in calls:
                call.exception(OUTCOME_WITHIN)  # answered or not, over before the repeats
        states: dict[str, str] = {}
        for batch in batches:
            states.update(_until_batch_ended(bank, batch))
        assert set(states.values()) == {"TRANSFER_STATE_COMPLETED"}
        expected = dict.fromkeys(ids, opening)
        for batch in batches:
            for item in batch.transfers:
                expected[item.from_account_id] -= item.amount
                expected[item.to_account_id] += item.amount
        _check_accounts(bank, expected)
        _stop_and_audit(bank)
    finally:
        for service in (bank.transfer, bank.account):
            if service is not None and service.process is not None:
                service.kill()
