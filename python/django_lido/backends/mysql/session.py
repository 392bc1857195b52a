"""MySQL/MariaDB session state across the holders of one pooled connection.

Per physical connection, once: the driver connects (character set and collation,
``sql_mode`` and ``init_command`` from OPTIONS, autocommit on), then one statement sets
what Django's stock backend sets at every connect: ``sql_auto_is_null = 0`` and the
transaction isolation level. Django's MySQL backend sets no session time zone (it converts
in Python), so a checkout sends nothing.

An open transaction is always rolled back on return: the driver keeps the server status
flags of the last reply, so this needs no round trip when nothing is open (autocommit off
counts as open; see ``django_lido.drivers.mysql``). After that, the reset policy
(``OPTIONS["pool"]["reset"]``):

- ``"auto"`` (default): no round trip unless the session changed. Every statement that
  goes through Django's cursors is shown to the engine's classifier
  (backends/statements.py); one that can leave state on the session (every ``SET``, user
  variables, ``CREATE TEMPORARY``, ``GET_LOCK``, ``USE``, ``PREPARE``, ``LOCK TABLES``)
  marks the connection, and a marked connection gets the full reset. So does one where the
  client can see a change: ``NO_BACKSLASH_ESCAPES`` in the server status (an ``sql_mode``
  change that alters escaping), the driver's character set, and with mysqlclient the
  current database (the server reports ``USE`` through session tracking) and the
  character set the server reported. Not seen: state changed inside a stored procedure or
  function called from a plain statement, and statements sent on the driver's connection
  directly. With a mysqlclient that cannot send ``COM_RESET_CONNECTION`` (not built on
  MariaDB Connector/C) a marked connection is closed instead of reused.
- ``"full"``: on every return ``COM_RESET_CONNECTION`` (the session as after connecting:
  variables, temporary tables, locks, prepared statements gone; the current database is
  kept), then the database (``COM_INIT_DB``: always with PyMySQL, after a ``USE`` with
  mysqlclient), the character set, ``sql_mode``, ``init_command`` and the set-up again:
  2 round trips with mysqlclient, 3 with PyMySQL, 2 more with ``init_command``.
- ``"rollback"``: only the rollback.
- a callable ``reset(conn)``: yours, after the rollback; if it raises, the connection is
  closed instead of reused.
"""

from __future__ import annotations

import re
from typing import Any

from django_lido.backends.session import SessionBase
from django_lido.drivers import Conn
from django_lido.drivers.mysql import (
    SERVER_STATUS_NO_BACKSLASH_ESCAPES,
    mysqlclient_native,
    pymysql_reset_connection,
)

_VERSION = re.compile(r"(\d+)\.(\d+)")


def _isolation_variable(server_info: str) -> str:
    """The session variable for the isolation level: MariaDB before 11.1 knows only
    ``tx_isolation``; MySQL 8 only ``transaction_isolation``."""
    if "mariadb" in server_info.lower():
        match = _VERSION.search(server_info)
        if match is None or tuple(map(int, match.groups())) < (11, 1):
            return "tx_isolation"
    return "transaction_isolation"


class Session(SessionBase):
    """Per-physical-connection set-up and the reset policy of one pool (every connection
    of a pool is opened with the same parameters)."""

    def __init__(self, *, driver: str, params: dict[str, Any], isolation_level: str | None) -> None:
        self.pymysql = driver == "pymysql"
        self.native = None if self.pymysql else mysqlclient_native()
        self.database = params.get("database") or params.get("db") or None
        self.charset = params.get("charset") or None
        self.collation = params.get("collation") or None
        self.sql_mode = params.get("sql_mode")
        self.init_command = params.get("init_command")
        # "read committed" -> 'READ-COMMITTED', the variable's spelling.
        self.isolation = isolation_level.upper().replace(" ", "-") if isolation_level else None
        self.baseline: tuple[object, ...] | None = None
        # The driver's own record of the character set, as a fresh connection has it.
        self.driver_charset: tuple[object, ...] | None = None

    @property
    def can_reset(self) -> bool:
        return self.pymysql or (self.native is not None and self.native.can_reset)

    # --- set-up --------------------------------------------------------------------------
    def _execute(self, conn: Conn, sql: str, params: Any = None) -> None:
        cur = conn.cursor()
        try:
            cur.execute(sql, params)
        finally:
            cur.close()

    def _set_up_sql(self, conn: Conn) -> list[str]:
        parts = ["SESSION sql_auto_is_null = 0"]
        if self.isolation:
            var = _isolation_variable(conn.get_server_info())
            parts.append(f"SESSION {var} = '{self.isolation}'")
        return parts

    def set_up(self, conn: Conn) -> None:
        """Runs once on each new connection: one round trip."""
        self._execute(conn, "SET " + ", ".join(self._set_up_sql(conn)))
        if self.baseline is None:
            self.driver_charset = self._driver_charset(conn)
            self.baseline = self.snapshot(conn)

    # --- what the client sees without a round trip ----------------------------------------
    def _driver_charset(self, conn: Conn) -> tuple[object, ...]:
        if self.pymysql:
            return (conn.charset, conn.collation, conn.encoding)
        return (conn.encoding,)

    def snapshot(self, conn: Conn) -> tuple[object, ...]:
        if self.pymysql:
            flags = conn.server_status & SERVER_STATUS_NO_BACKSLASH_ESCAPES
            return (flags, conn.charset, conn.collation, conn.encoding)
        if self.native is None:
            return (conn.character_set_name(), conn.encoding)
        flags, schema = self.native.status_and_schema(conn)
        return (
            flags & SERVER_STATUS_NO_BACKSLASH_ESCAPES,
            schema,
            conn.character_set_name(),
            conn.encoding,
        )

    # --- reset policies ------------------------------------------------------------------
    def client_sees_change(self, conn: Conn) -> bool:
        return self.snapshot(conn) != self.baseline

    def reset_full(self, conn: Conn) -> None:
        native = self.native
        if self.pymysql:
            pymysql_reset_connection(conn)
        elif native is not None:
            native.reset_connection(conn)
        else:
            # The pool then closes the connection instead of reusing it.
            raise RuntimeError(
                "cannot reset the session: mysqlclient is not built on MariaDB Connector/C"
            )
        # COM_RESET_CONNECTION keeps the current database; a USE may have changed it.
        if self.database and (native is None or native.schema(conn) != self.database):
            conn.select_db(self.database)
        # What the driver did after its handshake (character set, sql_mode, init_command),
        # then our set-up, in that order; one statement when there is no init_command.
        before: list[str] = []
        params: list[str] = []
        if self.charset:
            before.append("NAMES %s" + (" COLLATE %s" if self.collation else ""))
            params += [self.charset, *([self.collation] if self.collation else [])]
        if self.sql_mode is not None:
            before.append("SESSION sql_mode = %s")
            params.append(self.sql_mode)
        setup = self._set_up_sql(conn)
        if self.init_command:
            if before:
                self._execute(conn, "SET " + ", ".join(before), params)
            self._execute(conn, self.init_command)
            self._execute(conn, "SET " + ", ".join(setup))
        else:
            self._execute(conn, "SET " + ", ".join(before + setup), params or None)
        self._restore_driver_charset(conn)

    def _restore_driver_charset(self, conn: Conn) -> None:
        saved = self.driver_charset
        if saved is None or self._driver_charset(conn) == saved:
            return
        if self.pymysql:
            conn.charset, conn.collation, conn.encoding = saved
        else:
            (conn.encoding,) = saved
