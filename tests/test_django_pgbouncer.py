"""The PostgreSQL backend behind a real PgBouncer in transaction mode.

With ``transaction_pooler: True`` the backend turns off what breaks when each transaction
may run on another server connection: prepared statements and named (server-side) cursors.
Without it, the same workload fails, which shows the test can fail.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from django_helpers import configure, database, handler, unique

from harness.pgbouncer import PgBouncerServer

THREADS = 4
ROUNDS = 25


@pytest.fixture
def bouncer(pg: Any) -> Iterator[PgBouncerServer]:
    configure(pg, default=database(pg))
    # Fewer server connections than client connections, so transactions of different
    # clients interleave on the same server connections.
    with PgBouncerServer(pg, default_pool_size=2) as server:
        yield server


def _workload(bouncer: PgBouncerServer, pg: Any, pool: dict[str, Any]) -> list[BaseException]:
    table = unique("lido_bouncer")
    pg.execute(f"CREATE TABLE {table} (n int)")
    pg.execute(f"INSERT INTO {table} SELECT generate_series(1, 500)")
    entry = database(bouncer, pool=pool, options={"server_side_binding": True})
    h = handler(default=entry)
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def client(k: int) -> None:
        w = h["default"]
        barrier.wait()
        try:
            for i in range(ROUNDS):
                with w.cursor() as cur:
                    # Repeated enough for psycopg to prepare it on the server.
                    cur.execute(f"SELECT count(*) FROM {table} WHERE n > %s", [i])
                    assert cur.fetchone()[0] == 500 - i
                # A chunked read, as QuerySet.iterator() does.
                cur = w.chunked_cursor()
                try:
                    cur.execute(f"SELECT n FROM {table} ORDER BY n")
                    total = 0
                    while rows := cur.fetchmany(100):
                        total += len(rows)
                    assert total == 500
                finally:
                    cur.close()
                with transaction.atomic(using="default"), w.cursor() as cur:
                    cur.execute(f"INSERT INTO {table} VALUES (%s)", [-k])
                    cur.execute(f"DELETE FROM {table} WHERE n = %s", [-k])
                w.close()
        except BaseException as exc:
            errors.append(exc)
        finally:
            w.close()

    # transaction.atomic(using=...) looks the alias up in django.db.connections; point it
    # at this handler for the test.
    from unittest import mock

    with mock.patch("django.db.transaction.connections", h):
        threads = [threading.Thread(target=client, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return errors


def test_transaction_pooler_mode_works_behind_pgbouncer(bouncer: PgBouncerServer, pg: Any) -> None:
    errors = _workload(bouncer, pg, {"max_size": THREADS, "transaction_pooler": True})
    assert errors == []
    [pool] = bouncer.pools(bouncer.dbname)
    assert pool["pool_mode"] == "transaction"


def test_without_the_mode_the_same_workload_breaks(bouncer: PgBouncerServer, pg: Any) -> None:
    errors = _workload(bouncer, pg, {"max_size": THREADS})
    assert errors, "expected prepared statements or named cursors to break behind PgBouncer"
    # What breaks: a prepared statement or a named cursor (a portal) missing on, or already
    # defined on, the server connection PgBouncer picked; told apart by SQLSTATE, since the
    # messages vary ("prepared statement ... does not exist", "portal ... does not exist").
    # invalid_sql_statement_name, invalid_cursor_name, duplicate_prepared_statement,
    # duplicate_cursor
    breakage = {"26000", "34000", "42P05", "42P03"}
    states = {getattr(e.__cause__ or e, "sqlstate", None) for e in errors}
    assert states & breakage, "; ".join(f"{type(e).__name__}: {e}" for e in errors)
