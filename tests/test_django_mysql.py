"""The Django MySQL/MariaDB backend on the pool, against a throwaway MariaDB: mysqlclient in
this process, PyMySQL (``pymysql.install_as_MySQLdb()``) in a subprocess."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import django_lido
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.test.utils import override_settings
from django_helpers import (
    assert_short_connect_matches_djangos,
    configure,
    global_alias,
    handler,
    one,
    unique,
    write_in_a_thread_that_dies,
)
from helpers import eventually

from harness.mariadb import MariaDBServer

if importlib.util.find_spec("MySQLdb") is None and importlib.util.find_spec("pymysql") is None:
    pytest.skip("needs mysqlclient or PyMySQL", allow_module_level=True)

ENGINE = "django_lido.backends.mysql"
APP_DB = "lido_app"
OTHER_DB = "lido_other"
CREATION_DB = "lido_mysql_creation_src"
CREATION_ALIAS = "lido_mysql_testdb"

needs_mysqlclient = pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is None, reason="needs mysqlclient"
)


@pytest.fixture(scope="module")
def maria() -> Iterator[MariaDBServer]:
    """A server this module owns outright (a test restarts it)."""
    with MariaDBServer() as server:
        for name in (APP_DB, OTHER_DB, CREATION_DB):
            server.create_database(name)
        yield server


def mysql_db(
    server: Any,
    *,
    name: str = APP_DB,
    engine: str = ENGINE,
    pool: Any = None,
    options: dict[str, Any] | None = None,
    **entry: Any,
) -> dict[str, Any]:
    """A DATABASES entry for ``server``. Unless ``pool`` is False or None, it gets a unique
    pool name, which keeps each test's pool its own."""
    opts: dict[str, Any] = {}
    if isinstance(pool, dict):
        opts["pool"] = {"name": unique("lido_my"), **pool}
    elif pool is not None:
        opts["pool"] = pool
    opts.update(options or {})
    return {"ENGINE": engine, **server.conn_params(name), "OPTIONS": opts, **entry}


@pytest.fixture(scope="module")
def dj(maria: MariaDBServer) -> MariaDBServer:
    pytest.importorskip("MySQLdb")
    configure(None, default=mysql_db(maria, pool={"max_size": 4}))
    return maria


def general_log(server: MariaDBServer) -> Any:
    """A context manager: the server's general log (every command of every client) is on
    inside it; ``entries(thread_id)`` then gives ``(command, argument)`` of one connection."""

    class Log:
        def __enter__(self) -> Log:
            server.execute("TRUNCATE mysql.general_log")
            server.execute("SET GLOBAL log_output = 'TABLE', GLOBAL general_log = 1")
            return self

        def __exit__(self, *exc: object) -> None:
            server.execute("SET GLOBAL general_log = 0")

        def entries(self, thread_id: int) -> list[tuple[str, str]]:
            rows = server.execute(
                "SELECT command_type, CONVERT(argument USING utf8mb4) FROM mysql.general_log"
                " WHERE thread_id = %s ORDER BY event_time",
                [thread_id],
            )
            return [(str(c), str(a)) for c, a in rows]

    return Log()


def kill(server: MariaDBServer, thread_id: int) -> None:
    server.execute(f"KILL CONNECTION {int(thread_id)}")
    eventually(
        lambda: (
            not server.execute(
                "SELECT 1 FROM information_schema.processlist WHERE id = %s", [thread_id]
            )
        ),
        f"connection {thread_id} gone",
    )


# --- the driver hooks, on a plain Pool ---------------------------------------------------------

DRIVERS = [
    pytest.param("MySQLdb", marks=needs_mysqlclient, id="mysqlclient"),
    pytest.param(
        "pymysql",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("pymysql") is None, reason="needs PyMySQL"
        ),
        id="pymysql",
    ),
]


def plain_pool(server: MariaDBServer, driver: str, **options: Any) -> django_lido.Pool:
    def connect() -> Any:
        return server.connect(APP_DB, driver=driver, autocommit=False)

    return django_lido.Pool(connect, name=unique("lido_plain"), **options)


