"""PostgreSQL session state across the holders of one pooled connection.

A connection goes from holder to holder; what one holder changed in its session must not
reach the next. Open and failed transactions are always rolled back by the pool. After
that, the reset policy (``OPTIONS["pool"]["reset"]``) decides:

- ``"auto"`` (default): no round trip unless something changed. Every statement that goes
  through Django's cursors is shown to the engine's classifier (backends/statements.py);
  one that can leave state on the session beyond its transaction (``SET`` but not
  ``SET LOCAL``, ``RESET``, ``SET ROLE``, ``SET SESSION AUTHORIZATION``, ``CREATE TEMP``,
  ``LISTEN``, session advisory locks, ``set_config``, ``DECLARE ... WITH HOLD``,
  ``PREPARE``, ``DO``) marks the connection, and a marked connection gets the full reset.
  So does one whose reported settings differ from a freshly set-up connection's: the
  server reports some settings to the client whenever they change (``application_name``,
  ``DateStyle``, ``IntervalStyle``, ``client_encoding``, ``standard_conforming_strings``,
  ``session_authorization``, ``is_superuser``, ``default_transaction_read_only``, and on
  newer servers ``search_path`` and ``role``), which covers changes made inside server
  functions too. The time zone is put right at each checkout. Not seen: other state
  changed inside a server function (a function that calls ``set_config`` or takes an
  advisory lock, called from a plain ``SELECT`` whose text does not name it), and
  statements sent on the driver's connection directly, bypassing Django's cursors.
- ``"full"``: on every return, one round trip that resets all of it (``DISCARD ALL``, except
  that of the prepared statements only those made with SQL ``PREPARE`` are deallocated, so
  that the driver's own survive), then the per-connection set-up again.
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
# these are its parts, less DISCARD PLANS, and with DEALLOCATE ALL narrowed to the
# statements made with SQL PREPARE: psycopg's own (protocol-level) prepared statements
# survive, and psycopg still knows them.
FULL_RESET_SQL = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; "
    "DO $lido$DECLARE n text; BEGIN FOR n IN SELECT name FROM pg_prepared_statements"
    " WHERE from_sql LOOP EXECUTE 'DEALLOCATE ' || quote_ident(n); END LOOP; END$lido$"
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

    def client_sees_change(self, conn: Conn) -> bool:
        return self.snapshot(conn) != self.baseline

    def reset_full(self, conn: Conn) -> None:
        self._execute(conn, FULL_RESET_SQL)
        self.set_up(conn)
