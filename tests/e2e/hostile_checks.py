"""How the hostile-input suite calls an RPC and judges its answer: a clear code, an
ErrorInfo naming a field that is really wrong, and nothing stored by a refusal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from grpc import StatusCode

from grpc_common.errors import DOMAIN, error_info
from shared_kernel.errors import InvalidArgument
from shared_kernel.values import parse_id
from tests.e2e.hostile_model import (
    CALL_TIMEOUT,
    CLEAR_CODES,
    FORBIDDEN,
    MAX_ID_LENGTH,
    OPTIONAL_IDS,
    REASONS,
    RULES,
    SENT,
    WATCH_TIMEOUT,
    Clients,
    Pool,
    Rpc,
)

# ---------------------------------------------------------------------------------------
# Calls and what every answer must satisfy


@dataclass
class Answer:
    code: StatusCode
    details: str
    info: object | None
    responses: list = field(default_factory=list)


def _is_raw(request: object) -> bool:
    return isinstance(request, bytes) or (
        isinstance(request, list) and all(isinstance(r, bytes) for r in request)
    )


def call(clients: Clients, rpc: Rpc, request: object) -> Answer:
    """One call, typed or raw; a watch is asked for its first event only."""
    SENT[rpc.service] += 1
    method = clients.raw(rpc) if _is_raw(request) else clients.typed(rpc)
    try:
        if rpc.client_streaming:
            answer = method(iter(request), timeout=CALL_TIMEOUT)
            responses = list(answer) if rpc.streaming else [answer]
        elif rpc.streaming:
            stream = method(request, timeout=WATCH_TIMEOUT)
            try:
                responses = [next(stream)]
            finally:
                stream.cancel()
        else:
            responses = [method(request, timeout=CALL_TIMEOUT)]
    except grpc.RpcError as error:
        return Answer(error.code(), error.details() or "", error_info(error))
    return Answer(StatusCode.OK, "", None, responses)


def _summary(request: object) -> str:
    if isinstance(request, list):
        return "[" + ", ".join(_summary(r) for r in request) + "]"
    if isinstance(request, bytes):
        return f"{len(request)} bytes {request[:64]!r}"
    parts = []
    for fld, value in request.ListFields():
        shown = repr(value)
        if len(shown) > 120:
            shown = f"{shown[:100]}… ({len(shown)} chars)"
        parts.append(f"{fld.name}={shown}")
    return f"{type(request).__name__}({', '.join(parts)})"


def _refuses(rule: Callable[[object], object], value: object) -> bool:
    try:
        rule(value)
    except InvalidArgument:
        return True
    return False


def _canonical(value: str) -> str | None:
    try:
        return parse_id(value, "id")
    except InvalidArgument:
        return None


def _may_refuse(rpc_name: str, request: Message, name: str) -> bool:
    """Whether a refusal naming field ``name`` of ``request`` is right."""
    if name not in request.DESCRIPTOR.fields_by_name:
        return False
    value = getattr(request, name)
    if (rpc_name, name) in OPTIONAL_IDS:
        return bool(value) and _refuses(RULES[name], value)
    if name == "to_account_id" and not _refuses(RULES[name], value):
        return _canonical(value) == _canonical(request.from_account_id)
    if name in RULES:
        return _refuses(RULES[name], value)
    return True  # page_token: whether it was issued for this listing is the server's to say


def _check_info(info: object, code: StatusCode, what: str) -> None:
    assert info is not None and info.domain == DOMAIN, what
    assert info.reason in REASONS, what
    assert code != StatusCode.INVALID_ARGUMENT or "field" in info.metadata, what


def check(rpc: Rpc, request: object, answer: Answer) -> None:
    """The answer is a clear one, and a refusal names a field that is really wrong."""
    what = f"{rpc} answered {answer.code.name} ({answer.details[:200]!r}) to {_summary(request)}"
    assert answer.code not in FORBIDDEN, what
    if rpc.streaming and not rpc.client_streaming and answer.code == StatusCode.DEADLINE_EXCEEDED:
        return
    assert answer.code in CLEAR_CODES, what
    if answer.code == StatusCode.OK:
        if rpc.name == "ExecuteSteps" and not _is_raw(request):
            check_outcomes(request, answer.responses)
        return
    _check_info(answer.info, answer.code, what)
    if answer.code == StatusCode.RESOURCE_EXHAUSTED:
        assert answer.info.reason == "MESSAGE_TOO_LARGE", what
        return
    if answer.code == StatusCode.PERMISSION_DENIED:
        assert dict(answer.info.metadata) == {"check": "owner"}, what
        # A raw body is judged by what it decodes to (an owner field may hide in the bytes).
        sent = rpc.request_type.FromString(request) if isinstance(request, bytes) else request
        assert sent.owner, what
        return
    if answer.code == StatusCode.ABORTED:
        assert answer.info.reason == "EPOCH_FENCED", what
        assert rpc.service == "bank.v1.ReservationService", what
    if answer.code != StatusCode.INVALID_ARGUMENT:
        return
    name = answer.info.metadata["field"]
    if _is_raw(request):
        assert name in {"request", *rpc.request_type.DESCRIPTOR.fields_by_name}, what
    else:
        assert not rpc.client_streaming and _may_refuse(rpc.name, request, name), what


_CODES = {code.value[0]: code for code in StatusCode}


def check_outcomes(requests: list[Message], responses: list[Message]) -> None:
    """ExecuteSteps: one outcome per step, each refusal as clear as a unary call's."""
    steps: dict[int, list[Message]] = {}
    for request in requests:
        for step in request.steps:
            steps.setdefault(step.step_id, []).append(step)
    outcomes = [outcome for response in responses for outcome in response.outcomes]
    assert Counter(o.step_id for o in outcomes) == Counter(
        {step_id: len(same) for step_id, same in steps.items()}
    ), f"outcomes do not match steps: {_summary(requests)}"
    for outcome in outcomes:
        if outcome.WhichOneof("result") != "error":
            continue
        error, candidates = outcome.error, steps[outcome.step_id]
        code = _CODES.get(error.code, StatusCode.UNKNOWN)
        what = f"step {outcome.step_id} answered {code.name} ({error.message!r}): {candidates}"
        # ABORTED/STEP_NOT_RUN: a step sent to run after one that did not succeed.
        clear = CLEAR_CODES - {StatusCode.OK} | {StatusCode.ABORTED}
        assert code not in FORBIDDEN and code in clear, what
        assert error.reason in REASONS, what
        if code == StatusCode.ABORTED and error.reason != "EPOCH_FENCED":
            assert error.reason == "STEP_NOT_RUN", what
            assert any(step.after_step_id for step in candidates), what
        if code == StatusCode.INVALID_ARGUMENT:
            name = error.metadata["field"]
            assert any(
                (name == "action" and step.WhichOneof("action") is None)
                # after_step_id naming no earlier step of its request (or a step that was
                # itself refused so).
                or (name == "after_step_id" and step.after_step_id != 0)
                or (
                    step.WhichOneof("action") is not None
                    and _may_refuse(
                        step.WhichOneof("action").capitalize(),
                        getattr(step, step.WhichOneof("action")),
                        name,
                    )
                )
                for step in candidates
            ), what


