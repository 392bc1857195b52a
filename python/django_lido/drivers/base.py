"""The driver hooks' shape, the generic DB-API driver, and socket settings shared by the
drivers (TCP keepalives and user timeout, so that a dead network ends a blocked call)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from operator import methodcaller
from typing import Any

Conn = Any

TX_IDLE, TX_ACTIVE, TX_INTRANS, TX_INERROR, TX_UNKNOWN = range(5)


def generic_transient(exc: BaseException) -> bool:
    """A connect failure that may pass, for a driver the pool does not know: the socket
    errors of a server that is down or unreachable."""
    return isinstance(
        exc, (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
    )


@dataclass(frozen=True)
class Driver:
    """Hooks for one DB-API driver. ``status_source`` None means "unknown: always roll
    back on return"."""

    name: str
    # With ``status_attr``: conn -> an object (not referencing conn) whose attribute of that
    # name is the status, looked up once per connection so a return reads one attribute.
    # Without (""): conn -> the status, called on every return.
    status_source: Callable[[Conn], object] | None
    status_attr: str
    rollback: Callable[[Conn], object]
    check: Callable[[Conn], object]
    close: Callable[[Conn], object]
    fileno: Callable[[Conn], int]
    # exception raised by a connect -> whether it may pass (the server restarting, down,
    # unreachable), so the pool waits and retries; else it is raised at once.
    transient: Callable[[BaseException], bool] = generic_transient


# Defaults for connections on a network that may die: TCP keepalives (an idle or waiting
# connection to a vanished server is found dead after 30 + 3 x 10 = 60 s) and a TCP user
# timeout (data unacknowledged for 30 s ends the connection). Long queries are unaffected:
# the server's kernel acknowledges and answers keepalives while the query runs.
KEEPALIVE_IDLE = 30
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 30_000


def tune_socket(fd: int, *, user_timeout_ms: int | None, keepalive: bool) -> None:
    """Sets the TCP user timeout (if given) and, with ``keepalive``, the keepalive defaults
    above on the socket ``fd`` (a copy of the descriptor is used and closed). A Unix socket,
    or an option the system lacks, is left alone."""
    if fd < 0:
        return
    try:
        copy = os.dup(fd)
    except OSError:
        return
    try:
        s = socket.socket(fileno=copy)  # the family and type are read from the socket
    except OSError:
        os.close(copy)
        return
    with contextlib.suppress(OSError), s:
        if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
            return
        if user_timeout_ms is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
        if keepalive:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


def _generic_fileno(conn: Conn) -> int:
    fileno = getattr(conn, "fileno", None)
    return fileno() if callable(fileno) else -1


def _generic_check(conn: Conn) -> None:
    cur = conn.cursor()
    try:
        cur.execute("SELECT 1")
        cur.fetchall()
    finally:
        cur.close()
    conn.rollback()


GENERIC = Driver(
    name="dbapi",
    status_source=None,
    status_attr="",
    rollback=methodcaller("rollback"),
    check=_generic_check,
    close=methodcaller("close"),
    fileno=_generic_fileno,
)