def scalar(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_hooks(maria: MariaDBServer, driver: str) -> None:
    from django_lido.drivers import TX_IDLE, TX_INTRANS, driver_for

    conn = maria.connect(APP_DB, driver=driver, autocommit=True)
    try:
        hooks = driver_for(conn)
        assert hooks.name == {"MySQLdb": "mysqlclient", "pymysql": "pymysql"}[driver]
        assert hooks.fileno(conn) >= 0
        status = hooks.status_source
        assert status is not None
        assert status(conn) == TX_IDLE
        with conn.cursor() as cur:
            cur.execute("BEGIN")
        assert status(conn) == TX_INTRANS
        conn.rollback()
        assert status(conn) == TX_IDLE
        conn.autocommit(False)  # outside autocommit a transaction may be open
        assert status(conn) == TX_INTRANS
        hooks.check(conn)  # COM_PING
    finally:
        conn.close()
    try:  # a closed connection raises or reports a status that is never reused
        code = status(conn)
    except Exception:
        code = None
    assert code not in (TX_IDLE, TX_INTRANS)
    hooks.close(conn)  # closing twice is quiet


def test_native_status_reads_are_right_from_many_threads(maria: MariaDBServer) -> None:
    # One MySQLClientNative serves every thread; a result buffer shared between threads
    # gave wrong reads when the GIL passed between the C call and the read of its result.
    pytest.importorskip("MySQLdb")
    import sys

    from django_lido.drivers import TX_IDLE, TX_INTRANS
    from django_lido.drivers.mysql import mysqlclient_native

    native = mysqlclient_native()
    if native is None:
        pytest.skip("mysqlclient is not built on MariaDB Connector/C")
    idle = maria.connect(APP_DB, driver="MySQLdb", autocommit=True)
    busy = maria.connect(APP_DB, driver="MySQLdb", autocommit=True)
    with busy.cursor() as cur:
        cur.execute("BEGIN")
    wrong: list[str] = []

    def read(conn: Any, expected: int) -> None:
        for _ in range(20_000):
            if native.status(conn) != expected:
                wrong.append(f"status {expected}")
            if native.schema(conn) != APP_DB:
                wrong.append("schema")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL round as often as CPython allows
    try:
        threads = [
            threading.Thread(target=read, args=(c, tx))
            for c, tx in [(idle, TX_IDLE), (busy, TX_INTRANS)] * 2
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        idle.close()
        busy.close()
    assert wrong == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_plain_pool_never_hands_on_an_open_read_only_transaction(
    maria: MariaDBServer, driver: str
) -> None:
    # No Django here to switch autocommit on at the next checkout (which would end the
    # transaction): the pool's rollback alone must end it.
    table = unique("lido_snap")
    maria.execute(f"CREATE TABLE {table} (n int) ENGINE=InnoDB", dbname=APP_DB)
    with plain_pool(maria, driver, max_size=1) as pool:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert scalar(conn, f"SELECT count(*) FROM {table}") == 0  # snapshot taken
        pool.putconn(conn)
        maria.execute(f"INSERT INTO {table} VALUES (1)", dbname=APP_DB)
        again = pool.getconn()
        assert again is conn
        assert scalar(again, f"SELECT count(*) FROM {table}") == 1
        pool.putconn(again)


@pytest.mark.parametrize("driver", DRIVERS)
def test_plain_pool_does_not_reuse_a_closed_or_busy_connection(
    maria: MariaDBServer, driver: str
) -> None:
    with plain_pool(maria, driver, max_size=1) as pool:
        conn = pool.getconn()
        conn.close()  # the holder closed it
        pool.putconn(conn)
        assert pool.stats()["returns_bad"] == 1
        conn = pool.getconn()
        assert scalar(conn, "SELECT 1") == 1
        pool.putconn(conn)
        # Closed after a first return (what the status read learnt of it is cached).
        conn = pool.getconn()
        conn.close()
        pool.putconn(conn)
        assert pool.stats()["returns_bad"] == 2
        if driver == "pymysql":
            import pymysql.cursors

            conn = pool.getconn()
            cur = conn.cursor(pymysql.cursors.SSCursor)
            cur.execute("SELECT seq FROM seq_1_to_1000")
            cur.fetchone()  # an unbuffered result, not read to the end
            pool.putconn(conn)
            assert pool.stats()["returns_bad"] == 3


# --- checkout and return ----------------------------------------------------------------------


def test_close_returns_the_connection_and_connect_reuses_it(dj: MariaDBServer) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 2}))["default"]
    ids = []
    for _ in range(3):
        ids.append(one(w, "SELECT CONNECTION_ID()"))
        w.close()
        assert w.connection is None
    assert len(set(ids)) == 1
    stats = w.pool.stats()
    assert (stats["pool_size"], stats["in_use"], stats["requests_num"]) == (1, 0, 3)


def test_pooling_is_on_by_default_and_off_with_false(dj: MariaDBServer) -> None:
    w = handler(default=mysql_db(dj))["default"]
    assert isinstance(w.pool, django_lido.Pool)
    assert w.pool.stats()["pool_max"] == 10

    w = handler(default=mysql_db(dj, pool=False))["default"]
    assert w.pool is None
    ids = set()
    for _ in range(2):
        ids.add(one(w, "SELECT CONNECTION_ID()"))
        w.close()
    assert len(ids) == 2, "without a pool, close() closes the server connection"


def test_other_options_still_reach_the_driver(dj: MariaDBServer) -> None:
    w = handler(
        default=mysql_db(
            dj,
            pool={"max_size": 1},
            options={
                "init_command": "SET SESSION wait_timeout = 4321",
                "isolation_level": "repeatable read",
                "MAX_CONNS": 1,
            },
        )
    )["default"]
    assert one(w, "SELECT @@session.wait_timeout") == 4321
    assert one(w, "SELECT @@session.tx_isolation") == "REPEATABLE-READ"
    assert one(w, "SELECT @@session.sql_auto_is_null") == 0
    assert one(w, "SELECT @@autocommit") == 1
    w.close()