def _refused(rpc: Rpc, answer: Answer) -> bool:
    """Whether the call, all of it, was refused, so that it must have stored nothing."""
    if rpc.name == "ExecuteSteps" and answer.code == StatusCode.OK:
        outcomes = [o for response in answer.responses for o in response.outcomes]
        return all(
            o.WhichOneof("result") == "error" and o.error.code != StatusCode.UNAVAILABLE.value[0]
            for o in outcomes
        )
    ambiguous = {StatusCode.OK, StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED}
    return answer.code not in ambiguous


def _involved(request: object, pool: Pool) -> list[str]:
    """The real accounts a request names, however it spells their ids."""
    found: set[str] = set()

    def visit(message: Message) -> None:
        for fld, value in message.ListFields():
            values = value if fld.is_repeated else [value]
            for item in values:
                if fld.type == fld.TYPE_MESSAGE:
                    visit(item)
                elif fld.type == fld.TYPE_STRING and len(item) <= MAX_ID_LENGTH:
                    if (canonical := _canonical(item)) in pool.ids:
                        found.add(canonical)

    for message in request if isinstance(request, list) else [request]:
        visit(message)
    return sorted(found)


def _state(clients: Clients, ids: list[str], with_version: bool) -> dict[str, tuple]:
    states = {}
    for account_id in ids:
        a = clients.account(account_id)
        refs = tuple(sorted((r.reference, r.amount) for r in a.reservations))
        states[account_id] = (a.balance, a.reserved, a.status, refs) + (
            (a.version,) if with_version else ()
        )
    return states
