"""PostgreSQL session state across the holders of one pooled connection.

A connection goes from holder to holder; what one holder changed in its session must not
reach the next. Open and failed transactions are always rolled back by the pool. After
that, the reset policy (``OPTIONS["pool"]["reset"]``) decides:

- ``"auto"`` (default): no round trip unless something changed. The server reports some
  settings to the client whenever they change (``application_name``, ``DateStyle``,
  ``IntervalStyle``, ``client_encoding``, ``standard_conforming_strings``,
  ``session_authorization``, ``is_superuser``, ``default_transaction_read_only``, and on
  newer servers ``search_path`` and ``role``); the time zone is put right at each
  checkout. If any of the others differs from a freshly set-up connection, the full reset
  runs. State the server does not report (``SET`` of other settings, ``SET ROLE`` and
  ``search_path`` on older servers, temporary tables, advisory locks, ``LISTEN``, open
  ``WITH HOLD`` cursors) stays, exactly as it would on a persistent connection.
- ``"full"``: on every return, one round trip that resets all of it (``DISCARD ALL`` less
  ``DEALLOCATE ALL``, so that prepared statements survive), then the per-connection set-up
  again.
- ``"rollback"``: only the rollback.
- a callable ``reset(conn)``: yours, after the rollback; if it raises, the connection is
  closed instead of reused.
"""

from __future__ import annotations

from django_lido.backends.session import SessionBase
from django_lido.drivers import Conn

REPORTED_PARAMETERS = (
    "application_name",
    "DateStyle",
    "IntervalStyle",
    "client_encoding",
    "standard_conforming_strings",
    "session_authorization",
    "is_superuser",
    "default_transaction_read_only",
    "search_path",
    "role",
)

# DISCARD ALL cannot run inside a transaction block (and a multi-statement query is one);
# these are its parts, less DEALLOCATE ALL and DISCARD PLANS.
FULL_RESET_SQL = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)


def _psycopg3_snapshot(conn: Conn) -> tuple[bytes | None, ...]:
    return tuple(map(conn.pgconn.parameter_status, _REPORTED_BYTES))


def _psycopg2_snapshot(conn: Conn) -> tuple[str | None, ...]:
    return tuple(map(conn.get_parameter_status, REPORTED_PARAMETERS))


_REPORTED_BYTES = tuple(name.encode() for name in REPORTED_PARAMETERS)


class Session(SessionBase):
    """Per-physical-connection set-up and the reset policy of one pool.

    Every connection of a pool is set up the same way, so the reported settings of the
    first one set up are what every connection must show when it comes back.
    """

    def __init__(self, *, role: str | None, psycopg3: bool) -> None:
        self.role = role
        self.psycopg3 = psycopg3
        self.snapshot = _psycopg3_snapshot if psycopg3 else _psycopg2_snapshot
        self.baseline: tuple[object, ...] | None = None

    def _execute(self, conn: Conn, sql: str) -> None:
        # Without parameters both drivers use the simple query protocol, which runs several
        # statements in one round trip.
        cur = conn.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()
        if not conn.autocommit:
            conn.commit()

    def set_up(self, conn: Conn) -> None:
        """Runs once on each new connection (and again after a full reset)."""
        if self.role:
            self._execute(conn, "SET ROLE " + self._literal(conn, self.role))
        if self.baseline is None:
            self.baseline = self.snapshot(conn)

    def _literal(self, conn: Conn, value: str) -> str:
        if self.psycopg3:
            from psycopg.sql import Literal

            return Literal(value).as_string(conn)
        from psycopg2.extensions import QuotedString

        quoted = QuotedString(value)
        quoted.prepare(conn)
        literal: str = quoted.getquoted().decode()
        return literal

    def reset_auto(self, conn: Conn) -> None:
        if self.snapshot(conn) != self.baseline:
            self.reset_full(conn)

    def reset_full(self, conn: Conn) -> None:
        self._execute(conn, FULL_RESET_SQL)
        self.set_up(conn)