def test_pools_are_keyed_by_connection_parameters(dj: MariaDBServer) -> None:
    base = mysql_db(dj, pool={"max_size": 2})
    h = handler(
        default=base,
        replica=copy.deepcopy(base),
        other_db={**copy.deepcopy(base), "NAME": OTHER_DB},
        serializable={
            **copy.deepcopy(base),
            "OPTIONS": {**base["OPTIONS"], "isolation_level": "serializable"},
        },
    )
    assert h["default"].pool is h["replica"].pool
    assert h["default"].pool is not h["other_db"].pool
    assert h["default"].pool is not h["serializable"].pool
    assert one(h["serializable"], "SELECT @@tx_isolation") == "SERIALIZABLE"
    assert one(h["default"], "SELECT @@tx_isolation") == "READ-COMMITTED"
    for alias in ("default", "serializable"):
        h[alias].close()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"pool": {"max_sise": 4}}, "unknown pool option(s) 'max_sise'"),
        ({"pool": {"min_size": 5, "max_size": 2}}, "min_size=5: an integer from 0 to max_size (2)"),
        ({"pool": {"timeout": -1}}, "timeout=-1"),
        ({"pool": {"max_size": 0}}, "max_size=0: an integer from 1 to 10000"),
        ({"pool": {"lifetime_jitter": 0.9}}, "lifetime_jitter=0.9: a fraction from 0.0 to 0.5"),
        ({"pool": "yes"}, "must be a dict of pool options, True or False"),
        ({"pool": {"num_workers": 2}}, "'num_workers'] is not supported"),
        ({"pool": {"reset": "everything"}}, "'auto', 'full', 'rollback'"),
        ({"pool": {"max_size": 4}, "MAX_CONNS": 8}, "['MAX_CONNS']=8 conflicts with"),
        ({"pool": False, "MAX_CONNS": 8}, "is False (no pool) but MAX_CONNS is set"),
    ],
)
def test_bad_pool_options_name_the_setting(
    dj: MariaDBServer, options: dict[str, Any], expected: str
) -> None:
    w = handler(default=mysql_db(dj, options=options))["default"]
    with pytest.raises(ImproperlyConfigured) as info:
        w.ensure_connection()
    message = str(info.value)
    assert "DATABASES['default']['OPTIONS']" in message
    assert expected in message


def test_timeout_error_is_ours_and_the_drivers(dj: MariaDBServer) -> None:
    import MySQLdb
    from django.db import OperationalError

    h = handler(default=mysql_db(dj, pool={"max_size": 1, "timeout": 0.2}))
    holder = h["default"]
    holder.ensure_connection()
    try:
        other = holder.copy()
        with pytest.raises(django_lido.PoolTimeout, match="size 1/1, in use 1") as info:
            other.connect()
        assert isinstance(info.value, MySQLdb.OperationalError)
        # Through Django's error wrapping, as for any connect error.
        with pytest.raises(OperationalError, match="size 1/1, in use 1"):
            other.ensure_connection()
    finally:
        holder.close()


def test_min_size_connections_are_opened_and_set_up_in_the_background(dj: MariaDBServer) -> None:
    w = handler(
        default=mysql_db(
            dj,
            pool={"min_size": 2, "max_size": 3, "open": True},
            options={"isolation_level": "serializable"},
        )
    )["default"]
    assert w.pool.stats()["pool_size"] == 2
    assert one(w, "SELECT @@tx_isolation") == "SERIALIZABLE"
    w.close()


def test_threads_share_the_pool(dj: MariaDBServer, table: str) -> None:
    h = handler(default=mysql_db(dj, pool={"max_size": 3, "timeout": 30}))
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            w = h["default"]
            for i in range(30):
                w.set_autocommit(False)  # what atomic() does (it takes django.db.connections)
                with w.cursor() as cur:
                    cur.execute(f"INSERT INTO {table} VALUES (%s)", [n * 100 + i])
                    if i % 3 == 0:
                        cur.execute(f"INSERT INTO {table} VALUES (-1)")  # left uncommitted
                if i % 3:
                    w.commit()
                w.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert dj.execute(f"SELECT count(*) FROM {table}", dbname=APP_DB) == [(160,)]
    stats = h["default"].pool.stats()
    assert stats["connections_num"] <= 3 and stats["in_use"] == 0


# --- the lean path: a checkout sends nothing, the set-up runs once ---------------------------


def test_set_up_runs_once_and_checkouts_send_nothing(dj: MariaDBServer) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 1, "check_after_idle": 60}))["default"]
    with general_log(dj) as log:
        thread_id = one(w, "SELECT CONNECTION_ID()")  # opens and sets up the connection
        w.close()
        for _ in range(20):
            w.ensure_connection()
            w.close()
        one(w, "SELECT 42")  # the log does see traffic
        w.close()
    entries = log.entries(thread_id)
    commands = [c for c, _ in entries]
    assert commands[0] == "Connect"
    queries = [a for c, a in entries if c == "Query"]
    assert queries == [
        "SET NAMES utf8mb4",  # mysqlclient's, at connect
        "SET SESSION sql_auto_is_null = 0, SESSION tx_isolation = 'READ-COMMITTED'",
        "SELECT CONNECTION_ID()",
        "SELECT 42",
    ], entries
    assert commands.count("Connect") == 1
    assert "Quit" not in commands and "Ping" not in commands


def test_plain_requests_send_nothing_on_return(dj: MariaDBServer, table: str) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 1, "check_after_idle": 60}))["default"]
    thread_id = one(w, "SELECT CONNECTION_ID()")
    w.close()
    with general_log(dj) as log:
        for n in range(3):
            with w.cursor() as cur:
                cur.execute(f"INSERT INTO `{table}` (n) VALUES (%s)", [n])
                cur.execute(f"SELECT `{table}`.`n` FROM `{table}` WHERE `{table}`.`n` = %s", [n])
                cur.execute(f"UPDATE `{table}` SET n = %s WHERE n = %s", [n + 10, n])
                cur.execute("SELECT @@max_connections")
            w.set_autocommit(False)
            sid = w.savepoint()
            with w.cursor() as cur:
                cur.execute(f"DELETE FROM `{table}` WHERE n = %s", [n + 10])
            w.savepoint_commit(sid)
            w.commit()
            w.set_autocommit(True)
            w.close()
    queries = [a for c, a in log.entries(thread_id) if c == "Query"]
    # Only what the requests sent (Django's autocommit changes among it); no reset, which
    # would show as the set-up statement after COM_RESET_CONNECTION.
    assert not [q for q in queries if "sql_auto_is_null" in q], queries
    toggles = ["SET autocommit=0", "SET autocommit=1"] * 3
    assert [q for q in queries if q.startswith("SET")] == toggles
    assert len(queries) == 3 * 10, queries  # 5 statements, 2 SETs, savepoint, release, commit
    assert one(w, "SELECT CONNECTION_ID()") == thread_id
    w.close()


