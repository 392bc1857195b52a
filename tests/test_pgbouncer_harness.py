"""The throwaway PgBouncer harness, and the transaction-pooling pitfalls it lets tests reproduce."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import psycopg
import pytest

from harness.pgbouncer import PgBouncerServer
from harness.servers import ExistingPostgres, PostgresServer, _pid_alive

Upstream = PostgresServer | ExistingPostgres


@pytest.fixture
def bouncer(pg: Upstream) -> Iterator[PgBouncerServer]:
    """A fresh transaction-mode PgBouncer per test (starting one takes ~50 ms), so its pool
    starts empty and which server connection a transaction gets is predictable."""
    with PgBouncerServer(pg, default_pool_size=4) as server:
        yield server


def _connect(server: PgBouncerServer, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(server.conninfo(), autocommit=True, **kwargs)  # type: ignore[arg-type]


def _server_pid(conn: psycopg.Connection) -> int:
    # conn.info.backend_pid is PgBouncer's made-up cancel key pid; ask the server instead.
    row = conn.execute("SELECT pg_backend_pid()", prepare=False).fetchone()
    assert row is not None
    return row[0]


def test_query_through_bouncer(bouncer: PgBouncerServer, pg: Upstream) -> None:
    assert bouncer.port not in (pg.port, 6432)
    assert bouncer.execute("SELECT 1") == [(1,)]
    assert bouncer.execute("SHOW port") == [(str(pg.port),)]  # reached the upstream server
    for target in (bouncer.conninfo(tcp=True), bouncer.url(tcp=True), bouncer.url()):
        with psycopg.connect(target, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (pg.user,)
    params = bouncer.conn_params("postgres", tcp=True)
    assert params == {"NAME": "postgres", "USER": pg.user, "PASSWORD": "",
                      "HOST": "127.0.0.1", "PORT": str(bouncer.port)}  # fmt: skip
    assert bouncer.conn_params()["HOST"] == str(bouncer.tmpdir)
    assert bouncer.version >= (1, 0)


def test_show_pools_and_servers(bouncer: PgBouncerServer) -> None:
    dbname = bouncer.dbname
    assert bouncer.pools() == []
    with _connect(bouncer) as conn:
        pid = _server_pid(conn)
        [pool] = bouncer.pools(dbname)
        assert pool["pool_mode"] == "transaction"
        assert pool["cl_active"] == 1
        # Between transactions the client holds no server connection: it is idle in the pool.
        assert pool["sv_active"] == 0
        assert pool["sv_idle"] + pool["sv_used"] == 1
        assert [s["remote_pid"] for s in bouncer.servers(dbname)] == [pid]
        assert {c["database"] for c in bouncer.show("clients")} == {dbname, "pgbouncer"}
    assert bouncer.show("config") != []
    with pytest.raises(ValueError, match="SHOW"):
        bouncer.show("pools; SHUTDOWN")


def test_transactions_of_one_client_move_between_servers(bouncer: PgBouncerServer) -> None:
    with _connect(bouncer) as a, _connect(bouncer) as b:
        with a.transaction():
            first = _server_pid(a)
        with b.transaction():
            assert _server_pid(b) == first  # b got the server a just released
            with a.transaction():
                second = _server_pid(a)  # ... so a's next transaction runs elsewhere
        assert second != first
        with a.transaction():
            assert _server_pid(a) in (first, second)


def test_session_state_does_not_stick(bouncer: PgBouncerServer) -> None:
    with _connect(bouncer) as a, _connect(bouncer) as b:
        a.execute("SET statement_timeout = '4321ms'")  # runs on a's current server ...
        assert a.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
        with b.transaction():  # ... which b now holds
            assert b.execute("SHOW statement_timeout").fetchone() == ("4321ms",)  # leaked to b
            assert a.execute("SHOW statement_timeout").fetchone() == ("0",)  # lost by a


def test_session_mode_keeps_the_server(pg: Upstream) -> None:
    with (
        PgBouncerServer(pg, pool_mode="session") as bouncer,
        _connect(bouncer) as a,
        _connect(bouncer) as b,
    ):
        assert bouncer.pools()[0]["pool_mode"] == "session"
        a.execute("SET statement_timeout = '4321ms'")
        pid = _server_pid(a)
        with b.transaction():
            assert _server_pid(b) != pid
            assert a.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
            assert _server_pid(a) == pid


def test_prepared_statement_names_collide(bouncer: PgBouncerServer) -> None:
    """psycopg names server-side prepared statements per client connection (_pg3_0, _pg3_1,
    ...), but they live on whichever server connection they were prepared on."""
    with (
        _connect(bouncer, prepare_threshold=0) as a,
        _connect(bouncer, prepare_threshold=0) as b,
    ):
        assert a.execute("SELECT %s::int", (1,)).fetchone() == (1,)  # PREPARE _pg3_0 on S1
        # b's first statement is also called _pg3_0, and b runs it on S1 too.
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement, match="_pg3_0"):
            b.execute("SELECT %s::text", ("x",))


def test_prepared_statements_go_missing(bouncer: PgBouncerServer) -> None:
    """The breakage a pool "behind a transaction pooler" must avoid: a client's prepared
    statement is gone once the client's next transaction lands on another server connection."""
    with (
        _connect(bouncer, prepare_threshold=0) as a,
        _connect(bouncer, prepare_threshold=None) as b,
    ):
        first = _server_pid(a)
        assert a.execute("SELECT %s::int", (1,)).fetchone() == (1,)  # PREPARE _pg3_0 on S1
        with b.transaction():
            assert _server_pid(b) == first  # b holds S1, so a runs on S2, which lacks _pg3_0
            with pytest.raises(psycopg.errors.InvalidSqlStatementName, match="does not exist"):
                a.execute("SELECT %s::int", (1,))
    # Without server-side prepared statements (prepare_threshold=None) nothing breaks; note
    # that psycopg's default (prepare_threshold=5) prepares a query on its 5th execution.
    with (
        _connect(bouncer, prepare_threshold=None) as a,
        _connect(bouncer, prepare_threshold=None) as b,
    ):
        for i in range(10):
            assert a.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            with b.transaction():
                b.execute("SELECT %s::int", (i,))
                assert a.execute("SELECT %s::int", (i,)).fetchone() == (i,)


