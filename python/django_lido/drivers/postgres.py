"""psycopg 3 and psycopg2: the transaction status is libpq's, read without a round trip.
Also what tells a connect failure that may pass, and libpq's network settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from operator import attrgetter, methodcaller
from typing import Any

from django_lido.drivers.base import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    TCP_USER_TIMEOUT_MS,
    Conn,
    Driver,
    tune_socket,
)

# SQLSTATEs of a server that is shutting down or starting up: admin_shutdown,
# crash_shutdown, cannot_connect_now.
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
# libpq reports client-side connect failures (class 08, or no SQLSTATE at all) in words.
TRANSIENT_MESSAGES = (
    "connection refused",
    "no such file or directory",  # the server's Unix socket is gone while it is down
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "terminating connection due to administrator command",
    "timeout expired",
    "connection timed out",
    "server closed the connection unexpectedly",
    "connection reset by peer",
    "could not receive data from server",
    "could not send data to server",
    "no route to host",
    "network is unreachable",
)


def pg_transient(exc: BaseException) -> bool:
    """Whether a failed connect may succeed later: the server is restarting, down or
    unreachable. Authentication, an unknown database or role, bad parameters: no."""
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if state in TRANSIENT_SQLSTATES:
        return True
    if state and not str(state).startswith("08"):
        return False  # the server gave a definite answer
    text = str(exc).lower()
    return any(m in text for m in TRANSIENT_MESSAGES)


# libpq's own network settings, given unless the user set them.
LIBPQ_NETWORK_DEFAULTS = {
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE,
    "keepalives_interval": KEEPALIVE_INTERVAL,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
}


def libpq_connect_params(given: Mapping[str, Any], time_left: float | None) -> dict[str, Any]:
    """What to add to the connect parameters ``given``: the network defaults the user did
    not set, and bounds for a connect that has ``time_left`` seconds. libpq counts
    ``connect_timeout`` in whole seconds, at least 2, so the connect also gets the time
    left, in milliseconds, as its TCP user timeout (a silent network then fails it on time);
    ``restore_user_timeout`` puts the lasting value back once connected."""
    extra: dict[str, Any] = {k: v for k, v in LIBPQ_NETWORK_DEFAULTS.items() if k not in given}
    if time_left is not None:
        if "connect_timeout" not in given or _number(given["connect_timeout"]) > time_left:
            extra["connect_timeout"] = max(2, math.ceil(time_left))
        lasting = _number(given.get("tcp_user_timeout", TCP_USER_TIMEOUT_MS))
        ms = max(1, int(time_left * 1000))
        if lasting <= 0 or ms < lasting:
            extra["tcp_user_timeout"] = ms
    return extra


def restore_user_timeout(conn: Conn, given: Mapping[str, Any]) -> None:
    """After a connect bounded by ``libpq_connect_params``: the lasting TCP user timeout."""
    lasting = int(_number(given.get("tcp_user_timeout", TCP_USER_TIMEOUT_MS)))
    tune_socket(conn.fileno(), user_timeout_ms=lasting, keepalive=False)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _psycopg_check(conn: Conn) -> None:
    # An empty query is the cheapest round trip; outside autocommit it would open a
    # transaction, so switch autocommit on around it (the connection is idle here).
    if conn.autocommit:
        conn.execute("")
        return
    conn.autocommit = True
    try:
        conn.execute("")
    finally:
        conn.autocommit = False


def _psycopg2_check(conn: Conn) -> None:
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.autocommit = autocommit


PSYCOPG = Driver(
    name="psycopg",
    status_source=attrgetter("pgconn"),
    status_attr="transaction_status",
    rollback=methodcaller("rollback"),
    check=_psycopg_check,
    close=methodcaller("close"),
    fileno=methodcaller("fileno"),
    transient=pg_transient,
)

PSYCOPG2 = Driver(
    name="psycopg2",
    # conn.info would reference the connection and keep leased ones alive.
    status_source=methodcaller("get_transaction_status"),
    status_attr="",
    rollback=methodcaller("rollback"),
    check=_psycopg2_check,
    close=methodcaller("close"),
    fileno=methodcaller("fileno"),
    transient=pg_transient,
)