def test_short_connect_leaves_the_wrapper_as_djangos_connect_does(dj: MariaDBServer) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 1}, CONN_MAX_AGE=None))["default"]
    assert_short_connect_matches_djangos(w)
    w = handler(
        default=mysql_db(dj, pool={"max_size": 1}, options={"isolation_level": "serializable"})
    )["default"]
    assert_short_connect_matches_djangos(w)
    assert one(w, "SELECT @@tx_isolation") == "SERIALIZABLE"
    w.close()


def test_stock_backend_sets_up_at_every_connect(dj: MariaDBServer) -> None:
    # The contrast: Django's own backend connects and sets up the session every time.
    w = handler(default=mysql_db(dj, engine="django.db.backends.mysql"))["default"]
    with general_log(dj) as log:
        ids = []
        for _ in range(3):
            ids.append(one(w, "SELECT CONNECTION_ID()"))
            w.close()
    assert len(set(ids)) == 3
    sets = [a for c, a in log.entries(ids[-1]) if c == "Query" and "ISOLATION" in a.upper()]
    assert len(sets) == 1


# --- nothing passes between holders ----------------------------------------------------------


@pytest.fixture
def table(dj: MariaDBServer) -> str:
    name = unique("lido_writes")
    dj.execute(f"CREATE TABLE {name} (n int) ENGINE=InnoDB", dbname=APP_DB)
    return name


def test_uncommitted_writes_never_reach_the_next_holder(dj: MariaDBServer, table: str) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 1}))["default"]
    w.set_autocommit(False)
    with w.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    thread_id = one(w, "SELECT CONNECTION_ID()")
    w.close()  # returned mid-transaction
    assert one(w, f"SELECT count(*) FROM {table}") == 0
    assert one(w, "SELECT CONNECTION_ID()") == thread_id
    assert w.pool.stats()["returns_rolled_back"] == 1
    w.close()
    # Django's autocommit at checkout would have committed it (SET autocommit=1 commits).
    assert dj.execute(f"SELECT count(*) FROM {table}", dbname=APP_DB) == [(0,)]


def test_a_transaction_begun_in_autocommit_mode_is_rolled_back(
    dj: MariaDBServer, table: str
) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 1}))["default"]
    with w.cursor() as cur:
        cur.execute("START TRANSACTION")
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    w.close()
    assert w.pool.stats()["returns_rolled_back"] == 1
    with w.cursor() as cur:
        cur.execute("COMMIT")  # would commit the insert if it had been left open
    assert one(w, f"SELECT count(*) FROM {table}") == 0
    w.close()


def test_a_read_only_transaction_does_not_pin_its_snapshot(dj: MariaDBServer, table: str) -> None:
    # Under REPEATABLE READ an open transaction keeps reading its first snapshot; a
    # returned connection must not hand it to the next holder.
    entry = mysql_db(dj, pool={"max_size": 1}, options={"isolation_level": "repeatable read"})
    w = handler(default=entry)["default"]
    w.set_autocommit(False)
    assert one(w, f"SELECT count(*) FROM {table}") == 0
    w.close()
    dj.execute(f"INSERT INTO {table} VALUES (1)", dbname=APP_DB)
    assert one(w, f"SELECT count(*) FROM {table}") == 1
    w.close()


def test_a_dead_threads_connection_is_reclaimed_and_its_writes_lost(
    dj: MariaDBServer, table: str
) -> None:

    h = handler(default=mysql_db(dj, pool={"max_size": 1, "timeout": 10}))

    write_in_a_thread_that_dies(h, f"INSERT INTO {table} VALUES (1)")
    w = h["default"]
    assert one(w, f"SELECT count(*) FROM {table}") == 0
    # Given back when the thread ended (rolled back), not lost: the same connection again.
    s = w.pool.stats()
    assert (s["connections_leaked"], s["connections_num"]) == (0, 1)
    w.close()


@needs_mysqlclient
def test_reset_auto_puts_back_what_the_client_sees(dj: MariaDBServer) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 1}))["default"]
    thread_id = one(w, "SELECT CONNECTION_ID()")
    w.close()
    for statement in (
        "USE " + OTHER_DB,
        "SET NAMES latin1",
        "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
    ):
        # On the driver's connection, past the statement hook: what the client sees alone.
        w.ensure_connection()
        with w.connection.cursor() as cur:
            cur.execute(statement)
        w.close()
        assert one(w, "SELECT CONNECTION_ID()") == thread_id
        assert one(w, "SELECT DATABASE()") == APP_DB
        assert one(w, "SELECT @@character_set_client") == "utf8mb4"
        assert "NO_BACKSLASH_ESCAPES" not in one(w, "SELECT @@sql_mode")
        assert one(w, "SELECT @@tx_isolation") == "READ-COMMITTED"
        w.close()
    # What the client cannot see, sent past the statement hook, stays (docs/django.md);
    # through Django's cursors it does not (test_no_session_state_reaches_the_next_holder).
    w.ensure_connection()
    with w.connection.cursor() as cur:
        cur.execute("SET @lido = 1")
    w.close()
    assert one(w, "SELECT @lido") == 1
    w.close()


