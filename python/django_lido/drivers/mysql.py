"""MySQL/MariaDB drivers (mysqlclient, PyMySQL) report the transaction state in the server
status flags of the last reply, which the client keeps: no round trip either."""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from collections.abc import Mapping
from operator import methodcaller
from typing import Any

from django_lido.drivers.base import (
    TCP_USER_TIMEOUT_MS,
    TX_ACTIVE,
    TX_IDLE,
    TX_INTRANS,
    TX_UNKNOWN,
    Conn,
    Driver,
    tune_socket,
)

# The server sends its status flags with every OK (and EOF) packet; the drivers keep the
# last ones. Outside autocommit a transaction may be open without the flag (PyMySQL does
# not update the flags from the EOF packet that ends a result set, and the first statement
# of a transaction may be a SELECT), so autocommit off counts as "in transaction".
SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_STATUS_NO_BACKSLASH_ESCAPES = 0x0200
COM_RESET_CONNECTION = 0x1F

# Client and server errors of a server that is down, restarting or unreachable:
# CR_CONNECTION_ERROR (Unix socket), CR_CONN_HOST_ERROR (TCP), CR_SERVER_GONE_ERROR,
# CR_SERVER_LOST, ER_SERVER_SHUTDOWN, CR_SERVER_LOST_EXTENDED.
TRANSIENT_ERRORS = frozenset({2002, 2003, 2006, 2013, 1053, 2055})


def mysql_transient(exc: BaseException) -> bool:
    """Whether a failed connect may succeed later (by the driver's error number).
    Access denied, an unknown database, too many connections: no."""
    code = exc.args[0] if exc.args else None
    return isinstance(code, int) and code in TRANSIENT_ERRORS


# A write that waits this long for the network fails (mysqlclient and PyMySQL count whole
# seconds); given unless OPTIONS set ``write_timeout``.
WRITE_TIMEOUT = 30


def mysql_network_params(
    given: Mapping[str, Any], time_left: float | None, *, pymysql: bool
) -> dict[str, Any]:
    """What to add to the connect parameters ``given``: the default write timeout, and a
    connect timeout within ``time_left`` seconds (PyMySQL takes a fraction; mysqlclient
    whole seconds, at least 1)."""
    extra: dict[str, Any] = {}
    if "write_timeout" not in given:
        extra["write_timeout"] = WRITE_TIMEOUT
    if time_left is not None:
        bound: float = max(0.001, time_left) if pymysql else max(1, math.ceil(time_left))
        current = given.get("connect_timeout")
        if not isinstance(current, int | float) or current <= 0 or current > bound:
            extra["connect_timeout"] = bound
    return extra


def tune_mysql_socket(fd: int, given: Mapping[str, Any]) -> None:
    """Unless OPTIONS set ``read_timeout`` (which bounds every read, long queries' too):
    TCP keepalives and a TCP user timeout, so that a read from a server that vanished
    ends within about a minute, not after the system's two hours."""
    if "read_timeout" not in given:
        tune_socket(fd, user_timeout_ms=TCP_USER_TIMEOUT_MS, keepalive=True)


def _mysql_tx_status(flags: int) -> int:
    if flags & SERVER_STATUS_IN_TRANS or not flags & SERVER_STATUS_AUTOCOMMIT:
        return TX_INTRANS
    return TX_IDLE


def _pymysql_status(conn: Conn) -> int:
    if conn._sock is None:  # closed, or broken by an I/O error
        return TX_UNKNOWN
    result = conn._result
    if result is not None and result.unbuffered_active:
        return TX_ACTIVE  # an unbuffered (SSCursor) result not read to the end
    return _mysql_tx_status(conn.server_status)


def _pymysql_fileno(conn: Conn) -> int:
    sock = conn._sock
    return sock.fileno() if sock is not None else -1


def _pymysql_close(conn: Conn) -> None:
    result = conn._result
    if result is not None and result.unbuffered_active:
        # Otherwise PyMySQL tries to read the rest when the result is collected, after the
        # socket is gone.
        result.unbuffered_active = False
    if not conn._closed:  # PyMySQL raises on a second close()
        conn.close()


def _mysqlclient_close(conn: Conn) -> None:
    if conn.open:  # mysqlclient raises on a second close()
        conn.close()


def pymysql_reset_connection(conn: Conn) -> None:
    """COM_RESET_CONNECTION: the session as after connecting (same database), one round
    trip. PyMySQL has no public method for it."""
    conn._execute_command(COM_RESET_CONNECTION, b"")
    conn._read_ok_packet()


class _InfoBuffers:
    """One thread's result buffers for ``mariadb_get_infov``, with their addresses."""

    def __init__(self) -> None:
        self.flags = ctypes.c_uint()
        self.flags_at = ctypes.addressof(self.flags)
        self.name = ctypes.c_char_p()
        self.name_at = ctypes.addressof(self.name)


