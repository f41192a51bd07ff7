"""``bank hold|post|void|reverse`` and ``bank transfer`` with legs, holds and batch files,
against both services as real processes (``bank_cli`` runs the command in this process)."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from tests.e2e.test_cli import _field, _open

pytestmark = pytest.mark.e2e


def _balance(bank_cli, account: str) -> tuple[str, str]:
    shown = bank_cli("show", account)
    assert shown.status == 0, shown.err
    return _field(shown.out, "balance"), _field(shown.out, "reserved")


# --------------------------------------------------------------------------- holds


def test_hold_then_partial_post_moves_part_and_releases_the_rest(bank_cli):
    ada, bob = _open(bank_cli, balance=10_000), _open(bank_cli, "Bob")
    held = bank_cli("hold", ada, bob, "3000", "--expires-after", "1h")
    assert held.status == 0, held.err
    assert f"held 30.00 EUR on {ada}" in held.out
    assert _field(held.out, "state") == "PENDING"
    assert _field(held.out, "posted") == "0.00 EUR"
    assert _field(held.out, "expires")
    transfer_id = _field(held.out, "transfer")
    assert f"bank post {transfer_id}" in held.err and f"bank void {transfer_id}" in held.err
    assert _balance(bank_cli, ada) == ("100.00 EUR", "30.00 EUR")
    assert _balance(bank_cli, bob) == ("0.00 EUR", "0.00 EUR")
    (row,) = bank_cli("show", ada).out.split("open reservations:\n")[1].splitlines()[1:]
    assert row.startswith(transfer_id) and "30.00 EUR" in row
    assert _field(held.out, "expires") in row  # the hold's expiry, as the transfer has it

    posted = bank_cli("post", transfer_id, "1000")
    assert posted.status == 0, posted.err
    assert f"posted 10.00 EUR of transfer {transfer_id}, released 20.00 EUR" in posted.out
    assert _field(posted.out, "state") == "COMPLETED"
    assert _field(posted.out.split("\n", 1)[1], "posted") == "10.00 EUR"
    assert _balance(bank_cli, ada) == ("90.00 EUR", "0.00 EUR")
    assert _balance(bank_cli, bob) == ("10.00 EUR", "0.00 EUR")

    again = bank_cli("post", transfer_id, "1000")
    assert again.status == 0, again.err
    assert _balance(bank_cli, bob) == ("10.00 EUR", "0.00 EUR")

    other = bank_cli("post", transfer_id, "2000")
    assert other.status == 1
    assert other.err.strip() == (
        f"bank post: refused: transfer {transfer_id} is COMPLETED, not PENDING: only a hold"
        " (bank hold, or bank transfer --pending) can be posted or voided"
    )
    voided = bank_cli("void", transfer_id, "--json")
    assert voided.status == 1
    assert voided.json()["error"]["reason"] == "TRANSFER_NOT_PENDING"


def test_hold_then_full_post_and_void_as_json(bank_cli):
    ada, bob = _open(bank_cli, balance=5_000), _open(bank_cli, "Bob")
    held = bank_cli("hold", ada, bob, "2000", "--json")
    assert held.status == 0, held.err
    hold = held.json()
    assert (hold["state"], hold["pending"], hold["posted_amount"]) == (
        "TRANSFER_STATE_PENDING",
        True,
        "0",
    )
    posted = bank_cli("post", hold["transfer_id"], "--json")
    assert posted.status == 0, posted.err
    assert (posted.json()["state"], posted.json()["posted_amount"]) == (
        "TRANSFER_STATE_COMPLETED",
        "2000",
    )

    second = bank_cli("transfer", ada, bob, "1000", "--pending", "--json").json()
    assert second["state"] == "TRANSFER_STATE_PENDING"
    voided = bank_cli("void", second["transfer_id"])
    assert voided.status == 0, voided.err
    assert f"voided transfer {second['transfer_id']}: released 10.00 EUR" in voided.out
    assert _field(voided.out, "state") == "VOIDED"
    assert bank_cli("void", second["transfer_id"]).status == 0  # a repeat answers the same
    assert _balance(bank_cli, ada) == ("30.00 EUR", "0.00 EUR")
    assert _balance(bank_cli, bob) == ("20.00 EUR", "0.00 EUR")


def test_refusals_of_post_and_void(bank_cli):
    ada, bob = _open(bank_cli, balance=5_000), _open(bank_cli, "Bob")
    transfer_id = str(uuid.uuid4())
    assert bank_cli("hold", ada, bob, "1000", "--transfer-id", transfer_id).status == 0
    beyond = bank_cli("post", transfer_id, "5000")
    assert beyond.status == 1
    assert beyond.err.strip() == (
        f"bank post: refused: cannot post 50.00 EUR of transfer {transfer_id}: more than it"
        " holds (held 10.00 EUR); post at most that, or nothing for all of it"
    )
    assert _balance(bank_cli, ada) == ("50.00 EUR", "10.00 EUR")

    immediate = bank_cli("transfer", ada, bob, "100", "--json").json()["transfer_id"]
    for command in (["void", immediate], ["post", immediate]):
        refused = bank_cli(*command)
        assert refused.status == 1
        assert f"transfer {immediate} is COMPLETED, not PENDING" in refused.err

    unknown = str(uuid.uuid4())
    missing = bank_cli("post", unknown)
    assert missing.status == 3
    assert missing.err.strip() == f"bank post: not found: transfer {unknown} does not exist"
    assert bank_cli("void", transfer_id).status == 0


def test_a_hold_expires_by_itself(bank_cli):
    ada, bob = _open(bank_cli, balance=5_000), _open(bank_cli, "Bob")
    held = bank_cli("hold", ada, bob, "1500", "--expires-after", "1s", "--json").json()
    deadline = time.monotonic() + 10
    while _balance(bank_cli, ada)[1] != "0.00 EUR" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _balance(bank_cli, ada) == ("50.00 EUR", "0.00 EUR")
    listed = bank_cli("transfers", ada)
    assert held["transfer_id"] in listed.out and "EXPIRED" in listed.out
    late = bank_cli("post", held["transfer_id"])
    assert late.status == 1 and "is EXPIRED, not PENDING" in late.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expires-after", "0s"], "a hold lasts 1 s to 366 days"),
        (["--expires-after", "367d"], "a hold lasts 1 s to 366 days"),
        (["--expires-after", "soon"], "is not a duration"),
    ],
)
def test_a_bad_expiry_is_a_usage_error(bank_cli, args, message):
    ada, bob = _open(bank_cli, balance=100), _open(bank_cli, "Bob")
    with pytest.raises(SystemExit) as exited:
        bank_cli("hold", ada, bob, "10", *args)
    assert exited.value.code == 2


def test_expires_after_without_pending_is_refused(bank_cli):
    ada, bob = _open(bank_cli, balance=100), _open(bank_cli, "Bob")
    result = bank_cli("transfer", ada, bob, "10", "--expires-after", "1h")
    assert result.status == 2
    assert "invalid argument: expires_after: --expires-after is for a hold only" in result.err
    assert _balance(bank_cli, ada) == ("1.00 EUR", "0.00 EUR")


# --------------------------------------------------------------------------- legs


def test_a_payment_with_a_fee_in_two_legs(bank_cli):
    ada, bob, fees = (_open(bank_cli, n, balance=b) for n, b in (("Ada", 10_000), ("Bob", 0),
                                                                  ("Fees", 0)))  # fmt: skip
    moved = bank_cli("transfer", "--leg", f"{ada}:{bob}:2000", "--leg", f"{ada}:{fees}:150")
    assert moved.status == 0, moved.err
    assert "transferred 21.50 EUR in 2 legs" in moved.out
    assert _field(moved.out, "leg 1") == f"{ada} -> {bob}  20.00 EUR"
    assert _field(moved.out, "leg 2") == f"{ada} -> {fees}  1.50 EUR"
    assert _field(moved.out, "state") == "COMPLETED"
    assert _balance(bank_cli, ada)[0] == "78.50 EUR"
    assert _balance(bank_cli, bob)[0] == "20.00 EUR"
    assert _balance(bank_cli, fees)[0] == "1.50 EUR"


def test_one_refused_leg_moves_nothing(bank_cli):
    ada, bob, cyd = (_open(bank_cli, n, balance=1_000) for n in ("Ada", "Bob", "Cyd"))
    result = bank_cli(
        "transfer", "--leg", f"{ada}:{bob}:500", "--leg", f"{cyd}:{bob}:5000", "--json"
    )
    assert result.status == 1
    assert result.json()["error"]["reason"] == "INSUFFICIENT_FUNDS"
    for account in (ada, bob, cyd):
        assert _balance(bank_cli, account) == ("10.00 EUR", "0.00 EUR")


def test_legs_and_positionals_do_not_mix(bank_cli):
    ada, bob = _open(bank_cli, balance=100), _open(bank_cli, "Bob")
    both = bank_cli("transfer", ada, bob, "10", "--leg", f"{ada}:{bob}:10")
    assert both.status == 2
    assert "invalid argument: legs: give FROM TO AMOUNT or --leg, not both" in both.err
    neither = bank_cli("transfer")
    assert neither.status == 2 and "give FROM TO AMOUNT, or one --leg or more" in neither.err
    with pytest.raises(SystemExit) as exited:
        bank_cli("transfer", "--leg", f"{ada}:{bob}")
    assert exited.value.code == 2


def test_a_multi_leg_hold_posted_whole(bank_cli):
    ada, bob, cyd = _open(bank_cli, balance=3_000), _open(bank_cli, "Bob"), _open(bank_cli, "Cyd")
    held = bank_cli(
        "transfer", "--pending", "--leg", f"{ada}:{bob}:1000", "--leg", f"{ada}:{cyd}:500"
    )
    assert held.status == 0, held.err
    assert "held 15.00 EUR on its sources" in held.out
    transfer_id = _field(held.out, "transfer")
    assert bank_cli("post", transfer_id).status == 0
    assert [_balance(bank_cli, a)[0] for a in (ada, bob, cyd)] == [
        "15.00 EUR",
        "10.00 EUR",
        "5.00 EUR",
    ]


# --------------------------------------------------------------------------- reversals


def test_partial_reversals_up_to_what_moved(bank_cli):
    ada, bob = _open(bank_cli, balance=10_000), _open(bank_cli, "Bob")
    original = bank_cli("transfer", ada, bob, "2500", "--json").json()["transfer_id"]
    reversal_id = str(uuid.uuid4())
    first = bank_cli(
        "reverse", original, "1000", "--reason", "damaged item", "--reversal-id", reversal_id
    )
    assert first.status == 0, first.err
    assert f"reversed 10.00 EUR of transfer {original} (reversal {reversal_id})" in first.out
    assert _field(first.out, "reverses") == original
    assert _field(first.out, "note") == "damaged item"
    assert _field(first.out, "from") == bob and _field(first.out, "to") == ada
    repeat = bank_cli(
        "reverse", original, "1000", "--reason", "damaged item", "--reversal-id", reversal_id
    )
    assert repeat.status == 0, repeat.err
    assert _balance(bank_cli, ada)[0] == "85.00 EUR"

    rest = bank_cli("reverse", original, "--json")
    assert rest.status == 0, rest.err
    assert rest.json()["amount"] == "1500"
    assert _balance(bank_cli, ada)[0] == "100.00 EUR"
    assert _balance(bank_cli, bob)[0] == "0.00 EUR"

    beyond = bank_cli("reverse", original, "1")
    assert beyond.status == 1
    assert f"transfer {original} has 0.00 EUR left to reverse, 0.01 EUR requested" in beyond.err


def test_reversal_refusals(bank_cli):
    ada, bob = _open(bank_cli, balance=1_000), _open(bank_cli, "Bob")
    failed = bank_cli("transfer", ada, bob, "5000", "--json")
    failed_id = failed.json()["error"]["metadata"].get("transfer_id")
    listed = bank_cli("transfers", ada, "--json").json()["transfers"]
    failed_id = failed_id or listed[0]["transfer_id"]
    result = bank_cli("reverse", failed_id)
    assert result.status == 1
    assert result.err.strip() == (
        f"bank reverse: refused: transfer {failed_id} is FAILED: only a COMPLETED transfer"
        " can be reversed"
    )
    spent = bank_cli("transfer", ada, bob, "800", "--json").json()["transfer_id"]
    assert bank_cli("withdraw", bob, "800").status == 0
    refused = bank_cli("reverse", spent)
    assert refused.status == 1 and "insufficient funds" in refused.err
    assert _balance(bank_cli, ada)[0] == "2.00 EUR"


# --------------------------------------------------------------------------- batches


def test_a_batch_file_of_json_lines_answers_each_line(bank_cli, tmp_path):
    ada, bob = _open(bank_cli, balance=10_000), _open(bank_cli, "Bob")
    lines = [
        {"from_account_id": ada, "to_account_id": bob, "amount": 1000},
        {"from_account_id": ada, "to_account_id": ada, "amount": 10},
        {"from_account_id": ada, "to_account_id": bob, "amount": 1_000_000},
        {"from_account_id": ada, "to_account_id": bob, "amount": "500", "pending": True},
        {"legs": [{"from_account_id": ada, "to_account_id": bob, "amount": 200}]},
    ]
    path = tmp_path / "transfers.jsonl"
    path.write_text("# payouts\n" + "\n".join(json.dumps(line) for line in lines) + "\n")
    result = bank_cli("transfer", "--batch", str(path), "--batch-size", "2")
    assert result.status == 1, result.err
    rows = result.out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["2", "3", "4", "5", "6"]
    assert rows[0].split()[2:4] == ["COMPLETED", "10.00"]
    assert "INVALID_ARGUMENT" in rows[1] and "must differ" in rows[1]
    assert "INSUFFICIENT_FUNDS" in rows[2] and "refused: insufficient funds" in rows[2]
    assert rows[3].split()[2] == "PENDING" and rows[4].split()[2] == "COMPLETED"
    assert "5 transfers in 3 batches" in result.err
    assert _balance(bank_cli, ada) == ("88.00 EUR", "5.00 EUR")

    again = bank_cli("transfer", "--batch", str(path), "--json")
    assert again.status == 1
    answers = [json.loads(line) for line in again.out.splitlines()]
    assert [a["line"] for a in answers] == [2, 3, 4, 5, 6]
    assert answers[0]["transfer"]["transfer_id"] == rows[0].split()[1]
    assert answers[2]["error"]["reason"] == "INSUFFICIENT_FUNDS"
    assert _balance(bank_cli, ada) == ("88.00 EUR", "5.00 EUR")  # nothing moved twice


def test_a_batch_file_in_csv(bank_cli, tmp_path):
    ada, bob = _open(bank_cli, balance=10_000), _open(bank_cli, "Bob")
    own = str(uuid.uuid4())
    path = tmp_path / "transfers.csv"
    path.write_text(
        f"from_account_id,to_account_id,amount,transfer_id\n{ada},{bob},100,{own}\n"
        f"{ada},{bob},250,\n"
    )
    result = bank_cli("transfer", "--batch", str(path))
    assert result.status == 0, result.err
    rows = result.out.splitlines()[1:]
    assert rows[0].split()[:3] == ["2", own, "COMPLETED"]
    assert rows[1].split()[2] == "COMPLETED"
    assert _balance(bank_cli, bob)[0] == "3.50 EUR"


def test_a_bad_batch_file_sends_nothing(bank_cli, tmp_path):
    ada, bob = _open(bank_cli, balance=10_000), _open(bank_cli, "Bob")
    path = tmp_path / "bad.csv"
    path.write_text(f"{ada},{bob},100\n{ada},{bob},12.50\n")
    result = bank_cli("transfer", "--batch", str(path))
    assert result.status == 2
    assert re.search(r"invalid argument: batch: .*line 2: amount '12.50'", result.err)
    assert _balance(bank_cli, ada)[0] == "100.00 EUR"
    missing = bank_cli("transfer", "--batch", str(tmp_path / "none.csv"))
    assert missing.status == 2 and "cannot read" in missing.err
    mixed = bank_cli("transfer", ada, bob, "5", "--batch", str(path))
    assert mixed.status == 2 and "takes its transfers from the file alone" in mixed.err


def test_help_lists_the_new_commands(capsys):
    from bank_cli.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("hold", "post", "void", "reverse"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.MULTILINE), command