# What a holder can leave on its session (issue 15, point 5): the statements that leave it,
# and a query whose answer shows it ("error" if it fails). None of it may reach the next
# holder of the same physical connection with the default reset policy.
SESSION_STATE = {
    "session_variable": (["SET SESSION wait_timeout = 77"], "SELECT @@session.wait_timeout"),
    "user_variable": (["SET @lido = 1"], "SELECT @lido"),
    "user_variable_in_select": (["SELECT @lido_sel := 5"], "SELECT @lido_sel"),
    "temp_table": (
        ["CREATE TEMPORARY TABLE lido_scratch (n int)"],
        "SELECT COUNT(*) FROM lido_scratch",
    ),
    "get_lock": (
        ["SELECT GET_LOCK('lido_lock', 0)"],
        "SELECT IS_USED_LOCK('lido_lock') = CONNECTION_ID()",
    ),
    "prepared_statement": (["PREPARE lido_statement FROM 'SELECT 7'"], "EXECUTE lido_statement"),
    "isolation_level": (
        ["SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
        "SELECT @@tx_isolation",
    ),
    # Seen by the client (with mysqlclient), before this point too.
    "use": (["USE " + OTHER_DB], "SELECT DATABASE()"),
    "names": (["SET NAMES latin1"], "SELECT @@character_set_client"),
    "sql_mode": (["SET sql_mode = 'NO_BACKSLASH_ESCAPES'"], "SELECT @@sql_mode"),
}


def probe(w: Any, sql: str) -> Any:
    try:
        return one(w, sql)
    except DatabaseError:
        return "error"


@pytest.mark.parametrize("item", list(SESSION_STATE))
def test_no_session_state_reaches_the_next_holder(dj: MariaDBServer, item: str) -> None:
    leave, query = SESSION_STATE[item]
    w = handler(default=mysql_db(dj, pool={"max_size": 1}))["default"]
    thread_id = one(w, "SELECT CONNECTION_ID()")
    fresh = probe(w, query)
    with w.cursor() as cur:
        for sql in leave:
            cur.execute(sql)
    left = probe(w, query)
    assert left != fresh, "the first holder did not change its session"
    w.close()
    assert one(w, "SELECT CONNECTION_ID()") == thread_id, "not the same physical connection"
    assert probe(w, query) == fresh
    w.close()


def test_reset_full_clears_all_session_state(dj: MariaDBServer) -> None:
    options = {"init_command": "SET SESSION wait_timeout = 4321", "sql_mode": "TRADITIONAL"}
    w = handler(default=mysql_db(dj, pool={"max_size": 1, "reset": "full"}, options=options))[
        "default"
    ]
    thread_id = one(w, "SELECT CONNECTION_ID()")
    with w.cursor() as cur:
        cur.execute("SET @lido = 1")
        cur.execute("CREATE TEMPORARY TABLE lido_scratch (n int)")
        cur.execute("SELECT GET_LOCK('lido_lock', 0)")
        cur.execute("SET SESSION wait_timeout = 77, SESSION sql_mode = 'ANSI'")
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        cur.execute("SET NAMES latin1")
        cur.execute("USE " + OTHER_DB)
    w.close()
    assert one(w, "SELECT CONNECTION_ID()") == thread_id
    assert one(w, "SELECT @lido") is None
    assert one(w, "SELECT IS_USED_LOCK('lido_lock')") is None
    with w.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE lido_scratch (n int)")  # the old one is gone
    assert one(w, "SELECT DATABASE()") == APP_DB
    assert one(w, "SELECT @@session.wait_timeout") == 4321  # init_command again
    assert "TRADITIONAL" in one(w, "SELECT @@session.sql_mode") or "STRICT_ALL_TABLES" in one(
        w, "SELECT @@session.sql_mode"
    )
    assert one(w, "SELECT @@tx_isolation") == "READ-COMMITTED"
    assert one(w, "SELECT @@sql_auto_is_null") == 0
    assert one(w, "SELECT @@character_set_client") == "utf8mb4"
    assert one(w, "SELECT %s", ["ü€"]) == "ü€"
    w.close()
    assert w.pool.stats()["connections_num"] == 1


@needs_mysqlclient
def test_reset_full_costs_one_statement_after_the_reset(dj: MariaDBServer) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 1, "reset": "full"}))["default"]
    thread_id = one(w, "SELECT CONNECTION_ID()")
    with general_log(dj) as log:
        w.close()
    # COM_RESET_CONNECTION itself is not in MariaDB's general log.
    assert log.entries(thread_id) == [
        (
            "Query",
            "SET NAMES 'utf8mb4', SESSION sql_auto_is_null = 0,"
            " SESSION tx_isolation = 'READ-COMMITTED'",
        )
    ]


def test_reset_rollback_only_rolls_back(dj: MariaDBServer) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 1, "reset": "rollback"}))["default"]
    with w.cursor() as cur:
        cur.execute("USE " + OTHER_DB)
    w.close()
    assert one(w, "SELECT DATABASE()") == OTHER_DB
    w.close()


# --- connections the server closed are never handed out --------------------------------------


