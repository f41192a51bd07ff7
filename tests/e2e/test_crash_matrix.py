"""The crash matrix: the bank dies at every crash point and still ends every transfer exactly once.

For each crash point (every one of ``transfer_service.process.POINTS`` and the account
service's ``account-after-append``), and for each transfer path that crosses it — a normal
transfer, and one whose credit is refused because the target is closed, so the hold is
released — the service is armed with ``BANK_CRASH_POINT`` and a transfer is run into it.
The test then checks that the process died at that point (its exit code, and the state the
two stores hold at that instant), restarts it unarmed on the same port and database, and
checks the end state: both transfers terminal, balances moved by exactly the completed
transfer, nothing reserved, no reference applied twice, and a clean ``bank audit``.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.audit import read_events
from bank_cli.audit_checks import AuditReport, audit
from bank_cli.harness import ServiceProcess
from grpc_common.errors import error_info
from shared_kernel.crash import ACCOUNT_AFTER_APPEND, CRASH_EXIT_CODE
from tests.e2e.conftest import new_account
from tests.e2e.harness import Bank
from transfer_service import process as p

pytestmark = pytest.mark.e2e

OPENING = 1_000
NORMAL_AMOUNT, REFUSED_AMOUNT = 30, 20
OUTCOME_WITHIN = 60.0

R, C, K, L = "Reserved", "Credited", "ReservationCaptured", "ReservationReleased"


At = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class Case:
    point: str
    victim: str  # "normal" or "refused": the transfer that runs into the crash
    after: int  # BANK_CRASH_AFTER
    # Where the victim may stand when the process dies: its recorded state and the account
    # events it has caused so far. This is what pins each point to its place. Where a
    # forward record overlaps the next call, either may land first: both are listed.
    at_crash: tuple[At, ...]
    # Account points: the accounts are loaded into the armed service before the transfer,
    # so that a sequence over them can be stored whole (see Accounts.submit_sequence).
    warm: bool = False

    @property
    def service(self) -> str:
        return "account" if self.point == ACCOUNT_AFTER_APPEND else "transfer"

    @property
    def id(self) -> str:
        suffix = f"-{self.after}" if self.service == "account" else ""
        return f"{self.point}{suffix}-{self.victim}" + ("-warm" if self.warm else "")


RELEASING = "RESERVED (releasing)"
ENDED = {"COMPLETED": (R, C, K), "FAILED": ()}
# From REQUESTED, reserve, credit and capture are made back to back and recorded together
# once all are answered (or the first refused): the answers come before any record, and
# on the normal path the record that holds RESERVED and CREDITED is the final one.
CASES = [
    Case(p.AFTER_RECORD_REQUESTED, "normal", 1, (("REQUESTED", ()),)),
    Case(p.AFTER_RECORD_REQUESTED, "refused", 1, (("REQUESTED", ()),)),
    Case(p.AFTER_RESERVE_ANSWERED, "normal", 1, (("REQUESTED", (R, C, K)),)),
    Case(p.AFTER_RESERVE_ANSWERED, "refused", 1, (("REQUESTED", (R,)),)),
    Case(p.AFTER_RECORD_RESERVED, "normal", 1, (("COMPLETED", (R, C, K)),)),
    Case(p.AFTER_RECORD_RESERVED, "refused", 1, ((RELEASING, (R,)),)),
    Case(p.AFTER_CREDIT_ANSWERED, "normal", 1, (("REQUESTED", (R, C, K)),)),
    Case(p.AFTER_CREDIT_ANSWERED, "refused", 1, (("REQUESTED", (R,)),)),
    Case(p.AFTER_RECORD_CREDITED, "normal", 1, (("COMPLETED", (R, C, K)),)),
    Case(p.AFTER_RECORD_CREDIT_REFUSED, "refused", 1, ((RELEASING, (R,)),)),
    Case(p.AFTER_CAPTURE_ANSWERED, "normal", 1, (("REQUESTED", (R, C, K)),)),
    Case(p.AFTER_RELEASE_ANSWERED, "refused", 1, ((RELEASING, (R, L)),)),
    # The account service appends once per step: reserve, credit, capture (normal) or
    # reserve, release (refused, the credit stores nothing). Die after each in turn.
    Case(ACCOUNT_AFTER_APPEND, "normal", 1, (("REQUESTED", (R,)),)),
    # The answers sent before the crash are recorded once the stream breaks, maybe before
    # the stores are read.
    Case(ACCOUNT_AFTER_APPEND, "normal", 2, (("REQUESTED", (R, C)), ("RESERVED", (R, C)))),
    Case(ACCOUNT_AFTER_APPEND, "normal", 3, (("REQUESTED", (R, C, K)), ("CREDITED", (R, C, K)))),
    Case(ACCOUNT_AFTER_APPEND, "refused", 1, (("REQUESTED", (R,)),)),
    Case(ACCOUNT_AFTER_APPEND, "refused", 2, ((RELEASING, (R, L)),)),
    # With the accounts in memory, the forward sequence is one append of all three steps;
    # a refused credit makes it go step by step, as above.
    Case(ACCOUNT_AFTER_APPEND, "normal", 1, (("REQUESTED", (R, C, K)),), warm=True),
    Case(ACCOUNT_AFTER_APPEND, "refused", 1, (("REQUESTED", (R,)),), warm=True),
]


def test_every_crash_point_is_in_the_matrix():
    points = {case.point for case in CASES}
    assert points == {*p.POINTS, ACCOUNT_AFTER_APPEND}
    paths = {(case.point, case.victim) for case in CASES if case.service == "transfer"}
    # Every transfer point on every path that reaches it.
    on_normal = set(p.POINTS) - {p.AFTER_RECORD_CREDIT_REFUSED, p.AFTER_RELEASE_ANSWERED}
    on_refused = set(p.POINTS) - {p.AFTER_RECORD_CREDITED, p.AFTER_CAPTURE_ANSWERED}
    assert paths == {(x, "normal") for x in on_normal} | {(x, "refused") for x in on_refused}


# --- the matrix as measured, printed when the module ends ----------------------------------

_ROWS: list[tuple[str, ...]] = []
_HEADER = ("crash point", "service", "victim", "died", "at crash", "client saw", "recovery",
           "outcome")  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def print_matrix(pytestconfig) -> Iterator[None]:
    yield
    if not _ROWS:
        return
    rows = [_HEADER, *_ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    # Capture is module-wide here; the same switch capsys.disabled() uses lets CI logs show it.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n\ncrash matrix (" + str(len(_ROWS)) + " cases)\n" + "\n".join(lines))


# --- helpers -------------------------------------------------------------------------------


@dataclass
class Scenario:
    ada: str
    bob: str
    carol: str  # closed: refuses credits
    normal: tpb.CreateTransferRequest
    refused: tpb.CreateTransferRequest


def _set_up(bank: Bank) -> Scenario:
    ada = new_account(bank, OPENING, owner="Ada").account_id
    bob = new_account(bank, owner="Bob").account_id
    carol = new_account(bank, owner="Carol").account_id
    bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=carol))

    def request(to: str, amount: int) -> tpb.CreateTransferRequest:
        return tpb.CreateTransferRequest(
            transfer_id=str(uuid.uuid4()), from_account_id=ada, to_account_id=to, amount=amount
        )

    return Scenario(ada, bob, carol, request(bob, NORMAL_AMOUNT), request(carol, REFUSED_AMOUNT))


def _outcome(call: Callable[[], tpb.Transfer]) -> str:
    """COMPLETED, FAILED/<reason>, or raises the RpcError that decided nothing."""
    try:
        return tpb.TransferState.Name(call().state).removeprefix("TRANSFER_STATE_")
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            info = error_info(error)
            return f"FAILED/{info.reason if info else '?'}"
        raise


def _settle(bank: Bank, request: tpb.CreateTransferRequest) -> str:
    """Repeats CreateTransfer with the same transfer_id until it answers with an outcome."""
    deadline = time.monotonic() + OUTCOME_WITHIN
    while True:
        try:
            # A new channel each time: an old one may still be backing off from the crash.
            return _outcome(lambda: bank.transfers.CreateTransfer(request, timeout=30))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _arm(service: ServiceProcess, case: Case) -> None:
    service.env = {"BANK_CRASH_POINT": case.point, "BANK_CRASH_AFTER": str(case.after)}


def _stores(bank: Bank) -> AuditReport:
    return audit(read_events(bank.accounts_db), read_events(bank.transfers_db))


def _account(bank: Bank, account_id: str) -> apb.Account:
    return bank.accounts.GetAccount(apb.GetAccountRequest(account_id=account_id))


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


def _run_case(bank: Bank, case: Case) -> tuple[str, ...]:
    """Runs one case on a started bank (the transfer service armed for transfer points)."""
    s = _set_up(bank)
    target = bank.account if case.service == "account" else bank.transfer
    assert target is not None
    if case.service == "account":
        # Armed only now, so that setting up the accounts does not count towards the crash.
        assert bank.account.stop() == 0
        _arm(bank.account, case)
        bank.account.start()
        if case.warm:
            # Refused without an append (bob has nothing): it opens the transfer service's
            # step stream again, on which the forward sequence travels. Then load the rest.
            warm_up = tpb.CreateTransferRequest(
                transfer_id=str(uuid.uuid4()), from_account_id=s.bob, to_account_id=s.ada, amount=1
            )
            refused = _outcome(lambda: bank.transfers.CreateTransfer(warm_up, timeout=30))
            assert refused == "FAILED/INSUFFICIENT_FUNDS"
            for account_id in (s.ada, s.carol):
                _account(bank, account_id)
    victim, other = (s.normal, s.refused) if case.victim == "normal" else (s.refused, s.normal)

    pending = bank.transfers.CreateTransfer.future(victim, timeout=OUTCOME_WITHIN)
    assert target.wait_exit(30) == CRASH_EXIT_CODE, target.log()
    assert f"crash point {case.point!r} reached" in target.log()
    crashed_at = time.monotonic()

    # The instant of the crash, as the two stores hold it: the audit must already pass,
    # with the victim in flight exactly where the point says.
    at_crash = _stores(bank)
    assert at_crash.ok, at_crash.render()
    if at_crash.in_flight:
        [in_flight] = at_crash.in_flight
        assert in_flight.transfer_id == victim.transfer_id
        stood = (in_flight.state, in_flight.applied)
    else:
        # The victim (the only transfer stored so far) ended before the answer went out;
        # the audit has checked that its effects are exactly what that end requires.
        assert at_crash.transfers == 1
        [state] = at_crash.states
        stood = (state, ENDED[state])
    assert stood in case.at_crash

    target.env = {}
    target.start()
    if case.service == "transfer":
        # The service died under the call: nothing was answered.
        with pytest.raises(grpc.RpcError) as lost:
            pending.result()
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
        client_saw = lost.value.code().name
        first = _settle(bank, victim)
    else:
        # The transfer service rode out the outage, retrying the step.
        first = _outcome(pending.result)
        client_saw = f"waited: {first}"
    recovery = time.monotonic() - crashed_at
    second = _settle(bank, other)

    outcomes = {victim.transfer_id: first, other.transfer_id: second}
    assert outcomes[s.normal.transfer_id] == "COMPLETED"
    assert outcomes[s.refused.transfer_id] == "FAILED/ACCOUNT_CLOSED"
    for request, state in ((s.normal, "COMPLETED"), (s.refused, "FAILED")):
        stored = bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=request.transfer_id))
        assert tpb.TransferState.Name(stored.state) == f"TRANSFER_STATE_{state}"

    expected = {s.ada: OPENING - NORMAL_AMOUNT, s.bob: NORMAL_AMOUNT, s.carol: 0}
    for account_id, balance in expected.items():
        account = _account(bank, account_id)
        assert (account.balance, account.reserved, len(account.reservations)) == (balance, 0, 0)
        twice = {key: n for key, n in _event_keys(bank, account_id).items() if n > 1}
        assert not twice, f"applied more than once on {account_id}: {twice}"

    codes = bank.stop()
    assert codes == {"transfer_service": 0, "account_service": 0}, codes
    after = _stores(bank)
    assert after.ok, after.render()
    assert (after.in_flight, after.totals.reserved) == ([], 0)

    return (
        case.point
        + (f" #{case.after}" if case.service == "account" else "")
        + (" (warm)" if case.warm else ""),
        case.service,
        case.victim,
        f"exit {CRASH_EXIT_CODE}",
        f"{stood[0]} +{'+'.join(stood[1]) or 'nothing'}",
        client_saw,
        f"{recovery:.1f}s",
        f"{first} then {second}; balances ok, audit ok",
    )


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
def test_crash_point_on_postgres(crash_bank, postgres_schema_url, capsys):
    case = next(c for c in CASES if (c.point, c.victim) == (p.AFTER_CREDIT_ANSWERED, "normal"))
    bank = crash_bank(case, postgres_schema_url(), postgres_schema_url())
    row = _run_case(bank, case)
    _ROWS.append((f"{row[0]} (Postgres)", *row[1:]))
    with capsys.disabled():
        print(f"\n  {case.id} on Postgres: {row[-1]} (recovery {row[-2]})", end="")