def _supports_max_prepared_statements(pg: Upstream) -> bool:
    probe = PgBouncerServer(pg)
    try:
        return probe.supports_max_prepared_statements
    finally:
        probe.cleanup()


def test_max_prepared_statements_refused_where_unsupported(pg: Upstream) -> None:
    if _supports_max_prepared_statements(pg):
        pytest.skip("this PgBouncer supports max_prepared_statements")
    with pytest.raises(ValueError, match=r"needs PgBouncer 1\.21"):
        PgBouncerServer(pg, max_prepared_statements=100)


def test_max_prepared_statements(pg: Upstream) -> None:
    if not _supports_max_prepared_statements(pg):
        pytest.skip("this PgBouncer is older than 1.21 (no max_prepared_statements)")
    with (
        PgBouncerServer(pg, max_prepared_statements=100) as bouncer,
        _connect(bouncer, prepare_threshold=0) as a,
        _connect(bouncer, prepare_threshold=0) as b,
    ):
        for i in range(5):
            assert a.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            with b.transaction():
                assert b.execute("SELECT %s::int", (i,)).fetchone() == (i,)
                assert a.execute("SELECT %s::int", (i,)).fetchone() == (i,)


def test_invalid_options(pg: Upstream) -> None:
    with pytest.raises(ValueError, match="pool_mode"):
        PgBouncerServer(pg, pool_mode="txn")
    with pytest.raises(ValueError, match="max_prepared_statements"):
        PgBouncerServer(pg, max_prepared_statements=-1)


def test_taken_port_is_replaced(pg: Upstream) -> None:
    server = PgBouncerServer(pg)
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", server.port))
            squatter.listen()
            taken = server.port
            server.start()
            assert server.port != taken
            assert server.execute("SELECT 1") == [(1,)]
    finally:
        server.cleanup()


@pytest.mark.fault
def test_restart_kill_stop(bouncer: PgBouncerServer) -> None:
    port = bouncer.port
    with _connect(bouncer) as conn:
        conn.execute("SELECT 1")
        bouncer.restart()
        assert bouncer.port == port
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert bouncer.execute("SELECT 1") == [(1,)]
    with _connect(bouncer) as conn:
        bouncer.kill()
        assert not bouncer.running
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    bouncer.start()
    assert bouncer.execute("SELECT 1") == [(1,)]
    bouncer.stop("smart")
    assert not bouncer.running
    with pytest.raises(ValueError, match="mode"):
        bouncer.stop("abrupt")
    bouncer.start()
    assert bouncer.execute("SELECT 1") == [(1,)]


def test_cleanup_leaves_nothing(pg: Upstream) -> None:
    server = PgBouncerServer(pg).start()
    pid, proc, tmpdir = server._server_pid(), server._proc, server.tmpdir
    assert pid is not None and proc is not None
    server.cleanup()
    server.cleanup()  # idempotent
    assert not tmpdir.exists()
    assert not _pid_alive(pid)
    assert proc.returncode is not None  # the runuser wrapper (or pgbouncer itself) was reaped
    with pytest.raises(RuntimeError, match="cleaned up"):
        server.start()


def test_upstream_password_over_tcp() -> None:
    """Clients use trust; PgBouncer logs in upstream with the upstream's password."""
    with (
        PostgresServer(auth="scram-sha-256", password="s3 'cret\"") as pg,
        PgBouncerServer(pg, upstream_tcp=True) as bouncer,
    ):
        assert "password" not in bouncer.conninfo()
        assert bouncer.execute("SELECT inet_server_addr()::text") == [("127.0.0.1/32",)]
        assert bouncer.servers()[0]["addr"] == "127.0.0.1"
