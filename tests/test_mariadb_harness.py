"""The throwaway MariaDB harness."""

from __future__ import annotations

import importlib
import importlib.util
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import eventually

from harness.mariadb import (
    ExistingMariaDB,
    MariaDBServer,
    mariadb_for_tests,
)
from harness.servers import _pid_alive

DRIVERS = ["pymysql", "MySQLdb"]

if not any(importlib.util.find_spec(name) for name in DRIVERS):
    pytest.skip("needs PyMySQL or mysqlclient", allow_module_level=True)


@pytest.fixture(scope="module")
def mariadb() -> Iterator[MariaDBServer]:
    """A server this module owns outright (tests restart and kill it)."""
    with MariaDBServer() as server:
        yield server


def _driver(name: str) -> Any:
    return pytest.importorskip(name)


def _driver_of(conn: Any) -> Any:
    return importlib.import_module(type(conn).__module__.partition(".")[0])


def _scalar(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


@pytest.mark.parametrize("driver", DRIVERS)
def test_query_over_socket_and_tcp(mariadb: MariaDBServer, driver: str) -> None:
    _driver(driver)
    assert mariadb.execute("SELECT 1") == [(1,)]
    assert mariadb.execute("SET @x = 1") == []
    with mariadb.connect(tcp=True, driver=driver) as conn:
        assert _scalar(conn, "SELECT current_user()") == "root@127.0.0.1"
        assert _scalar(conn, "SELECT @@port") == mariadb.port
    with mariadb.connect(driver=driver) as conn:
        assert _scalar(conn, "SELECT current_user()") == "root@localhost"
        assert _scalar(conn, "SELECT @@socket") == mariadb.unix_socket


def test_layout_keeps_off_the_machine_service(mariadb: MariaDBServer) -> None:
    s = mariadb
    assert s.port != 3306
    assert s.unix_socket.startswith(str(s.tmpdir))
    assert (s.datadir / "mysql").is_dir()
    assert s.logfile.exists()
    [(datadir, pid_file, charset, user_hosts)] = s.execute(
        "SELECT @@datadir, @@pid_file, @@character_set_server,"
        " (SELECT group_concat(host ORDER BY host) FROM mysql.user WHERE user = 'root')"
    )
    assert datadir.rstrip("/") == str(s.datadir)
    assert pid_file.startswith(str(s.tmpdir))
    assert charset == "utf8mb4"
    assert user_hosts == "127.0.0.1,::1,localhost"  # real grant tables
    assert s.version >= (10,)


def test_create_database_and_urls(mariadb: MariaDBServer) -> None:
    mariadb.create_database("lido Test`db")
    assert mariadb.execute("SELECT database()", dbname="lido Test`db") == [("lido Test`db",)]
    for tcp in (False, True):
        existing = ExistingMariaDB(mariadb.url("lido Test`db", tcp=tcp))
        assert existing.unix_socket == (None if tcp else mariadb.unix_socket)
        assert existing.execute("SELECT database()") == [("lido Test`db",)]
        assert existing.conn_params() == mariadb.conn_params("lido Test`db", tcp=tcp)
    assert mariadb.conn_params("x", tcp=True) == {
        "NAME": "x", "USER": "root", "PASSWORD": "", "HOST": "127.0.0.1",
        "PORT": str(mariadb.port),
    }  # fmt: skip
    assert mariadb.conn_params()["HOST"] == mariadb.unix_socket


@pytest.mark.parametrize("driver", DRIVERS)
def test_kill_connections(mariadb: MariaDBServer, driver: str) -> None:
    module = _driver(driver)
    mariadb.create_database(f"kill_{driver}")
    mine = [mariadb.connect(f"kill_{driver}", tcp=True, driver=driver) for _ in range(2)]
    other = mariadb.connect(driver=driver)
    try:
        assert mariadb.connection_count(database=f"kill_{driver}") == 2
        assert mariadb.connection_count() >= 3
        assert mariadb.kill_connections(database=f"kill_{driver}") == 2
        assert mariadb.connection_count(database=f"kill_{driver}") == 0
        for conn in mine:
            with pytest.raises(module.OperationalError):
                _scalar(conn, "SELECT 1")
        assert _scalar(other, "SELECT 1") == 1
    finally:
        for conn in [*mine, other]:
            conn.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_wait_timeout_closes_idle_connection(driver: str) -> None:
    module = _driver(driver)
    # 3 s: long enough that the count below sees the connection on a loaded machine.
    with MariaDBServer(wait_timeout=3) as server, server.connect(driver=driver) as conn:
        assert _scalar(conn, "SELECT @@wait_timeout") == 3
        assert server.connection_count() == 1
        eventually(lambda: server.connection_count() == 0, "idle connection closed")
        with pytest.raises(module.OperationalError):
            _scalar(conn, "SELECT 1")


@pytest.mark.fault
def test_restart_breaks_old_connections(mariadb: MariaDBServer) -> None:
    s = mariadb.start()
    port = s.port
    s.create_database("restart")
    s.execute("CREATE TABLE kept (x int)", dbname="restart")
    s.execute("INSERT INTO kept VALUES (1)", dbname="restart")
    with s.connect() as conn:
        s.restart()
        assert s.port == port
        with pytest.raises(_driver_of(conn).OperationalError):
            _scalar(conn, "SELECT 1")
    assert s.execute("SELECT x FROM kept", dbname="restart") == [(1,)]
    with s.connect(tcp=True) as conn:
        assert _scalar(conn, "SELECT 1") == 1


@pytest.mark.fault
def test_kill_then_start_recovers(mariadb: MariaDBServer) -> None:
    s = mariadb.start()
    s.create_database("crash")
    # The harness runs with innodb_flush_log_at_trx_commit=0; this commit must be durable.
    s.execute("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
    s.execute("CREATE TABLE survives (x int)", dbname="crash")
    s.execute("INSERT INTO survives VALUES (7)", dbname="crash")
    with s.connect() as conn:
        s.kill()
        assert not s.running
        with pytest.raises(_driver_of(conn).OperationalError):
            _scalar(conn, "SELECT 1")
    s.start()
    assert s.execute("SELECT x FROM survives", dbname="crash") == [(7,)]
    assert s.execute("SELECT @@innodb_flush_log_at_trx_commit") == [(0,)]  # restart resets it


@pytest.mark.fault
def test_stop_and_start(mariadb: MariaDBServer) -> None:
    s = mariadb.start()
    s.stop()
    assert not s.running
    s.stop()  # stopping a stopped server is a no-op
    with pytest.raises(ValueError, match="mode"):
        s.stop("abrupt")
    s.start()
    assert s.execute("SELECT 1") == [(1,)]


def test_taken_port_is_replaced() -> None:
    server = MariaDBServer(settings={"max_connections": 50})
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", server.port))
            squatter.listen()
            taken = server.port
            server.start()
            assert server.port != taken
        assert server.execute("SELECT @@port, @@max_connections") == [(server.port, 50)]
    finally:
        server.cleanup()


def test_cleanup_leaves_nothing() -> None:
    start = time.monotonic()
    server = MariaDBServer().start()
    startup = time.monotonic() - start
    pid, proc, tmpdir = server._server_pid(), server._proc, server.tmpdir
    assert pid is not None and proc is not None
    server.cleanup()
    server.cleanup()  # idempotent
    assert not tmpdir.exists()
    assert not _pid_alive(pid)
    assert proc.returncode is not None  # the runuser wrapper (or mariadbd itself) was reaped
    with pytest.raises(RuntimeError, match="cleaned up"):
        server.start()
    assert startup < 30  # only bounds a hang; a start from the template takes ~0.1-0.3 s


def test_existing_mariadb_from_url(monkeypatch: pytest.MonkeyPatch) -> None:
    e = ExistingMariaDB("mariadb://app:p%40ss@db.example:3307/shop?unix_socket=%2Ftmp%2Fm.sock")
    assert (e.host, e.port, e.user, e.password, e.dbname) == (
        "db.example", 3307, "app", "p@ss", "shop"
    )  # fmt: skip
    assert e.connect_kwargs(tcp=True) == {
        "user": "app", "port": 3307, "host": "db.example", "password": "p@ss", "database": "shop"
    }  # fmt: skip
    assert e.connect_kwargs()["unix_socket"] == "/tmp/m.sock"
    assert ExistingMariaDB("mysql://localhost").port == 3306
    with pytest.raises(ValueError, match="mysql://"):
        ExistingMariaDB("postgresql://localhost/x")
    for method in ("stop", "restart", "kill"):
        with pytest.raises(RuntimeError, match="throwaway"):
            getattr(e, method)()
    monkeypatch.setenv("MYSQL_URL", "mysql://root@127.0.0.1:3399/x")
    assert isinstance(mariadb_for_tests(), ExistingMariaDB)


def test_mariadb_for_tests_starts_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MYSQL_URL", raising=False)
    server = mariadb_for_tests()
    try:
        assert isinstance(server, MariaDBServer)
        assert server.running
        assert server.execute("SELECT 2") == [(2,)]
    finally:
        server.cleanup()
