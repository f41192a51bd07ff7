"""``PostgresEventStore``: the server backend, psycopg 3 through SQLAlchemy.

Positions come from an identity column, and a sequence hands out numbers in the order
transactions *ask*, not the order they *commit*. A reader of ``read_all`` could then see
position 12 committed while 11 is still in flight, move past 11, and miss it forever.
Each append therefore takes a transaction-scoped advisory lock (one per schema) before
it inserts, so append transactions commit in position order. The
commit is the costly part either way; callers batch appends (see ``aio``) to share it.

Every connection plans each statement for the values it is run with
(``plan_cache_mode = force_custom_plan``). psycopg prepares a statement run often, and the
server may then keep one generic plan for it, made once, against the table as it was.
A store starts empty, and the plan it gets then for the version check (keys joined
against ``events``) reads the whole table: harmless at first, 30 ms a batch at 200,000
events, and never revisited unless the table is analyzed again. A custom plan costs a
fraction of a millisecond of planning and follows the table as it grows (an index lookup
per key).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import URL, Connection, create_engine, event, make_url, text
from sqlalchemy import exc as sa_exc

from .leases import SqlLeases, lease_writes_postgres
from .port import AppendRequest, ConcurrencyConflict, LeaseLost, encode_rows
from .sql import SqlEventStore, check_versions, tag_rows_for, translate_error

__all__ = ["PostgresEventStore", "postgres_url"]

# Advisory lock keys: (class, hashtext(schema)). Distinct classes so that a long
# migration and appends do not look like the same lock in pg_locks.
_APPEND_LOCK = "SELECT pg_advisory_xact_lock(720501, hashtext(coalesce(current_schema(), '')))"
_MIGRATE_LOCK = text(
    "SELECT pg_advisory_xact_lock(720502, hashtext(coalesce(current_schema(), '')))"
)

DEFAULT_CONNECT_TIMEOUT_S = 10

# The append's statements, each one statement text whatever the batch size (not VALUES
# lists), so psycopg prepares each once per connection and the server reuses its plan.
# The inserts take their rows as one JSON text (``json_to_recordset``):
# psycopg dumps a list parameter element by element in Python, which made the arrays the
# writer's largest cost (a third of its time holding the interpreter lock), while the
# rows are written in one call (``encode_rows``). The version check keeps its two
# small arrays: joined against ``json_to_recordset``, whose row count the planner cannot
# see (it assumes 100), the check was planned as a hash join over a sequential scan of
# ``events`` while the table was small, and the server's CPU per transfer doubled. They go
# in binary (``%b``): as text psycopg quotes each element through a regular expression,
# three times the CPU per key (2.1-2.8 against 0.7-0.8 us).
_EXISTING_VERSIONS = (
    "SELECT e.stream_id, e.version FROM unnest(%b::varchar[], %b::bigint[]) AS k(s, v)"
    " JOIN events AS e ON e.stream_id = k.s AND e.version = k.v"
)
_INSERT_EVENTS = (
    "INSERT INTO events (stream_id, version, type, data, recorded_at)"
    " SELECT stream_id, version, type, data, recorded_at FROM json_to_recordset(%s::json)"
    " AS r(stream_id varchar, version bigint, type varchar, data text, recorded_at bigint)"
    " RETURNING position, stream_id, version"
)
_INSERT_TAGS = (
    "INSERT INTO event_tags (tag, position, recorded_at)"
    " SELECT tag, position, recorded_at FROM json_to_recordset(%s::json)"
    " AS t(tag varchar, position bigint, recorded_at bigint)"
)
_INSERT_CHECKPOINTS = (
    "INSERT INTO checkpoints (stream_id, version, recorded_at, data)"
    " SELECT stream_id, version, recorded_at, data FROM json_to_recordset(%s::json)"
    " AS c(stream_id varchar, version bigint, recorded_at bigint, data text)"
)


def postgres_url(url: str | URL) -> URL:
    """The URL with the psycopg 3 driver; ``postgresql://`` and ``postgres://`` map to it."""
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a postgresql URL: {parsed.render_as_string()!r}")
    driver = parsed.get_driver_name()
    if "+" not in parsed.drivername:
        return parsed.set(drivername="postgresql+psycopg")
    if driver != "psycopg":
        raise ValueError(f"unsupported Postgres driver {driver!r}; use postgresql+psycopg://")
    return parsed