@pytest.mark.parametrize(
    "pool",
    [
        pytest.param({"check_after_idle": None}, id="socket-probe"),
        pytest.param({"probe": False, "check_after_idle": 0.5}, id="ping-after-idle"),
    ],
)
def test_a_killed_idle_connection_is_replaced_transparently(
    dj: MariaDBServer, pool: dict[str, Any]
) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 2, **pool}))["default"]
    thread_id = one(w, "SELECT CONNECTION_ID()")
    w.close()
    kill(dj, thread_id)
    if not pool.get("probe", True):
        time.sleep(0.6)
    assert one(w, "SELECT CONNECTION_ID()") != thread_id
    stats = w.pool.stats()
    assert stats["closes_check_failed"] == 1
    assert stats["pool_size"] == 1
    w.close()


def test_a_connection_killed_while_held_is_not_reused(dj: MariaDBServer) -> None:
    from django.db import OperationalError

    w = handler(default=mysql_db(dj, pool={"max_size": 1, "check_after_idle": None}))["default"]
    thread_id = one(w, "SELECT CONNECTION_ID()")
    kill(dj, thread_id)
    with pytest.raises(OperationalError):  # the holder sees it, as without a pool
        one(w, "SELECT 1")
    w.close()
    assert one(w, "SELECT CONNECTION_ID()") != thread_id
    w.close()


def test_wait_timeout_closed_connections_are_never_handed_out(dj: MariaDBServer) -> None:
    with MariaDBServer(wait_timeout=1) as server:
        server.create_database(APP_DB)
        for pool in ({"check_after_idle": None}, {"probe": False, "check_after_idle": 0.5}):
            h = handler(default=mysql_db(server, pool={"max_size": 3, **pool}))
            held = [h["default"]] + [h["default"].copy() for _ in range(2)]
            ids = {one(w, "SELECT CONNECTION_ID()") for w in held}
            for w in held:
                w.close()
            eventually(lambda: server.connection_count() == 0, "idle connections timed out")
            for w in held:
                assert one(w, "SELECT CONNECTION_ID()") not in ids
            for w in held:
                w.close()
            assert held[0].pool.stats()["closes_check_failed"] == 3


@pytest.mark.fault
def test_server_restart_is_transparent(dj: MariaDBServer) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 2, "check_after_idle": None}))["default"]
    one(w, "SELECT 1")
    w.close()
    dj.restart()
    assert one(w, "SELECT 1") == 1
    assert w.pool.stats()["closes_check_failed"] == 1
    w.close()


@pytest.mark.fault
def test_a_stopped_server_is_waited_for_then_reported_with_the_cause(dj: MariaDBServer) -> None:
    import MySQLdb
    from django.db.utils import OperationalError

    w = handler(default=mysql_db(dj, pool={"max_size": 2, "timeout": 1.0}))["default"]
    one(w, "SELECT 1")
    w.close()
    w.close_pool()  # nothing idle: the next connect must reach the server
    starter = threading.Timer(0.2, dj.start)
    dj.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(OperationalError) as info:
            w.ensure_connection()
        assert time.monotonic() - t0 <= 1.1  # the timeout + 10%
        timeout = info.value.__cause__
        assert isinstance(timeout, django_lido.PoolTimeout), repr(timeout)
        assert "cannot be reached" in str(timeout)
        assert isinstance(timeout.__cause__, MySQLdb.OperationalError)
        # Back within the timeout: the connect waits for it instead of failing.
        starter.start()
        w2 = handler(default=mysql_db(dj, pool={"max_size": 2, "timeout": 20.0}))["default"]
        assert one(w2, "SELECT 1") == 1
        w2.close()
        w2.close_pool()
    finally:
        if starter.is_alive():
            starter.join(60)
        dj.start()


# --- CONN_MAX_AGE and CONN_HEALTH_CHECKS -----------------------------------------------------


