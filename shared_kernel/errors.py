"""The base of every domain refusal, and the refusals both services share.

Domain errors are plain exceptions. Each service maps them to a gRPC status and an
``ErrorInfo`` reason in exactly one table (``<service>/grpc_api/errors.py``).
"""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain refuses. Subclasses say why.

    ``record``: events the refusal itself leaves stored (a refused step of the reservation
    protocol is remembered, so every repeat gets the same answer); empty for most.
    """

    record: tuple[object, ...] = ()

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(DomainError):
    """A field is missing or malformed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.field = field


class AlreadyExists(DomainError):
    """An id or idempotency key was reused with different contents."""
