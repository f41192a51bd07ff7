"""What each RPC needs of a token: one scope per method, for every bank service.

A token file line may name its scopes (``scopes=read,transfer``); a line without names
every scope but ``reservation``. A method missing from ``METHOD_SCOPES`` is refused to
everyone (fail closed), so a new RPC is unreachable until it is given a scope here.
"""

from __future__ import annotations

READ = "read"
TELLER = "teller"
TRANSFER = "transfer"
OPERATOR = "operator"
RESERVATION = "reservation"

SCOPES = frozenset({READ, TELLER, TRANSFER, OPERATOR, RESERVATION})
# A token line without ``scopes=``: what every token could do before scopes existed.
DEFAULT_SCOPES = SCOPES - {RESERVATION}

_ACCOUNT = "/bank.v1.AccountService/"
_RESERVATION = "/bank.v1.ReservationService/"
_TRANSFER = "/bank.v1.TransferService/"
_NAIVE = "/bank.experimental.v1.NaiveTransferService/"

METHOD_SCOPES: dict[str, str] = {
    _ACCOUNT + "GetAccount": READ,
    _ACCOUNT + "ListAccountEvents": READ,
    _ACCOUNT + "WatchAccount": READ,
    _ACCOUNT + "OpenAccount": TELLER,
    _ACCOUNT + "Deposit": TELLER,
    _ACCOUNT + "Withdraw": TELLER,
    _ACCOUNT + "CloseAccount": TELLER,
    _ACCOUNT + "SetOverdraftLimit": TELLER,
    **{
        _RESERVATION + name: RESERVATION
        for name in (
            "Reserve",
            "Credit",
            "Capture",
            "Release",
            "HoldCredit",
            "ConfirmCredit",
            "CancelCredit",
            "ExecuteSteps",
        )
    },
    _TRANSFER + "CreateTransfer": TRANSFER,
    _TRANSFER + "CreateTransfers": TRANSFER,
    _TRANSFER + "PostTransfer": TRANSFER,
    _TRANSFER + "VoidTransfer": TRANSFER,
    _TRANSFER + "ReverseTransfer": TRANSFER,
    _TRANSFER + "GetTransfer": READ,
    _TRANSFER + "ListTransfers": READ,
    _TRANSFER + "ListUnfinishedTransfers": OPERATOR,
    # The experimental transfer without the protocol moves money in one call: an operator's.
    _NAIVE + "Transfer": OPERATOR,
}


def scope_of(method: str) -> str | None:
    """The scope ``method`` (``/package.Service/Method``) needs; None: no one may call it."""
    return METHOD_SCOPES.get(method)


def parse_scopes(spec: str) -> frozenset[str]:
    """``S1,S2,...`` as a set of known scopes; ``ValueError`` naming an unknown one."""
    names = {item.strip() for item in spec.split(",") if item.strip()}
    unknown = sorted(names - SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} (known: {', '.join(sorted(SCOPES))})")
    if not names:
        raise ValueError("scopes= names no scope")
    return frozenset(names)
