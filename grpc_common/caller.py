"""Who is calling: the identity the authentication interceptor found, for the servicers.

``current()`` is None when authentication is off (every caller may do everything) or for a
call that needs no identity. A ``Caller`` with an ``owner`` acts only on that owner's
accounts; the servicers ask ``may_act_for`` before they change or show anything.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from shared_kernel.errors import DomainError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Caller:
    """A token's name, its scopes, and the owner it is bound to ("" for none)."""

    name: str
    scopes: frozenset[str]
    owner: str = ""


_CURRENT: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "bank_caller", default=None
)


class PermissionDenied(DomainError):
    """The caller's token may not act on this account or transfer."""

    reason = "PERMISSION_DENIED"


def current() -> Caller | None:
    return _CURRENT.get()


def set_current(caller: Caller | None) -> None:
    """Set for the call's task by the interceptor; the call's servicer reads it."""
    _CURRENT.set(caller)


def bound_owner() -> str:
    """The owner the current caller is bound to; "" when it may act for anyone."""
    caller = _CURRENT.get()
    return caller.owner if caller is not None else ""


def check_owner(owner: str, what: str = "account", bound: str | None = None) -> None:
    """Refuses an owner-bound caller (``bound``, else the current one) acting on someone
    else's ``what``. The refusal's metadata says it is the owner check (``check=owner``)."""
    bound = bound_owner() if bound is None else bound
    if bound and owner != bound:
        raise PermissionDenied(
            f"this token acts only for its owner: not this {what}", check="owner"
        )


def owned_by(
    owner: str, decision: Callable[[T], R], get_owner: Callable[[T], str]
) -> Callable[[T], R]:
    """``decision``, refused first when the thing it acts on is not ``owner``'s."""
    if not owner:
        return decision

    def decide(subject: T) -> R:
        check_owner(get_owner(subject), bound=owner)
        return decision(subject)

    return decide