class MySQLClientNative:
    """What mysqlclient does not expose, read from its client library (MariaDB
    Connector/C) through the connection's ``MYSQL*``: the server status flags, the current
    database and ``mysql_reset_connection``. Only the reset is a round trip."""

    # enum mariadb_value in MariaDB Connector/C's mysql.h
    SCHEMA = 15
    SERVER_STATUS = 30
    CAPSULE = b"_mysql.connection.native_connection"

    def __init__(self, path: str) -> None:
        # The status and schema reads are field reads: called through PyDLL they keep the
        # GIL, which is cheaper. One instance serves every thread, and the GIL can pass
        # between a call and the read of its result, so result buffers are per thread. The
        # reset does I/O and goes through CDLL, which releases the GIL.
        # A private prototype: setting argtypes on ctypes.pythonapi's would change it for
        # the whole process.
        self._get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
            ("PyCapsule_GetPointer", ctypes.pythonapi)
        )
        infov = ctypes.PyDLL(path).mariadb_get_infov
        infov.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
        infov.restype = ctypes.c_int
        self._infov = infov
        reset = getattr(ctypes.CDLL(path), "mysql_reset_connection", None)
        if reset is not None:
            reset.argtypes = (ctypes.c_void_p,)
            reset.restype = ctypes.c_int
        self._reset = reset
        self._local = threading.local()

    def _mysql(self, conn: Conn) -> int:
        # mysqlclient keeps the MYSQL struct inside the connection object, so its address
        # holds while the object lives; it is looked up once (a ctypes call) and kept on
        # the object. A closed connection raises (2006), as the look-up itself does.
        try:
            mysql: int = conn._lido_mysql
        except AttributeError:
            mysql = self._get_pointer(conn._get_native_connection(), self.CAPSULE)
            conn._lido_mysql = mysql
            return mysql
        if not conn.open:
            conn._get_native_connection()  # raises for a closed connection
        return mysql

    def _buffers(self) -> _InfoBuffers:
        try:
            buffers: _InfoBuffers = self._local.buffers
            return buffers
        except AttributeError:
            self._local.buffers = buffers = _InfoBuffers()
            return buffers

    def _server_status(self, mysql: int) -> int:
        """The status flags of the server's last reply."""
        buffers = self._buffers()
        if self._infov(mysql, self.SERVER_STATUS, buffers.flags_at):
            raise RuntimeError("mariadb_get_infov(MARIADB_CONNECTION_SERVER_STATUS) failed")
        return buffers.flags.value

    def status(self, conn: Conn) -> int:
        """The transaction status in libpq's codes (the pool's status hook)."""
        return _mysql_tx_status(self._server_status(self._mysql(conn)))

    def _schema(self, mysql: int) -> str | None:
        buffers = self._buffers()
        buffers.name.value = None
        self._infov(mysql, self.SCHEMA, buffers.name_at)
        name = buffers.name.value
        return name.decode() if name is not None else None

    def schema(self, conn: Conn) -> str | None:
        """The current database as the client last heard of it (the server reports a
        ``USE`` through session tracking)."""
        return self._schema(self._mysql(conn))

    def status_and_schema(self, conn: Conn) -> tuple[int, str | None]:
        """``server_status`` and ``schema`` with one look-up of the connection's MYSQL*."""
        mysql = self._mysql(conn)
        return self._server_status(mysql), self._schema(mysql)

    @property
    def can_reset(self) -> bool:
        return self._reset is not None

    def reset_connection(self, conn: Conn) -> None:
        """COM_RESET_CONNECTION (one round trip)."""
        if self._reset is None:
            raise RuntimeError("mysqlclient's client library has no mysql_reset_connection")
        if self._reset(self._mysql(conn)):
            raise conn.OperationalError(conn.errno(), conn.error())


@functools.cache
def mysqlclient_native() -> MySQLClientNative | None:
    """The native helpers, or None when mysqlclient is not built on MariaDB Connector/C
    (then a returned connection is always rolled back)."""
    try:
        from MySQLdb import _mysql

        if not hasattr(_mysql.connection, "_get_native_connection"):
            return None
        return MySQLClientNative(_mysql.__file__)
    except (ImportError, OSError, AttributeError):
        return None


PYMYSQL = Driver(
    name="pymysql",
    status_source=_pymysql_status,
    status_attr="",
    rollback=methodcaller("rollback"),
    check=methodcaller("ping", False),  # COM_PING; never reconnect (older PyMySQL would)
    close=_pymysql_close,
    fileno=_pymysql_fileno,
    transient=mysql_transient,
)


@functools.cache
def mysqlclient_driver() -> Driver:
    native = mysqlclient_native()
    return Driver(
        name="mysqlclient",
        status_source=native.status if native is not None else None,
        status_attr="",
        rollback=methodcaller("rollback"),
        check=methodcaller("ping"),  # COM_PING
        close=_mysqlclient_close,
        fileno=methodcaller("fileno"),
        transient=mysql_transient,
    )