class PostgresEventStore(SqlLeases, SqlEventStore):
    """An event store in a Postgres database (the schema first on the search_path).

    Connection options in the URL are passed to libpq, e.g.
    ``?options=-csearch_path%3Dmyschema`` selects the schema.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        connect_args: dict[str, Any] | None = None,
        **engine_options: Any,
    ) -> None:
        parsed = postgres_url(url)
        args = dict(connect_args or {})
        if "connect_timeout" not in parsed.query:
            # Without one, a host that drops packets holds a caller for minutes.
            args.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)
        engine = create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            connect_args=args,
            **engine_options,
        )
        event.listen(engine, "connect", _session_settings)
        # Reads are single statements: autocommit saves the BEGIN and ROLLBACK round trips.
        super().__init__(engine, engine.execution_options(isolation_level="AUTOCOMMIT"))

    def _lock_migrations(self, conn: Connection) -> None:
        conn.execute(_MIGRATE_LOCK)

    def _write(
        self,
        requests: Sequence[AppendRequest],
        keys: list[tuple[str, int]],
        rows: list[dict[str, Any]],
        checkpoint_rows: list[dict[str, Any]],
    ) -> dict[tuple[str, int], int]:
        """The append's transaction on a psycopg connection, in two round trips.

        The version check, the lock and the insert go out together (psycopg's pipeline
        mode); once their answers are back and the check passed, the tags and the commit
        go together, without SQLAlchemy's machinery per statement.

        The connection is kept between appends (by the one thread that appends at a time,
        the store's writer), which saves the pool's checkout and its liveness ping. If it
        turns out dead before the commit was sent, nothing was written: the append is
        made once more on a fresh connection, as the ping would have done.
        """
        with self._kept.turn() as keep:
            kept = self._kept.take() if keep else None
            if kept is not None:
                try:
                    return self._write_on(
                        kept, requests, keys, rows, checkpoint_rows, keep=True, kept=True
                    )
                except _DeadBeforeCommit:
                    pass  # closed meanwhile (a restart, an idle timeout): once more, fresh
            return self._write_on(
                self._checkout(), requests, keys, rows, checkpoint_rows, keep=keep
            )

    def _checkout(self) -> Any:
        try:
            return self.engine.raw_connection()
        except sa_exc.SQLAlchemyError as exc:
            raise translate_error(exc) from exc
        except psycopg.Error as exc:  # the pool lets the driver's connect errors through
            raise translate_error(exc) from exc

    def _write_on(
        self,
        pooled: Any,
        requests: Sequence[AppendRequest],
        keys: list[tuple[str, int]],
        rows: list[dict[str, Any]],
        checkpoint_rows: list[dict[str, Any]],
        keep: bool,
        kept: bool = False,
    ) -> dict[tuple[str, int], int]:
        """``keep``: keep the connection for the next append; ``kept``: it was kept from
        the last one, so if it is found dead before the commit, say so (``_DeadBeforeCommit``)
        rather than fail the append."""
        conn: psycopg.Connection[Any] = pooled.driver_connection
        committing = False
        try:
            try:
                with conn.pipeline():
                    found = conn.execute(
                        _EXISTING_VERSIONS, ([k[0] for k in keys], [k[1] for k in keys])
                    )
                    conn.execute(_APPEND_LOCK)
                    inserted = conn.execute(_INSERT_EVENTS, (encode_rows(rows),))
                    if checkpoint_rows:
                        conn.execute(_INSERT_CHECKPOINTS, (encode_rows(checkpoint_rows),))
                    check_leases = lease_writes_postgres(conn.execute, requests)
                    # The checks ran before the insert; if one fails, nothing is committed.
                    check_versions(requests, {(s, v) for s, v in found.fetchall()})
                    check_leases()
                    positions = {(s, v): p for p, s, v in inserted.fetchall()}
                    tag_rows = tag_rows_for(requests, positions, rows[0]["recorded_at"])
                    if tag_rows:
                        conn.execute(_INSERT_TAGS, (encode_rows(tag_rows),))
                    committing = True
                    conn.commit()
            except BaseException:
                if not conn.closed and not conn.broken:
                    conn.rollback()
                raise
        except psycopg.errors.UniqueViolation as exc:
            self._kept.give_back(pooled, keep)
            raise self._conflict_after_race(requests) from exc
        except (ConcurrencyConflict, LeaseLost):
            self._kept.give_back(pooled, keep)
            raise
        except psycopg.Error as exc:
            pooled.invalidate()
            pooled.close()
            if kept and not committing and isinstance(exc, psycopg.OperationalError):
                raise _DeadBeforeCommit(exc) from exc
            raise translate_error(exc) from exc
        except BaseException:
            pooled.invalidate()
            pooled.close()
            raise
        self._kept.give_back(pooled, keep)
        return positions


# A process frozen inside a transaction (a paused VM, SIGSTOP, a long GC) would keep its row
# locks, and with them every lease it holds, for as long as it is frozen; the server ends such
# a session after this, so that another replica can take over. No transaction of the stores
# waits on anything but the database inside it.
IDLE_IN_TRANSACTION_TIMEOUT = "2s"


def _session_settings(dbapi_connection: psycopg.Connection[Any], _record: Any) -> None:
    """A new connection plans every statement for its values (see the module) and may not
    sit idle inside a transaction."""
    autocommit = dbapi_connection.autocommit
    # Outside a transaction, so that no rollback takes the settings back.
    dbapi_connection.autocommit = True
    try:
        dbapi_connection.execute("SET plan_cache_mode = force_custom_plan")
        dbapi_connection.execute(
            f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'"
        )
    finally:
        dbapi_connection.autocommit = autocommit


class _DeadBeforeCommit(Exception):
    """The kept connection failed before the commit was sent: nothing of the append is
    stored, and it may be made again on another connection."""
