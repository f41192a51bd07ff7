"""Request size limits per method, and floods of large requests against real processes:
the services' memory stays bounded and they keep answering."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from bank.v1 import account_pb2 as apb
from bank.v1 import transfer_pb2 as tpb
from bank_cli.harness import ServiceProcess
from grpc_common import limits
from tests.e2e.conftest import refusal
from tests.e2e.harness import Bank
from tests.e2e.secured import TokenFile, token_bank, token_file

pytestmark = pytest.mark.e2e

FLOOD_SECONDS = 8.0
FLOOD_LOOPS = 4
MAX_GROWTH_MIB = 256


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[tuple[Bank, TokenFile]]:
    workdir = tmp_path_factory.mktemp("limits")
    tokens = token_file(workdir)
    tokens.add("teller")
    with token_bank(workdir, tokens) as bank:
        yield bank, tokens


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def flood(
    service: ServiceProcess, method: str, body: bytes, metadata=()
) -> tuple[int, int, Counter]:
    """``FLOOD_LOOPS`` loops sending ``body`` to ``method`` for ``FLOOD_SECONDS``: the
    service's RSS before and at its peak (MiB), and the codes answered."""
    assert service.pid is not None
    stop = time.monotonic() + FLOOD_SECONDS
    codes: Counter = Counter()

    def loop() -> None:
        channel = grpc.insecure_channel(
            service.address, options=[("grpc.max_send_message_length", -1)]
        )
        call = channel.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        while time.monotonic() < stop:
            try:
                call(body, metadata=metadata, timeout=10)
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[error.code().name] += 1
        channel.close()

    before = peak = rss_mib(service.pid)
    threads = [threading.Thread(target=loop) for _ in range(FLOOD_LOOPS)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, rss_mib(service.pid))
        time.sleep(0.05)
    print(f"[flood] {method} {len(body)} bytes: RSS {before} -> peak {peak} MiB, {dict(codes)}")
    return before, peak, codes


@pytest.mark.parametrize(
    ("size", "code"),
    [
        # Above what any method takes: grpc refuses it before our code runs.
        (4 * limits.MIB, "RESOURCE_EXHAUSTED"),
        # The largest message the server receives at all, without a token.
        (limits.LARGEST - 64, "UNAUTHENTICATED"),
    ],
    ids=["4MiB", "largest"],
)
def test_a_flood_of_large_requests_without_credentials_keeps_memory_bounded(guarded, size, code):
    bank, tokens = guarded
    assert bank.transfer is not None
    body = tpb.GetTransferRequest(transfer_id="a" * size).SerializeToString()
    before, peak, codes = flood(bank.transfer, "/bank.v1.TransferService/GetTransfer", body)
    assert set(codes) == {code}, codes
    assert sum(codes.values()) >= FLOOD_LOOPS
    assert peak - before < MAX_GROWTH_MIB, (before, peak)
    # Still answering, at once.
    code_, reason, _ = refusal(
        lambda: bank.transfers.GetTransfer(
            tpb.GetTransferRequest(transfer_id=str(uuid.uuid4())),
            metadata=tokens.metadata("teller"),
            timeout=5,
        )
    )
    assert (code_, reason) == (grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND")


def test_a_flood_of_oversized_requests_with_a_token_keeps_memory_bounded(guarded):
    bank, tokens = guarded
    assert bank.account is not None
    body = apb.OpenAccountRequest(owner="o" * (limits.LARGEST - 64), currency="EUR")
    before, peak, codes = flood(
        bank.account,
        "/bank.v1.AccountService/OpenAccount",
        body.SerializeToString(),
        tokens.metadata("teller"),
    )
    assert set(codes) == {"RESOURCE_EXHAUSTED"}, codes
    assert peak - before < MAX_GROWTH_MIB, (before, peak)


def test_a_request_above_its_methods_limit_is_refused_undecoded(guarded):
    bank, tokens = guarded
    teller = tokens.metadata("teller")
    owner = "o" * (limits.UNARY + 1)
    code, reason, metadata = refusal(
        lambda: bank.accounts.OpenAccount(
            apb.OpenAccountRequest(owner=owner, currency="EUR"), metadata=teller
        )
    )
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
    assert metadata["limit"] == str(limits.UNARY)
    # A transfer has room for what its rules allow: 16 entries of 256 characters, in UTF-8.
    request = tpb.CreateTransferRequest(
        from_account_id=str(uuid.uuid4()),
        to_account_id=str(uuid.uuid4()),
        amount=1,
        metadata={f"{n:02d}".ljust(64, "k"): "€" * 256 for n in range(16)},
    )
    assert limits.UNARY < request.ByteSize() < limits.WITH_LEGS
    code, reason, _ = refusal(
        lambda: bank.transfers.CreateTransfer(request, metadata=teller, timeout=10)
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


def test_a_token_is_checked_before_the_size(guarded):
    bank, _ = guarded
    owner = "o" * (limits.UNARY + 1)
    code, reason, _ = refusal(
        lambda: bank.accounts.OpenAccount(apb.OpenAccountRequest(owner=owner, currency="EUR"))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
