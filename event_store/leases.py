"""Leases on the SQL backends: the writes an append makes in its own transaction, and the
claims, renewals and hand-backs made in short transactions of their own.

An append's lease writes (``port.LeaseWrite``) run after its version check, on the same
driver connection: creating a lease that exists breaks its primary key (a conflict, as a
stream created twice is); keeping, resting or dropping one at an epoch it no longer has
changes no row, and the whole append is undone with ``LeaseLost``. On Postgres the kept
lease is read ``FOR SHARE``, so a claim cannot change hands under an append that relies
on it; SQLite has one writer at a time anyway.

Claims take a lease only from nobody, from a holder whose time ran out, or from the
claimer itself; the epoch goes up whenever the holder changes. ``claim_due`` skips rows
another claimer has locked (``SKIP LOCKED`` on Postgres), so replicas sweeping at the same
moment split the due leases between them instead of queueing on each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, case, or_, select, update
from sqlalchemy import exc as sa_exc

from .port import AppendRequest, Lease, LeaseChange, LeaseLost, encode_rows
from .sql import leases, translate_error

__all__ = ["SqlLeases", "lease_writes_postgres", "lease_writes_sqlite"]

_OWNER = bindparam("p_owner")
_CLAIM = (
    update(leases)
    .where(
        leases.c.key == bindparam("p_key"),
        or_(
            leases.c.owner == _OWNER,
            leases.c.owner == "",
            leases.c.expires_at <= bindparam("p_now"),
        ),
    )
    .values(
        owner=_OWNER,
        epoch=case((leases.c.owner == _OWNER, leases.c.epoch), else_=leases.c.epoch + 1),
        expires_at=bindparam("p_until"),
    )
    .returning(leases.c.epoch)
)
_DUE = (
    select(leases.c.key)
    .where(leases.c.expires_at <= bindparam("p_now"), leases.c.owner != _OWNER)
    .order_by(leases.c.expires_at)
    .limit(bindparam("p_limit"))
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_CLAIM_DUE = (
    update(leases)
    .where(leases.c.key.in_(_DUE))
    .values(owner=_OWNER, epoch=leases.c.epoch + 1, expires_at=bindparam("p_until"))
    .returning(leases.c.key, leases.c.epoch)
)
_RENEW = (
    update(leases)
    .where(leases.c.owner == _OWNER)
    .values(expires_at=bindparam("p_until"))
    .returning(leases.c.key, leases.c.epoch)
)
_REST = (
    update(leases)
    .where(leases.c.key == bindparam("p_key"), leases.c.epoch == bindparam("p_epoch"))
    .values(owner="", expires_at=bindparam("p_until"))
    .returning(leases.c.key)
)
_ABANDON = update(leases).where(leases.c.owner == _OWNER).values(expires_at=bindparam("p_now"))
_ABANDON_ALL = update(leases).where(leases.c.owner != "").values(expires_at=bindparam("p_now"))
_LEASE = select(leases.c.key, leases.c.owner, leases.c.epoch, leases.c.expires_at).where(
    leases.c.key == bindparam("p_key")
)


class SqlLeases:
    """The port's lease operations, for a backend with an ``engine``."""

    engine: Engine

    def _leases(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        try:
            with self.engine.begin() as conn:
                result = conn.execute(statement, params)
                return list(result) if result.returns_rows else [result.rowcount]
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc

    def claim(self, key: str, owner: str, now: int, until: int) -> int | None:
        rows = self._leases(
            _CLAIM, {"p_key": key, "p_owner": owner, "p_now": now, "p_until": until}
        )
        return int(rows[0][0]) if rows else None

    def claim_due(self, owner: str, now: int, until: int, limit: int) -> list[tuple[str, int]]:
        params = {"p_owner": owner, "p_now": now, "p_until": until, "p_limit": limit}
        return [(key, int(epoch)) for key, epoch in self._leases(_CLAIM_DUE, params)]

    def renew(self, owner: str, until: int) -> dict[str, int]:
        rows = self._leases(_RENEW, {"p_owner": owner, "p_until": until})
        return {key: int(epoch) for key, epoch in rows}

    def rest(self, key: str, epoch: int, until: int) -> bool:
        return bool(self._leases(_REST, {"p_key": key, "p_epoch": epoch, "p_until": until}))

    def abandon(self, owner: str | None, now: int) -> int:
        if owner is None:
            (count,) = self._leases(_ABANDON_ALL, {"p_now": now})
        else:
            (count,) = self._leases(_ABANDON, {"p_owner": owner, "p_now": now})
        return int(count)

    def lease(self, key: str) -> Lease | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(_LEASE, {"p_key": key}).first()
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc
        return None if row is None else Lease(row[0], row[1], int(row[2]), int(row[3]))


# --- what an append does to leases -------------------------------------------------------

# SQLite: one statement per kind of change and up to this many rows, rows as VALUES.
_SQLITE_ROWS = 256
_SQLITE = {
    LeaseChange.CREATE: (
        "INSERT OR ROLLBACK INTO leases (key, owner, epoch, expires_at) VALUES ",
        "(?, ?, 1, ?)",
        "",
    ),
    # Joined to the rows, not ``(key, epoch) IN (VALUES ...)``: SQLite scans the whole
    # table for a row-value IN, and leases at rest can be many.
    LeaseChange.KEEP: (
        "SELECT l.key FROM (VALUES ",
        "(?, ?)",
        ") AS v JOIN leases AS l ON l.key = v.column1 AND l.epoch = v.column2",
    ),
    LeaseChange.REST: (
        "UPDATE leases SET owner = '', expires_at = v.column3 FROM (VALUES ",
        "(?, ?, ?)",
        ") AS v WHERE leases.key = v.column1 AND leases.epoch = v.column2 RETURNING leases.key",
    ),
    LeaseChange.DROP: (
        "DELETE FROM leases WHERE rowid IN (SELECT l.rowid FROM (VALUES ",
        "(?, ?)",
        ") AS v JOIN leases AS l ON l.key = v.column1 AND l.epoch = v.column2) RETURNING key",
    ),
}


def lease_writes_sqlite(driver: Any, requests: Sequence[AppendRequest]) -> None:
    """An append's lease writes on its SQLite connection, inside its transaction; raises
    ``LeaseLost`` (the caller rolls back) for a lease not held at its epoch."""
    rows: dict[LeaseChange, list[tuple[Any, ...]]] = {}
    for request in requests:
        write = request.lease
        if write is None:
            continue
        key = request.stream_id
        if write.change is LeaseChange.CREATE:
            row: tuple[Any, ...] = (key, write.owner, write.until)
        elif write.change is LeaseChange.REST:
            row = (key, write.epoch, write.until)
        else:
            row = (key, write.epoch)
        rows.setdefault(write.change, []).append(row)
    for change, changed in rows.items():
        head, values, tail = _SQLITE[change]
        for start in range(0, len(changed), _SQLITE_ROWS):
            chunk = changed[start : start + _SQLITE_ROWS]
            sql = head + ", ".join([values] * len(chunk)) + tail
            found = driver.execute(sql, [v for row in chunk for v in row])
            if change is LeaseChange.CREATE:
                continue
            held = {key for (key,) in found.fetchall()}
            for row in chunk:
                if row[0] not in held:
                    raise LeaseLost(row[0], row[1])


# Postgres: one statement per kind of change, whatever the batch holds, rows as JSON.
_POSTGRES = {
    LeaseChange.CREATE: (
        "INSERT INTO leases (key, owner, epoch, expires_at)"
        " SELECT key, owner, 1, until FROM json_to_recordset(%s::json)"
        " AS r(key varchar, owner varchar, until bigint)"
    ),
    LeaseChange.KEEP: (
        "SELECT l.key FROM leases AS l JOIN json_to_recordset(%s::json)"
        " AS r(key varchar, epoch bigint) ON l.key = r.key AND l.epoch = r.epoch"
        " FOR SHARE OF l"
    ),
    LeaseChange.REST: (
        "UPDATE leases AS l SET owner = '', expires_at = r.until FROM json_to_recordset(%s::json)"
        " AS r(key varchar, epoch bigint, until bigint)"
        " WHERE l.key = r.key AND l.epoch = r.epoch RETURNING l.key"
    ),
    LeaseChange.DROP: (
        "DELETE FROM leases AS l USING json_to_recordset(%s::json)"
        " AS r(key varchar, epoch bigint) WHERE l.key = r.key AND l.epoch = r.epoch"
        " RETURNING l.key"
    ),
}


def lease_writes_postgres(
    execute: Callable[[str, tuple[Any, ...]], Any], requests: Sequence[AppendRequest]
) -> Callable[[], None]:
    """Sends an append's lease writes (``execute`` queues a statement in the pipeline and
    returns its cursor); returns the check to run once their answers are back, which
    raises ``LeaseLost`` for a lease not held at its epoch."""
    rows: dict[LeaseChange, list[dict[str, Any]]] = {}
    for request in requests:
        write = request.lease
        if write is None:
            continue
        row: dict[str, Any] = {"key": request.stream_id, "epoch": write.epoch}
        if write.change in (LeaseChange.CREATE, LeaseChange.REST):
            row["until"] = write.until
        if write.change is LeaseChange.CREATE:
            row["owner"] = write.owner
        rows.setdefault(write.change, []).append(row)
    checks = []
    for change, changed in rows.items():
        cursor = execute(_POSTGRES[change], (encode_rows(changed),))
        if change is not LeaseChange.CREATE:
            checks.append((cursor, changed))

    def check() -> None:
        for cursor, changed in checks:
            found = {key for (key,) in cursor.fetchall()}
            for row in changed:
                if row["key"] not in found:
                    raise LeaseLost(row["key"], row["epoch"])

    return check
