"""How large a request each method takes, checked on its bytes before they are decoded.

grpc refuses a message above the server's ``grpc.max_receive_message_length`` (``LARGEST``,
what the largest method needs) before any of our code runs. Below that, each message is
held to its method's own limit: most requests are a few ids and amounts, a transfer may
carry legs and metadata, and only a batch or a step stream needs more. A message above its
method's limit is ``RESOURCE_EXHAUSTED`` with reason ``MESSAGE_TOO_LARGE`` and is never
decoded; a caller without credentials is refused before its message is decoded at all.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# Ids, amounts, an owner or a page token: a few hundred bytes at most.
UNARY = 8 * KIB
# Up to 16 legs and 16 metadata entries of 64 + 256 characters: under 8 KiB, with room.
WITH_LEGS = 32 * KIB
# Up to 1,000 transfers of a batch; the steps a transfer service sends in one message.
BATCH = 2 * MIB
LARGEST = BATCH

METHOD_LIMITS: dict[str, int] = {
    "/bank.v1.TransferService/CreateTransfer": WITH_LEGS,
    "/bank.v1.TransferService/CreateTransfers": BATCH,
    "/bank.v1.TransferService/ReverseTransfer": WITH_LEGS,
    "/bank.v1.ReservationService/ExecuteSteps": BATCH,
}


def limit_of(method: str) -> int:
    """The most bytes one request message of ``method`` may have."""
    return METHOD_LIMITS.get(method, UNARY)