def test_conn_health_checks_apply_to_a_connection_kept_across_requests(dj: MariaDBServer) -> None:
    entry = mysql_db(dj, pool={"max_size": 2}, CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    w = handler(default=entry)["default"]
    thread_id = one(w, "SELECT CONNECTION_ID()")
    w.close_if_unusable_or_obsolete()  # request end: kept
    assert w.connection is not None
    kill(dj, thread_id)
    assert one(w, "SELECT 1") == 1  # Django's health check (a ping) takes another
    w.close()


def test_a_failed_health_check_drops_the_connection(dj: MariaDBServer) -> None:
    entry = mysql_db(dj, pool={"max_size": 2}, CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    w = handler(default=entry)["default"]
    thread_id = one(w, "SELECT CONNECTION_ID()")
    w.close_if_unusable_or_obsolete()
    with mock.patch.object(w, "is_usable", return_value=False):
        assert one(w, "SELECT CONNECTION_ID()") != thread_id  # not the one Django gave up
    stats = w.pool.stats()
    assert (stats["returns_bad"], stats["pool_size"]) == (1, 1)
    w.close()


def test_is_usable_and_an_explicit_init_connection_state(dj: MariaDBServer) -> None:
    w = handler(default=mysql_db(dj, pool={"max_size": 1}))["default"]
    w.ensure_connection()
    assert w.is_usable()
    with w.cursor() as cur:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    # A direct call (not Django's connect) sets the session up, as the stock backend does.
    w.init_connection_state()
    assert one(w, "SELECT @@tx_isolation") == "READ-COMMITTED"
    w.close()
    assert w.is_usable() is False  # the connection is the pool's again


# --- test databases --------------------------------------------------------------------------


def test_test_databases_create_clone_and_destroy_with_pooled_connections_open(
    dj: MariaDBServer,
) -> None:
    test_name = "test_" + CREATION_DB
    conn = global_alias(
        CREATION_ALIAS,
        mysql_db(dj, name=CREATION_DB, pool={"max_size": 4}, TEST={"NAME": test_name}),
    )
    old_name = conn.settings_dict["NAME"]
    # Leftover pooled connections to a test database of the same name, which is re-created.
    dj.create_database(test_name)
    leftover = handler(default=mysql_db(dj, name=test_name, pool={"max_size": 2}))["default"]
    one(leftover, "SELECT 1")
    leftover.close()
    leftover_pool = leftover.pool
    assert conn.creation.create_test_db(verbosity=0, autoclobber=True) == test_name
    assert leftover_pool.closed
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (n int) ENGINE=InnoDB")
            cur.execute("INSERT INTO kept VALUES (7)")

        def use() -> None:
            c = global_alias(CREATION_ALIAS, {})
            one(c, "SELECT count(*) FROM kept")
            c.close()

        one(conn, "SELECT 1")  # held by this thread from here on: the others need their own
        threads = [threading.Thread(target=use) for _ in range(2)]
        for t in threads:
            t.start()
        one(conn, "SELECT SLEEP(0.05)")
        for t in threads:
            t.join()
        # The main thread holds one; the threads' connections wait idle in the pool.
        assert conn.pool.stats()["idle"] >= 1
        conn.creation.clone_test_db(suffix="1", verbosity=0, keepdb=False)
        clone = conn.creation.get_test_db_clone_settings("1")["NAME"]
        assert dj.execute("SELECT n FROM kept", dbname=clone) == [(7,)]
        # Pooled connections to the clone, then the clone made again and destroyed.
        to_clone = handler(default=mysql_db(dj, name=clone, pool={"max_size": 2}))["default"]
        one(to_clone, "SELECT count(*) FROM kept")
        to_clone.close()
        clone_pool = to_clone.pool
        conn.creation.clone_test_db(suffix="1", verbosity=0, keepdb=False)
        assert clone_pool.closed
        conn.creation.destroy_test_db(None, verbosity=0, suffix="1")
        assert not dj.execute("SHOW DATABASES LIKE %s", [clone])
    finally:
        one(conn, "SELECT count(*) FROM kept")  # a pooled connection open right before the drop
        conn.close()
        conn.creation.destroy_test_db(old_name, verbosity=0)
    assert not dj.execute("SHOW DATABASES LIKE %s", [test_name])
    assert dj.connection_count(database=test_name) == 0


# --- system checks ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_system_checks_report_misconfigurations(dj: MariaDBServer) -> None:
    from django_lido.backends.checks import check_pool_settings, check_server_limits

    user = unique("lido_limited")
    dj.execute(f"CREATE USER {user}@localhost WITH MAX_USER_CONNECTIONS 3")
    dj.execute(f"GRANT ALL ON {APP_DB}.* TO {user}@localhost")
    databases = {
        "bad": mysql_db(dj, pool={"max_size": 2, "min_size": 3}),
        "kept": mysql_db(dj, pool={"max_size": 2}, CONN_MAX_AGE=None),
        "big": mysql_db(dj, pool={"max_size": 1000}),
        "limited": {**mysql_db(dj, pool={"max_size": 5}), "USER": user},
        "default": mysql_db(dj, pool={"max_size": 2}),
    }
    connections = handler(**databases)
    with (
        override_settings(DATABASES=databases),
        mock.patch("django.db.connections", connections),
    ):
        found = {(m.id, m.msg.split(":")[0]) for m in check_pool_settings()}
        assert ("django_lido.E001", "DATABASES['bad']['OPTIONS']['pool']") in found
        assert any(i == "django_lido.W001" and "'kept'" in msg for i, msg in found)
        limits = check_server_limits(databases=["big", "limited", "default"])
        assert [m.id for m in limits] == ["django_lido.W004", "django_lido.W004"]
        assert "max_size=1000 is above the 200 connections" in limits[0].msg
        assert "max_size=5 is above the 3 connections" in limits[1].msg
        for alias in databases:
            connections[alias].close()


# --- PyMySQL -----------------------------------------------------------------------------------

PYMYSQL_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import pymysql
    pymysql.install_as_MySQLdb()
    import django
    from django.conf import settings
    from django.db.utils import ConnectionHandler
    from harness.mariadb import ExistingMariaDB
    entry, url = json.loads(sys.argv[1]), sys.argv[2]
    admin = ExistingMariaDB(url)
    settings.configure(DATABASES={"default": entry}, USE_TZ=False, TIME_ZONE="UTC")
    django.setup()
    def wrapper(**pool):
        opts = {**entry["OPTIONS"], "pool": {**entry["OPTIONS"]["pool"], **pool}}
        return ConnectionHandler({"default": {**entry, "OPTIONS": opts}})["default"]
    def one(w, sql):
        with w.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    w = wrapper(name="reuse", check_after_idle=60)
    one(w, "SELECT 1")
    out = {"driver": type(w.connection).__module__}
    w.close()
    with w.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS lido_pymysql (n int) ENGINE=InnoDB")
    w.close()
    # reuse, and checkouts send nothing
    admin.execute("TRUNCATE mysql.general_log")
    admin.execute("SET GLOBAL log_output = 'TABLE', GLOBAL general_log = 1")
    ids = []
    for _ in range(3):
        ids.append(one(w, "SELECT CONNECTION_ID()"))
        w.close()
    for _ in range(20):
        w.ensure_connection()
        w.close()
    admin.execute("SET GLOBAL general_log = 0")
    out["ids"] = ids
    out["log"] = [[str(c), str(a)] for c, a in admin.execute(
        "SELECT command_type, CONVERT(argument USING utf8mb4) FROM mysql.general_log"
        " WHERE thread_id = %s ORDER BY event_time", [ids[0]])]
    # uncommitted writes
    w.set_autocommit(False)
    with w.cursor() as cur:
        cur.execute("INSERT INTO lido_pymysql VALUES (1)")
    w.close()
    out["rows"] = one(w, "SELECT count(*) FROM lido_pymysql")
    w.close()
    with w.cursor() as cur:
        cur.execute("START TRANSACTION")
        cur.execute("INSERT INTO lido_pymysql VALUES (2)")
    w.close()
    with w.cursor() as cur:
        cur.execute("COMMIT")
    out["rows_begin"] = one(w, "SELECT count(*) FROM lido_pymysql")
    w.close()
    # a read-only transaction's snapshot
    rr = ConnectionHandler({"default": {**entry, "OPTIONS": {**entry["OPTIONS"],
        "isolation_level": "repeatable read", "pool": {"name": "rr", "max_size": 1}}}})["default"]
    rr.set_autocommit(False)
    before = one(rr, "SELECT count(*) FROM lido_pymysql")
    rr.close()
    admin.execute("INSERT INTO lido_pymysql VALUES (3)")
    out["snapshot"] = [before, one(rr, "SELECT count(*) FROM lido_pymysql")]
    rr.close()
    # reset auto: sql_mode that changes escaping
    with w.cursor() as cur:
        cur.execute("SET sql_mode = 'NO_BACKSLASH_ESCAPES'")
    w.close()
    out["sql_mode"] = one(w, "SELECT @@sql_mode")
    out["same_id"] = one(w, "SELECT CONNECTION_ID()") == ids[0]
    w.close()
    # reset auto: what the statement hook sees (a USE too, which PyMySQL does not report)
    with w.cursor() as cur:
        cur.execute("SET @lido = 1")
        cur.execute("CREATE TEMPORARY TABLE lido_scratch (n int)")
        cur.execute("SELECT GET_LOCK('lido_pymysql_lock', 0)")
        cur.execute("USE lido_other")
    w.close()
    out["left"] = [one(w, "SELECT CONNECTION_ID()") == ids[0], one(w, "SELECT @lido"),
                   one(w, "SELECT IS_USED_LOCK('lido_pymysql_lock')"), one(w, "SELECT DATABASE()")]
    try:
        out["left"].append(one(w, "SELECT COUNT(*) FROM lido_scratch"))
    except django.db.DatabaseError:
        out["left"].append("gone")
    w.close()
    out["stats"] = {k: w.pool.stats()[k] for k in ("returns_rolled_back", "connections_num")}
    # reset full
    f = wrapper(name="full", reset="full")
    fid = one(f, "SELECT CONNECTION_ID()")
    with f.cursor() as cur:
        cur.execute("SET @lido = 1")
        cur.execute("USE mysql")
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    f.close()
    out["full"] = [one(f, "SELECT CONNECTION_ID()") == fid, one(f, "SELECT @lido"),
                   one(f, "SELECT DATABASE()"), one(f, "SELECT @@tx_isolation")]
    f.close()
    # killed idle connection: probe, then ping after idle
    for name, pool in (("probe", {"check_after_idle": None}),
                       ("ping", {"probe": False, "check_after_idle": 0.3})):
        k = wrapper(name=name, **pool)
        kid = one(k, "SELECT CONNECTION_ID()")
        k.close()
        admin.execute(f"KILL CONNECTION {kid}")
        while admin.execute("SELECT 1 FROM information_schema.processlist WHERE id = %s", [kid]):
            time.sleep(0.01)
        time.sleep(0.4)
        out["kill_" + name] = [one(k, "SELECT CONNECTION_ID()") != kid,
                               k.pool.stats()["closes_check_failed"]]
        k.close()
    print(json.dumps(out))
    """
)


def test_pymysql_backend(maria: MariaDBServer) -> None:
    pytest.importorskip("pymysql")
    entry = mysql_db(maria, pool={"max_size": 2})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", PYMYSQL_SCRIPT, json.dumps(entry), maria.url(APP_DB)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["driver"].startswith("pymysql")
    assert len(set(out["ids"])) == 1
    queries = [a for c, a in out["log"] if c == "Query"]
    assert queries == ["SELECT CONNECTION_ID()"] * 3, out["log"]
    assert not {c for c, _ in out["log"]} - {"Query"}, out["log"]
    assert out["rows"] == 0, "uncommitted insert leaked to the next holder"
    assert out["rows_begin"] == 0, "a transaction begun with START TRANSACTION leaked"
    assert out["snapshot"] == [0, 1], "a read-only transaction's snapshot leaked"
    assert "NO_BACKSLASH_ESCAPES" not in out["sql_mode"]
    assert out["same_id"]
    assert out["left"] == [True, None, None, APP_DB, "gone"]
    assert out["stats"] == {"returns_rolled_back": 2, "connections_num": 1}
    assert out["full"] == [True, None, APP_DB, "READ-COMMITTED"]
    assert out["kill_probe"] == [True, 1]
    assert out["kill_ping"] == [True, 1]
