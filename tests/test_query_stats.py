"""Issue 13: query statistics per statement shape, recorded by the Django statement hook:
real statements counted and timed, failures counted, rows summed, never a parameter value
or literal; against a real PostgreSQL, and a throwaway MariaDB for one test."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from django.db import DatabaseError
from django_helpers import configure, database, global_alias, handler, unique

from harness.mariadb import MariaDBServer

PARAM = "pii-param-5a17c3"
LITERAL = "pii-literal-99e0b2"
NUMBER = 8675309
KEYS = {"shape", "count", "errors", "total_s", "mean_s", "p50_s", "p99_s", "max_s", "rows"}


@pytest.fixture(scope="module")
def dj(pg: Any) -> Any:
    configure(pg, default=database(pg, pool={"max_size": 4}))
    return pg


def by_shape(rows: list[dict[str, Any]], start: str) -> dict[str, Any]:
    (row,) = [r for r in rows if r["shape"].startswith(start)]
    return row


def run_statements(w: Any) -> None:
    with w.cursor() as cur:
        cur.execute("CREATE TEMP TABLE lido_qs (n int, v text)")
        for n in range(7):
            cur.execute("INSERT INTO lido_qs (n, v) VALUES (%s, %s)", [n, PARAM])
        cur.executemany("INSERT INTO lido_qs (n, v) VALUES (%s, %s)", [(9, PARAM)] * 3)
        for _ in range(3):
            cur.execute(f"SELECT n FROM lido_qs WHERE v = '{LITERAL}' OR n = {NUMBER}")
        cur.execute("SELECT n FROM lido_qs WHERE v = %s", [PARAM])
        with pytest.raises(DatabaseError):
            cur.execute("SELECT n FROM lido_missing_table WHERE v = %s", [PARAM])


def test_statements_are_counted_timed_and_never_show_values(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1}))["default"]
    run_statements(w)
    pool = w.pool
    connections = pool.connections()
    w.close()
    rows = pool.query_stats(top=50)
    assert rows and all(set(r) == KEYS for r in rows)
    insert = by_shape(rows, "INSERT INTO lido_qs")
    # Seven execute() and one executemany() of three rows: one shape.
    assert insert["count"] == 8 and insert["errors"] == 0 and insert["rows"] == 10
    assert 0 < insert["p50_s"] <= insert["p99_s"] <= insert["max_s"] <= insert["total_s"]
    assert insert["mean_s"] == pytest.approx(insert["total_s"] / 8, rel=1e-3)
    literal = by_shape(rows, "SELECT n FROM lido_qs WHERE v = ?")
    assert literal["count"] == 3
    missing = by_shape(rows, "SELECT n FROM lido_missing_table")
    assert missing["count"] == 1 and missing["errors"] == 1
    # The PII rule: no parameter value, no literal, anywhere it is shown.
    shown = repr(rows) + repr(connections) + repr(pool.reports())
    for value in (PARAM, LITERAL, str(NUMBER)):
        assert value not in shown
    # Ordered by count, then reset.
    assert pool.query_stats(top=1, order="count")[0]["count"] == 8
    with pytest.raises(ValueError):
        pool.query_stats(order="nope")
    pool.reset_query_stats()
    assert pool.query_stats() == []


def test_query_stats_off_records_nothing(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1, "query_stats": False}))["default"]
    with w.cursor() as cur:
        cur.execute("SELECT 1")
    pool = w.pool
    w.close()
    assert pool.query_stats() == []


def test_the_cap_on_shapes_counts_the_rest_together(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1, "query_stats_max_shapes": 2}))["default"]
    with w.cursor() as cur:
        for i in range(5):
            cur.execute(f"SELECT {i} AS c{i}")
    pool = w.pool
    w.close()
    rows = pool.query_stats(top=10, order="count")
    assert sum(r["count"] for r in rows) == 5
    assert any(r["shape"] == "(other statements)" for r in rows)


@pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is None and importlib.util.find_spec("pymysql") is None,
    reason="needs mysqlclient or PyMySQL",
)
def test_mariadb_statements_are_counted_without_values(dj: Any) -> None:
    with MariaDBServer() as server:
        server.create_database("lido_qs")
        alias = unique("qs_my")
        entry = {
            "ENGINE": "django_lido.backends.mysql",
            **server.conn_params("lido_qs"),
            "OPTIONS": {"pool": {"name": unique("lido_qs_my"), "max_size": 1}},
        }
        w = global_alias(alias, entry)
        try:
            with w.cursor() as cur:
                cur.execute("CREATE TABLE t (n int, v varchar(64))")
                for n in range(4):
                    cur.execute("INSERT INTO t (n, v) VALUES (%s, %s)", [n, PARAM])
                cur.execute(f"SELECT n FROM t WHERE v = '{LITERAL}'")
            pool = w.pool
        finally:
            w.close()
        rows = pool.query_stats(top=50)
        insert = by_shape(rows, "INSERT INTO t")
        assert insert["count"] == 4 and insert["rows"] == 4
        by_shape(rows, "SELECT n FROM t WHERE v = ?")
        assert PARAM not in repr(rows) and LITERAL not in repr(rows)
        pool.close()
