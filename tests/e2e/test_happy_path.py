"""The contract's happy path, through both services as real processes."""

from __future__ import annotations

import threading
import uuid

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb

E = apb.AccountEventType


def test_open_deposit_transfer_and_read_back(bank, open_account):
    alice = open_account(10_000)
    bob = open_account()
    assert (alice.balance, alice.available, alice.status) == (
        10_000,
        10_000,
        apb.ACCOUNT_STATUS_OPEN,
    )

    transfer = bank.transfers.CreateTransfer(
        tpb.CreateTransferRequest(
            from_account_id=alice.account_id, to_account_id=bob.account_id, amount=2_500
        )
    )
    assert transfer.state == tpb.TRANSFER_STATE_COMPLETED
    assert transfer.currency == "EUR"
    assert transfer.failure_reason == ""
    uuid.UUID(transfer.transfer_id)
    assert transfer.updated_at.ToDatetime() >= transfer.created_at.ToDatetime()

    alice = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=alice.account_id))
    bob = bank.accounts.GetAccount(apb.GetAccountRequest(account_id=bob.account_id))
    assert (alice.balance, alice.reserved, alice.available) == (7_500, 0, 7_500)
    assert (bob.balance, bob.reserved, bob.available) == (2_500, 0, 2_500)
    assert list(alice.reservations) == []

    got = bank.transfers.GetTransfer(tpb.GetTransferRequest(transfer_id=transfer.transfer_id))
    assert got == transfer


def test_history_shows_every_step_with_running_balances(bank, open_account):
    alice, bob = open_account(1_000), open_account()
    transfer = bank.transfers.CreateTransfer(
        tpb.CreateTransferRequest(
            from_account_id=alice.account_id, to_account_id=bob.account_id, amount=300
        )
    )
    events = bank.accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=alice.account_id)
    ).events
    steps = [(e.version, e.type, e.amount, e.balance_after, e.reserved_after) for e in events]
    assert steps == [
        (1, E.ACCOUNT_EVENT_TYPE_OPENED, 0, 0, 0),
        (2, E.ACCOUNT_EVENT_TYPE_DEPOSITED, 1_000, 1_000, 0),
        (3, E.ACCOUNT_EVENT_TYPE_RESERVED, 300, 1_000, 300),
        (4, E.ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED, 300, 700, 0),
    ]
    assert events[2].reference == events[3].reference == transfer.transfer_id
    assert all(e.account_id == alice.account_id and e.occurred_at.seconds > 0 for e in events)
    target = bank.accounts.ListAccountEvents(
        apb.ListAccountEventsRequest(account_id=bob.account_id)
    ).events
    assert [(e.type, e.amount, e.reference, e.balance_after) for e in target[1:]] == [
        (E.ACCOUNT_EVENT_TYPE_CREDITED, 300, transfer.transfer_id, 300)
    ]


def test_history_pages_oldest_first(bank, open_account):
    account = open_account()
    for n in range(7):
        bank.accounts.Deposit(
            apb.DepositRequest(account_id=account.account_id, amount=n + 1, request_id=f"d{n}")
        )
    versions, token = [], ""
    while True:
        page = bank.accounts.ListAccountEvents(
            apb.ListAccountEventsRequest(
                account_id=account.account_id, page_size=3, page_token=token
            )
        )
        assert len(page.events) <= 3
        versions += [e.version for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert versions == list(range(1, 9))


def test_transfers_of_an_account_newest_first_in_pages(bank, open_account):
    alice, bob, carol = open_account(1_000), open_account(1_000), open_account()
    made = []
    for n, (source, target) in enumerate(
        [(alice, bob), (bob, alice), (alice, carol), (bob, carol)]
    ):
        made.append(
            bank.transfers.CreateTransfer(
                tpb.CreateTransferRequest(
                    from_account_id=source.account_id, to_account_id=target.account_id, amount=n + 1
                )
            ).transfer_id
        )
    listed, token = [], ""
    while True:
        page = bank.transfers.ListTransfers(
            tpb.ListTransfersRequest(account_id=alice.account_id, page_size=2, page_token=token)
        )
        listed += [t.transfer_id for t in page.transfers]
        token = page.next_page_token
        if not token:
            break
    assert listed == [made[2], made[1], made[0]]
    carols = bank.transfers.ListTransfers(tpb.ListTransfersRequest(account_id=carol.account_id))
    assert [t.transfer_id for t in carols.transfers] == [made[3], made[2]]
    assert carols.next_page_token == ""


def test_watch_sends_history_then_live_events(bank, open_account):
    account = open_account(100)
    call = bank.accounts.WatchAccount(
        apb.WatchAccountRequest(account_id=account.account_id, from_version=1), timeout=20
    )
    seen: list[apb.AccountEvent] = []

    def read() -> None:
        for event in call:
            seen.append(event)
            if len(seen) == 3:
                call.cancel()
                return

    reader = threading.Thread(target=read)
    reader.start()
    bank.accounts.Deposit(
        apb.DepositRequest(account_id=account.account_id, amount=5, request_id="live-1")
    )
    bank.accounts.Withdraw(
        apb.WithdrawRequest(account_id=account.account_id, amount=7, request_id="live-2")
    )
    reader.join(20)
    assert not reader.is_alive()
    assert [(e.version, e.type, e.balance_after) for e in seen] == [
        (2, E.ACCOUNT_EVENT_TYPE_DEPOSITED, 100),
        (3, E.ACCOUNT_EVENT_TYPE_DEPOSITED, 105),
        (4, E.ACCOUNT_EVENT_TYPE_WITHDRAWN, 98),
    ]


def test_close_an_emptied_account(bank, open_account):
    account = open_account(50)
    bank.accounts.Withdraw(
        apb.WithdrawRequest(account_id=account.account_id, amount=50, request_id="all")
    )
    closed = bank.accounts.CloseAccount(apb.CloseAccountRequest(account_id=account.account_id))
    assert closed.status == apb.ACCOUNT_STATUS_CLOSED
    assert closed.version == 4
