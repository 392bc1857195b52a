from __future__ import annotations

import time

import psycopg
import pytest

from harness.servers import (
    ExistingPostgres,
    PostgresServer,
    free_port,
    postgres_for_tests,
)


def _query(conninfo: str, sql: str = "SELECT 1") -> object:
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        return conn.execute(sql).fetchone()[0]


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    assert 1024 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_query_over_socket_and_tcp(pg: PostgresServer | ExistingPostgres) -> None:
    assert pg.execute("SELECT 1") == [(1,)]
    assert pg.execute("SET application_name = 'x'") == []
    assert _query(pg.conninfo()) == 1
    assert _query(pg.conninfo(tcp=True)) == 1
    assert _query(pg.url(tcp=True)) == 1
    assert _query(pg.url()) == 1


def test_throwaway_server_layout(pg_throwaway: PostgresServer) -> None:
    s = pg_throwaway
    assert s.port != 5432
    assert s.host == str(s.tmpdir)
    assert (s.datadir / "PG_VERSION").exists()
    assert s.logfile.exists()
    assert s.execute("SHOW fsync") == [("off",)]
    assert s.execute("SHOW port") == [(str(s.port),)]
    # TCP goes to 127.0.0.1 and reaches this cluster, not some other server.
    assert _query(s.conninfo(tcp=True), "SELECT inet_server_addr()::text") == "127.0.0.1/32"
    assert _query(s.conninfo(tcp=True), "SHOW data_directory") == str(s.datadir)


def test_create_database(pg_throwaway: PostgresServer) -> None:
    pg_throwaway.create_database("lido Test")
    assert pg_throwaway.execute("SELECT current_database()", dbname="lido Test") == [("lido Test",)]
    assert _query(pg_throwaway.url(dbname="lido Test"), "SELECT current_database()") == "lido Test"


def test_terminate_backends(pg: PostgresServer | ExistingPostgres) -> None:
    app = "lido-test-terminate"
    with psycopg.connect(pg.conninfo(application_name=app), autocommit=True) as conn:
        assert pg.backend_count(application_name=app) == 1
        assert pg.terminate_backends(application_name=app) == 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert pg.backend_count(application_name=app) == 0


@pytest.mark.fault
def test_restart_breaks_old_connections(pg_throwaway: PostgresServer) -> None:
    s = pg_throwaway.start()
    port = s.port
    with psycopg.connect(s.conninfo(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        s.restart()
        assert s.port == port
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert s.execute("SELECT 1") == [(1,)]
    assert _query(s.conninfo(tcp=True)) == 1


@pytest.mark.fault
def test_kill_then_start_recovers(pg_throwaway: PostgresServer) -> None:
    s = pg_throwaway.start()
    with psycopg.connect(s.conninfo(), autocommit=True) as conn:
        # The harness runs with synchronous_commit=off, so a crash can lose the last ~200 ms
        # of commits; this commit must be durable.
        conn.execute("SET synchronous_commit = on")
        conn.execute("CREATE TABLE IF NOT EXISTS survives (x int)")
        s.kill()
        assert not s.running
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        _query(s.conninfo())
    s.start()
    assert s.execute("SELECT count(*) FROM survives") == [(0,)]


@pytest.mark.fault
def test_stop_and_start(pg_throwaway: PostgresServer) -> None:
    s = pg_throwaway.start()
    s.stop()
    assert not s.running
    s.stop()  # stopping a stopped server is a no-op
    with pytest.raises(ValueError, match="mode"):
        s.stop("abrupt")
    s.start()
    assert s.execute("SELECT 1") == [(1,)]


def test_scram_auth_over_tcp() -> None:
    with PostgresServer(auth="scram-sha-256", password="s3 'cret") as s:
        assert "password" not in s.conninfo()
        assert _query(s.conninfo(tcp=True)) == 1
        assert _query(s.url(tcp=True)) == 1
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            _query(s.conninfo(tcp=True, password="wrong"))
        # The socket stays trust so admin helpers need no password.
        assert _query(s.conninfo(password="wrong")) == 1
        assert s.execute("SHOW password_encryption") == [("scram-sha-256",)]


def test_cleanup_stops_server_and_removes_tmpdir() -> None:
    s = PostgresServer(settings={"application_name": "lido-settings"}).start()
    assert s.execute("SHOW application_name") != []
    assert s.execute("SELECT current_setting('application_name')") == [("lido-settings",)]
    pid, tmpdir = s._server_pid(), s.tmpdir
    s.cleanup()
    s.cleanup()  # idempotent
    assert not tmpdir.exists()
    deadline = time.monotonic() + 10
    while pid is not None and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"postmaster {pid} still running after cleanup")
    with pytest.raises(RuntimeError, match="cleaned up"):
        s.start()


def test_invalid_auth_raises() -> None:
    with pytest.raises(ValueError, match="auth"):
        PostgresServer(auth="md5")


def test_existing_postgres_from_url(
    pg_throwaway: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = pg_throwaway.start()
    monkeypatch.setenv("DATABASE_URL", s.url(tcp=True, application_name="lido-existing"))
    existing = postgres_for_tests()
    assert isinstance(existing, ExistingPostgres)
    assert (existing.host, existing.port, existing.user) == ("127.0.0.1", s.port, "postgres")
    assert existing.execute("SELECT current_setting('application_name')") == [("lido-existing",)]
    assert existing.backend_count(application_name="nobody") == 0
    for op in (existing.restart, existing.kill, existing.stop):
        with pytest.raises(RuntimeError, match="needs a throwaway server"):
            op()
    # A socket-directory URL round-trips, case preserved.
    via_socket = ExistingPostgres(s.url())
    assert via_socket.host == s.host
    assert via_socket.execute("SELECT 1") == [(1,)]
