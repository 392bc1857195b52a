"""The Django PostgreSQL backend on the pool (psycopg 3 in this process; psycopg2 in a
subprocess), against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import django_lido
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, OperationalError
from django.test.utils import override_settings
from django_helpers import (
    assert_short_connect_matches_djangos,
    configure,
    database,
    global_alias,
    handler,
    one,
    unique,
    write_in_a_thread_that_dies,
)

CREATION_DB = "lido_creation_src"


@pytest.fixture(scope="module")
def dj(pg: Any) -> Any:
    if not pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", [CREATION_DB]):
        pg.create_database(CREATION_DB)
    configure(
        pg,
        default=database(pg, pool={"max_size": 4}),
        lido_testdb=database(
            pg, name=CREATION_DB, pool={"max_size": 4}, TEST={"NAME": "test_" + CREATION_DB}
        ),
    )
    return pg


def app_of(w: Any) -> str:
    return w.settings_dict["OPTIONS"]["application_name"]


# --- checkout and return ----------------------------------------------------------------------


def test_close_returns_the_connection_and_connect_reuses_it(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 2}))["default"]
    pids = []
    for _ in range(3):
        pids.append(one(w, "SELECT pg_backend_pid()"))
        w.close()
        assert w.connection is None
    assert len(set(pids)) == 1
    stats = w.pool.stats()
    assert (stats["pool_size"], stats["in_use"], stats["requests_num"]) == (1, 0, 3)
    assert dj.backend_count(app_of(w)) == 1


def test_pooling_is_on_by_default_and_off_with_false(dj: Any) -> None:
    w = handler(default=database(dj))["default"]
    assert isinstance(w.pool, django_lido.Pool)
    assert w.pool.stats()["pool_max"] == 10

    w = handler(default=database(dj, pool=False))["default"]
    assert w.pool is None
    pids = set()
    for _ in range(2):
        pids.add(one(w, "SELECT pg_backend_pid()"))
        w.close()
    assert len(pids) == 2, "without a pool, close() closes the server connection"


def test_legacy_max_conns_min_conns(dj: Any) -> None:
    w = handler(default=database(dj, options={"MAX_CONNS": 3, "MIN_CONNS": 1}))["default"]
    # The keys must not reach libpq (it would refuse an unknown keyword).
    assert one(w, "SELECT 1") == 1
    w.close()
    stats = w.pool.stats()
    assert (stats["pool_min"], stats["pool_max"]) == (1, 3)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"pool": {"max_sise": 4}}, "unknown pool option(s) 'max_sise'"),
        ({"pool": {"min_size": 5, "max_size": 2}}, "min_size=5: an integer from 0 to max_size (2)"),
        ({"pool": {"timeout": -1}}, "timeout=-1"),
        ({"pool": {"max_size": 0}}, "max_size=0: an integer from 1 to 10000"),
        ({"pool": {"lifetime_jitter": 0.9}}, "lifetime_jitter=0.9: a fraction from 0.0 to 0.5"),
        ({"pool": {"max_size": "8"}}, "max_size='8': an integer"),
        ({"pool": "yes"}, "must be a dict of pool options, True or False"),
        ({"pool": {"num_workers": 2}}, "'num_workers'] is not supported"),
        ({"pool": {"reset": "everything"}}, "'auto', 'full', 'rollback'"),
        ({"pool": {"max_size": 4}, "MAX_CONNS": 8}, "['MAX_CONNS']=8 conflicts with"),
        ({"pool": False, "MAX_CONNS": 8}, "is False (no pool) but MAX_CONNS is set"),
    ],
)
def test_bad_pool_options_name_the_setting(dj: Any, options: dict[str, Any], expected: str) -> None:
    w = handler(default=database(dj, options=options))["default"]
    with pytest.raises(ImproperlyConfigured) as info:
        w.ensure_connection()
    message = str(info.value)
    assert "DATABASES['default']['OPTIONS']" in message
    assert expected in message


def test_pools_are_keyed_by_connection_parameters(dj: Any) -> None:
    base = database(dj, pool={"max_size": 2})
    h = handler(
        default=base,
        replica={**base, "OPTIONS": dict(base["OPTIONS"])},
        other_db={**base, "NAME": "template1", "OPTIONS": dict(base["OPTIONS"])},
    )
    assert h["default"].pool is h["replica"].pool
    assert h["default"].pool is not h["other_db"].pool
    # A change of settings under the same alias gives another pool, not the old one.
    w = h["default"]
    first = w.pool
    w.settings_dict["OPTIONS"]["pool"] = {"max_size": 3}
    assert w.pool is not first
    assert w.pool.stats()["pool_max"] == 3


def test_a_pool_closed_directly_is_replaced_once_for_every_alias_sharing_it(dj: Any) -> None:
    from django_lido.backends import registry

    base = database(dj, pool={"max_size": 2})
    h = handler(default=base, replica={**base, "OPTIONS": dict(base["OPTIONS"])})
    old = h["default"].pool
    key, target = next((k, t) for k, (t, p) in registry._pools.items() if p is old)
    old.close()  # not through close_pool(): the registry still holds it
    # The registry replaces a closed pool, under its lock, and only once.
    stand_in = django_lido.Pool(lambda: None, name="stand-in", max_size=1)
    assert registry.get_or_create(key, target, lambda: stand_in) is stand_in
    assert registry.get_or_create(key, target, lambda: pytest.fail("replaced twice")) is stand_in
    registry.close(key)
    # Both aliases then share one new pool.
    new = h["default"].pool
    assert new is not old and not new.closed
    assert h["replica"].pool is new
    assert one(h["replica"], "SELECT 1") == 1
    h["replica"].close()
    h["default"].close_pool()


def test_thread_sharing_rules_still_hold(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 2}))["default"]
    w.ensure_connection()
    errors: list[BaseException] = []

    def use() -> None:
        try:
            one(w, "SELECT 1")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=use)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], DatabaseError)
    assert "can only be used in that same thread" in str(errors[0])
    w.close()


def test_timeout_error_is_ours_and_django_natives(dj: Any) -> None:
    import psycopg_pool

    entry = database(dj, pool={"max_size": 1, "timeout": 0.2})
    h = handler(default=entry)
    holder = h["default"]
    holder.ensure_connection()
    try:
        other = holder.copy()
        with pytest.raises(django_lido.PoolTimeout) as info:
            other.connect()
        assert isinstance(info.value, psycopg_pool.PoolTimeout)
        assert "size 1/1, in use 1" in str(info.value)
        # Through Django's error wrapping, as for any connect error.
        with pytest.raises(OperationalError):
            other.ensure_connection()
    finally:
        holder.close()


# --- nothing passes between holders ------------------------------------------------------


def test_uncommitted_writes_never_reach_the_next_holder(dj: Any) -> None:
    table = unique("lido_writes")
    dj.execute(f"CREATE TABLE {table} (n int)")
    w = handler(default=database(dj, pool={"max_size": 1}))["default"]
    w.set_autocommit(False)
    with w.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    pid = one(w, "SELECT pg_backend_pid()")
    w.close()  # returned mid-transaction
    assert one(w, f"SELECT count(*) FROM {table}") == 0
    assert one(w, "SELECT pg_backend_pid()") == pid
    assert w.pool.stats()["returns_rolled_back"] == 1
    w.close()


def test_a_dead_threads_connection_is_reclaimed_and_its_writes_lost(dj: Any) -> None:
    table = unique("lido_leak")
    dj.execute(f"CREATE TABLE {table} (n int)")
    h = handler(default=database(dj, pool={"max_size": 1, "timeout": 10}))

    write_in_a_thread_that_dies(h, f"INSERT INTO {table} VALUES (1)")
    w = h["default"]
    assert one(w, f"SELECT count(*) FROM {table}") == 0
    # Given back when the thread ended (rolled back), not lost: the same connection again.
    s = w.pool.stats()
    assert (s["connections_leaked"], s["connections_num"]) == (0, 1)
    w.close()


def test_reset_auto_puts_back_settings_the_server_reports(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1}))["default"]
    app, style = app_of(w), one(w, "SHOW DateStyle")
    pid = one(w, "SELECT pg_backend_pid()")
    # On the driver's connection, past the statement hook: what the server reports alone.
    w.connection.execute("SET DateStyle = 'German'; SET application_name = 'somebody else'")
    w.close()
    assert one(w, "SELECT pg_backend_pid()") == pid
    assert one(w, "SHOW DateStyle") == style
    assert one(w, "SHOW application_name") == app
    w.close()


def test_reset_full_clears_all_session_state(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1, "reset": "full"}))["default"]
    pid = one(w, "SELECT pg_backend_pid()")
    with w.cursor() as cur:
        cur.execute("SET search_path = pg_catalog")
        cur.execute("CREATE TEMP TABLE lido_scratch (n int)")
        cur.execute("SELECT pg_advisory_lock(4242)")
        cur.execute("LISTEN lido_channel")
        cur.execute("SET work_mem = '77MB'")
    w.close()
    assert one(w, "SELECT pg_backend_pid()") == pid
    assert one(w, "SHOW search_path") == '"$user", public'
    assert one(w, "SELECT count(*) FROM pg_class WHERE relname = 'lido_scratch'") == 0
    assert one(w, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    assert one(w, "SELECT count(*) FROM pg_listening_channels()") == 0
    assert one(w, "SHOW work_mem") != "77MB"
    w.close()


# What a holder can leave on its session (issue 15, point 5): the statements that leave it,
# and a query whose answer shows it. None of it may reach the next holder of the same
# physical connection with the default reset policy.
BLEED_ROLE = "lido_bleed_role"
SESSION_STATE = {
    "search_path": (["SET search_path = pg_catalog"], "SHOW search_path"),
    "statement_timeout": (["SET statement_timeout = '77s'"], "SHOW statement_timeout"),
    "other_set": (["SET work_mem = '77MB'"], "SHOW work_mem"),
    "set_role": ([f"SET ROLE {BLEED_ROLE}"], "SELECT current_user"),
    "custom_setting": (
        ["SELECT set_config('lido.holder', 'first', false)"],
        "SELECT coalesce(current_setting('lido.holder', true), '')",
    ),
    "temp_table": (
        ["CREATE TEMP TABLE lido_scratch (n int)"],
        "SELECT to_regclass('pg_temp.lido_scratch') IS NOT NULL",
    ),
    "advisory_lock": (
        ["SELECT pg_advisory_lock(4242)"],
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    "listen": (["LISTEN lido_channel"], "SELECT count(*) FROM pg_listening_channels()"),
    "with_hold_cursor": (
        ["DECLARE lido_cursor CURSOR WITH HOLD FOR SELECT 1"],
        "SELECT count(*) FROM pg_cursors WHERE name = 'lido_cursor'",
    ),
    "prepared_statement": (
        ["PREPARE lido_statement AS SELECT 1"],
        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'lido_statement'",
    ),
    # Reported by the server, or put right at checkout, before this point too.
    "datestyle": (["SET DateStyle = 'German'"], "SHOW DateStyle"),
    "time_zone": (["SET TIME ZONE 'Asia/Tokyo'"], "SHOW TimeZone"),
    "session_authorization": (
        [f"SET SESSION AUTHORIZATION {BLEED_ROLE}"],
        "SELECT session_user",
    ),
}


@pytest.mark.parametrize("item", list(SESSION_STATE))
def test_no_session_state_reaches_the_next_holder(dj: Any, item: str) -> None:
    if not dj.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [BLEED_ROLE]):
        dj.execute(f"CREATE ROLE {BLEED_ROLE}")
    leave, probe = SESSION_STATE[item]
    w = handler(default=database(dj, pool={"max_size": 1}))["default"]
    pid = one(w, "SELECT pg_backend_pid()")
    fresh = one(w, probe)
    with w.cursor() as cur:
        for sql in leave:
            cur.execute(sql)
    left = one(w, probe)
    assert left != fresh, "the first holder did not change its session"
    w.close()
    assert one(w, "SELECT pg_backend_pid()") == pid, "not the same physical connection"
    assert one(w, probe) == fresh
    w.close()


def test_set_role_of_a_non_superuser_does_not_reach_the_next_holder(dj: Any) -> None:
    # For a superuser, SET ROLE changes the reported is_superuser; not for anybody else.
    user, role = "lido_plain_user", unique("lido_plain_role")
    if not dj.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user]):
        dj.execute(f"CREATE ROLE {user} LOGIN")
    dj.execute(f"CREATE ROLE {role}")
    dj.execute(f"GRANT {role} TO {user}")
    w = handler(default=database(dj, pool={"max_size": 1}, USER=user))["default"]
    pid = one(w, "SELECT pg_backend_pid()")
    with w.cursor() as cur:
        cur.execute(f"SET ROLE {role}")
    assert one(w, "SELECT current_user") == role
    w.close()
    assert one(w, "SELECT pg_backend_pid()") == pid
    assert one(w, "SELECT current_user") == user
    w.close()


def test_assume_role_is_set_once_per_physical_connection(dj: Any) -> None:
    role = unique("lido_role")
    dj.execute(f"CREATE ROLE {role}")
    user = dj._conn_params(dbname=None, tcp=False)["user"]
    dj.execute(f"GRANT {role} TO {user}")
    w = handler(default=database(dj, pool={"max_size": 1}, options={"assume_role": role}))[
        "default"
    ]
    for _ in range(3):
        assert one(w, "SELECT current_user") == role
        w.close()
    assert w.pool.stats()["connections_num"] == 1


# --- the lean path: checkout sends nothing -----------------------------------------------------


def test_checkout_and_return_send_nothing_to_the_server(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1}))["default"]
    one(w, "SELECT 1")  # the physical connection and its set-up
    raw = w.connection
    w.close()
    with tempfile.TemporaryFile("w+") as trace:
        raw.pgconn.trace(trace.fileno())
        try:
            for _ in range(20):
                w.ensure_connection()
                assert w.connection is raw
                w.close()
        finally:
            raw.pgconn.untrace()
        trace.seek(0)
        sent = [line for line in trace.read().splitlines() if "\tF\t" in line]
    assert sent == []
    # The trace does see traffic when there is some (the assertion above can fail).
    with tempfile.TemporaryFile("w+") as trace:
        raw.pgconn.trace(trace.fileno())
        try:
            one(w, "SELECT 1")
        finally:
            raw.pgconn.untrace()
        trace.seek(0)
        assert any("\tF\t" in line for line in trace.read().splitlines())
    w.close()


def test_the_statement_hook_is_on_with_debug_cursors_too(dj: Any) -> None:
    from django.db.backends.postgresql.base import CursorDebugWrapper

    w = handler(default=database(dj, pool={"max_size": 1}))["default"]
    w.force_debug_cursor = True
    default = one(w, "SHOW work_mem")
    with w.cursor() as cur:
        assert isinstance(cur, CursorDebugWrapper)  # the stock backend's, with copy() logged
        cur.execute("SET work_mem = '77MB'")
    assert w.queries[-1]["sql"] == "SET work_mem = '77MB'"
    w.close()
    assert one(w, "SHOW work_mem") == default
    w.close()


def test_a_full_reset_keeps_psycopgs_prepared_statements(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1}, options={"server_side_binding": True}))[
        "default"
    ]
    query = "SELECT count(*) FROM pg_class WHERE relkind = %s"
    for _ in range(8):
        one(w, query, ["r"])
    pid = one(w, "SELECT pg_backend_pid()")
    with w.cursor() as cur:
        cur.execute("PREPARE lido_mine AS SELECT 1")  # marks the connection
    ours = "SELECT name FROM pg_prepared_statements WHERE NOT from_sql ORDER BY name"
    driver_statements = [r[0] for r in dj_rows(w, ours)]
    assert driver_statements
    w.close()  # the full reset
    assert one(w, "SELECT pg_backend_pid()") == pid
    assert [r[0] for r in dj_rows(w, ours)] == driver_statements
    assert one(w, "SELECT count(*) FROM pg_prepared_statements WHERE from_sql") == 0
    for _ in range(3):  # psycopg still uses its statements, which still exist
        assert one(w, query, ["r"]) > 0
    w.close()


def dj_rows(w: Any, sql: str) -> list[Any]:
    with w.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def test_orm_requests_send_nothing_on_return(dj: Any) -> None:
    from django.db import models, transaction

    alias = unique("lido_orm")
    w = global_alias(alias, database(dj, pool={"max_size": 1}))
    meta = type("Meta", (), {"app_label": "lido_orm_tests", "db_table": unique("lido_orm")})
    Item = type(
        "Item" + alias,
        (models.Model,),
        {"__module__": __name__, "Meta": meta, "name": models.CharField(max_length=40)},
    )
    with w.schema_editor() as editor:
        editor.create_model(Item)
    w.close()

    def request(n: int) -> None:
        items = Item.objects.using(alias)
        item = items.create(name=f"item {n}")
        list(items.filter(name__startswith="item").order_by("-id")[:5])
        items.filter(pk=item.pk).update(name=f"renamed {n}")
        with transaction.atomic(using=alias):
            items.create(name="inner")
            with transaction.atomic(using=alias):  # a savepoint
                items.filter(name="inner").delete()
        list(items.filter(pk__in=[item.pk]).iterator(chunk_size=2))  # a server-side cursor
        items.filter(pk=item.pk).delete()

    request(0)
    raw = w.connection
    w.close()
    for n in range(1, 4):
        request(n)
        assert w.connection is raw
        with tempfile.TemporaryFile("w+") as trace:
            raw.pgconn.trace(trace.fileno())
            try:
                w.close()
            finally:
                raw.pgconn.untrace()
            trace.seek(0)
            sent = [line for line in trace.read().splitlines() if "\tF\t" in line]
        assert sent == [], f"request {n} sent on return: {sent}"


def test_a_server_side_cursor_left_open_does_not_reach_the_next_holder(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1}))["default"]
    pid = one(w, "SELECT pg_backend_pid()")
    # What QuerySet.iterator() uses: in autocommit mode, a cursor declared WITH HOLD.
    left_open = w.chunked_cursor()
    left_open.execute("SELECT generate_series(1, 100)")
    assert left_open.fetchmany(1) == [(1,)]
    assert one(w, "SELECT count(*) FROM pg_cursors") == 1
    w.close()
    assert one(w, "SELECT pg_backend_pid()") == pid
    assert one(w, "SELECT count(*) FROM pg_cursors") == 0
    w.close()


def test_short_connect_leaves_the_wrapper_as_djangos_connect_does(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1}, CONN_MAX_AGE=None))["default"]
    assert_short_connect_matches_djangos(w)
    w = handler(
        default=database(dj, pool={"max_size": 1}, options={"isolation_level": 3}),
    )["default"]
    assert_short_connect_matches_djangos(w)
    w.ensure_connection()
    assert w.connection.isolation_level == 3  # what Django's get_new_connection sets
    w.close()


def test_connect_steps_replaced_in_a_subclass_or_instance_are_honoured(dj: Any) -> None:
    from django_lido.backends.postgresql.base import DatabaseWrapper

    calls: list[str] = []

    class Custom(DatabaseWrapper):
        def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
            calls.append("subclass")
            return super().get_new_connection(conn_params)

    settings_dict = handler(default=database(dj, pool={"max_size": 1}))["default"].settings_dict
    w = Custom(settings_dict, "default")
    for _ in range(3):
        one(w, "SELECT 1")
        w.close()
    assert calls == ["subclass"] * 3

    for step in DatabaseWrapper.LIDO_CONNECT_STEPS:
        w = handler(default=database(dj, pool={"max_size": 1}))["default"]
        one(w, "SELECT 1")
        w.close()
        with mock.patch.object(w, step, wraps=getattr(w, step)) as patched:
            for _ in range(3):
                one(w, "SELECT 1")
                w.close()
        assert patched.call_count >= 3, step


def test_settings_changed_in_place_take_effect_at_the_next_connect(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1}))["default"]
    one(w, "SELECT 1")
    first = w.pool
    w.close()
    w.settings_dict["OPTIONS"]["pool"]["max_size"] = 2
    one(w, "SELECT 1")
    assert w.pool is not first
    assert w.pool.stats()["pool_max"] == 2
    w.close()
    w.settings_dict["OPTIONS"]["isolation_level"] = 3
    w.ensure_connection()
    assert w.connection.isolation_level == 3
    w.close()


def test_time_zone_change_is_applied_at_checkout_without_a_new_connection(dj: Any) -> None:
    entry = database(dj, pool={"max_size": 1})
    w = handler(default=entry)["default"]
    pid = one(w, "SELECT pg_backend_pid()")
    assert one(w, "SHOW TimeZone") == "UTC"
    w.close()
    with override_settings(TIME_ZONE="Asia/Tokyo"):
        w = handler(default=entry)["default"]  # a fresh wrapper reads the setting
        assert one(w, "SHOW TimeZone") == "Asia/Tokyo"
        assert one(w, "SELECT pg_backend_pid()") == pid
        w.close()
    w = handler(default=entry)["default"]
    assert one(w, "SHOW TimeZone") == "UTC"
    assert w.pool.stats()["connections_num"] == 1
    w.close()


# --- prepared statements and transaction poolers ------------------------------------------------


def test_prepared_statements_are_on_unless_behind_a_transaction_pooler(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 1}, options={"server_side_binding": True}))[
        "default"
    ]
    for _ in range(8):
        assert one(w, "SELECT count(*) FROM pg_class WHERE relkind = %s", ["r"]) > 0
    assert w.connection.prepare_threshold == 5
    assert one(w, "SELECT count(*) FROM pg_prepared_statements") >= 1
    w.close()

    w = handler(
        default=database(
            dj,
            pool={"max_size": 1, "transaction_pooler": True},
            options={"server_side_binding": True},
        )
    )["default"]
    for _ in range(8):
        one(w, "SELECT count(*) FROM pg_class WHERE relkind = %s", ["r"])
    assert w.connection.prepare_threshold is None
    assert one(w, "SELECT count(*) FROM pg_prepared_statements") == 0
    # No named (server-side) cursor either: chunked reads use a plain cursor.
    cur = w.chunked_cursor()
    assert getattr(cur.cursor, "name", None) in (None, "")
    cur.close()
    w.close()


# --- CONN_MAX_AGE and CONN_HEALTH_CHECKS with a pool -------------------------------------------


def test_conn_max_age_zero_gives_the_connection_back_at_request_end(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 2}, CONN_MAX_AGE=0))["default"]
    one(w, "SELECT 1")
    assert w.pool.stats()["in_use"] == 1
    w.close_if_unusable_or_obsolete()  # what close_old_connections() does
    assert w.connection is None and w.pool.stats()["in_use"] == 0


def test_conn_max_age_keeps_the_connection_across_requests_until_it_expires(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 2}, CONN_MAX_AGE=60))["default"]
    one(w, "SELECT 1")
    w.close_if_unusable_or_obsolete()
    assert w.connection is not None and w.pool.stats()["in_use"] == 1
    w.close_at = 0  # as if 60 s had passed
    w.close_if_unusable_or_obsolete()
    assert w.connection is None and w.pool.stats()["in_use"] == 0


def test_conn_health_checks_apply_to_a_connection_kept_across_requests(dj: Any) -> None:
    entry = database(dj, pool={"max_size": 2}, CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    w = handler(default=entry)["default"]
    one(w, "SELECT 1")
    w.close_if_unusable_or_obsolete()  # request end: kept
    dj.terminate_backends(application_name=app_of(w))
    # Next request: Django's health check finds the connection dead and takes another.
    assert one(w, "SELECT 1") == 1
    w.close()


def test_a_terminated_idle_connection_is_replaced_transparently(dj: Any) -> None:
    w = handler(default=database(dj, pool={"max_size": 2}))["default"]
    pid = one(w, "SELECT pg_backend_pid()")
    w.close()
    dj.terminate_backends(application_name=app_of(w))
    assert one(w, "SELECT pg_backend_pid()") != pid
    w.close()


# --- test databases ----------------------------------------------------------------------------


def test_test_databases_clone_and_destroy_with_pooled_connections_open(dj: Any) -> None:
    from django.db import connections

    conn = connections["lido_testdb"]
    old_name = conn.settings_dict["NAME"]
    test_name = conn.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        # Leave pooled connections to the test database idle in the pool, from two threads.
        def use() -> None:
            c = connections["lido_testdb"]
            one(c, "SELECT 1")
            c.close()

        one(conn, "SELECT 1")  # held by this thread from here on: the others need their own
        threads = [threading.Thread(target=use) for _ in range(2)]
        for t in threads:
            t.start()
        one(conn, "SELECT pg_sleep(0.05)")
        for t in threads:
            t.join()
        # The main thread holds one; the threads' connections wait idle in the pool.
        assert conn.pool.stats()["idle"] >= 1
        conn.creation.clone_test_db(suffix="1", verbosity=0, keepdb=False)
        clone = conn.creation.get_test_db_clone_settings("1")["NAME"]
        assert dj.execute("SELECT 1 FROM pg_database WHERE datname = %s", [clone])
        conn.creation.destroy_test_db(None, verbosity=0, suffix="1")
        assert not dj.execute("SELECT 1 FROM pg_database WHERE datname = %s", [clone])
    finally:
        one(conn, "SELECT 1")  # a pooled connection open again, right before the drop
        conn.close()
        conn.creation.destroy_test_db(old_name, verbosity=0)
    assert not dj.execute("SELECT 1 FROM pg_database WHERE datname = %s", [test_name])


# --- system checks -----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_system_checks_report_misconfigurations(dj: Any) -> None:
    from django_lido.backends.checks import check_pool_settings, check_server_limits

    databases = {
        "bad": database(dj, pool={"max_size": 2, "min_size": 3}),
        "kept": database(dj, pool={"max_size": 2}, CONN_MAX_AGE=None),
        "big": database(dj, pool={"max_size": 5000}),
        "default": database(dj, pool={"max_size": 2}),
    }
    connections = handler(**databases)
    with (
        override_settings(DATABASES=databases),
        mock.patch("django.db.connections", connections),
    ):
        found = {(m.id, m.msg.split(":")[0]) for m in check_pool_settings()}
        assert ("django_lido.E001", "DATABASES['bad']['OPTIONS']['pool']") in found
        assert any(i == "django_lido.W001" and "'kept'" in msg for i, msg in found)
        assert not any("'default'" in msg or "'big'" in msg for _, msg in found)
        limits = check_server_limits(databases=["big", "default"])
        assert [m.id for m in limits] == ["django_lido.W004"]
        assert "max_size=5000" in limits[0].msg
        for alias in databases:
            connections[alias].close()


# --- psycopg2 -------------------------------------------------------------------------------

PSYCOPG2_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["psycopg"] = None  # Django then picks psycopg2
    import django
    from django.conf import settings
    from django.db.utils import ConnectionHandler
    entry = json.loads(sys.argv[1])
    settings.configure(DATABASES={"default": entry}, USE_TZ=False, TIME_ZONE="UTC")
    django.setup()
    import psycopg2
    w = ConnectionHandler({"default": entry})["default"]
    def one(sql):
        with w.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    with w.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS lido_pg2 (n int)")
    out = {"driver": type(w.connection).__module__}
    pids = []
    for _ in range(3):
        pids.append(one("SELECT pg_backend_pid()"))
        w.close()
    w.set_autocommit(False)
    with w.cursor() as cur:
        cur.execute("INSERT INTO lido_pg2 VALUES (1)")
        cur.execute("SET DateStyle = 'German'")
    w.close()
    out["rows"] = one("SELECT count(*) FROM lido_pg2")
    out["datestyle"] = one("SHOW DateStyle")
    out["pids"] = pids + [one("SELECT pg_backend_pid()")]
    w.close()
    # Session state left through Django's cursors does not reach the next holder.
    with w.cursor() as cur:
        cur.execute("SET work_mem = '77MB'")
        cur.execute("PREPARE lido_pg2_statement AS SELECT 1")
        cur.execute("CREATE TEMP TABLE lido_pg2_scratch (n int)")
    w.close()
    out["left"] = [one("SELECT pg_backend_pid()") == pids[0], one("SHOW work_mem"),
                   one("SELECT count(*) FROM pg_prepared_statements"),
                   one("SELECT to_regclass('pg_temp.lido_pg2_scratch') IS NULL")]
    w.close()
    # A second physical connection, opened for a connect that took the short path, is set
    # up as Django's own connect does it: jsonb is left as text for JSONField's decoder.
    held = w.pool.getconn()
    out["jsonb"] = one("SELECT '[1, 2]'::jsonb")
    out["second_pid"] = one("SELECT pg_backend_pid()")
    w.close()
    w.pool.putconn(held)
    out["stats"] = {k: w.pool.stats()[k] for k in ("returns_rolled_back", "connections_num")}
    print(json.dumps(out))
    """
)


def test_psycopg2_backend(dj: Any) -> None:
    pytest.importorskip("psycopg2")
    entry = database(dj, pool={"max_size": 2})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", PSYCOPG2_SCRIPT, json.dumps(entry)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["driver"].startswith("psycopg2")
    assert out["rows"] == 0, "uncommitted insert leaked to the next holder"
    assert out["datestyle"] == "ISO, MDY"
    assert len(set(out["pids"])) == 1
    assert out["jsonb"] == "[1, 2]"
    assert out["second_pid"] not in out["pids"]
    assert out["stats"] == {"returns_rolled_back": 1, "connections_num": 2}
    assert out["left"] == [True, "4MB", 0, True]


def test_custom_check_option_runs_at_checkout_after_idle(dj: Any) -> None:
    checked: list[int] = []

    def check(conn: Any) -> None:
        checked.append(conn.info.backend_pid)
        conn.execute("SELECT 1")

    w = handler(default=database(dj, pool={"max_size": 1, "check": check, "check_after_idle": 0}))[
        "default"
    ]
    pid = one(w, "SELECT pg_backend_pid()")
    w.close()
    assert one(w, "SELECT pg_backend_pid()") == pid
    w.close()
    assert checked == [pid]


def test_connection_failing_djangos_health_check_is_discarded(dj: Any) -> None:
    entry = database(dj, pool={"max_size": 2}, CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    w = handler(default=entry)["default"]
    pid = one(w, "SELECT pg_backend_pid()")
    w.close_if_unusable_or_obsolete()  # request end: kept (CONN_MAX_AGE=None)
    with mock.patch.object(w, "is_usable", return_value=False):
        assert one(w, "SELECT pg_backend_pid()") != pid
    assert w.pool.stats()["pool_size"] == 1, "the unusable connection went back to the pool"
    w.close()


# --- PostGIS ------------------------------------------------------------------------------------

GIS_DB = "lido_gis"


def test_postgis_adapters_are_registered_once_per_physical_connection(dj: Any) -> None:
    from harness import django_suite

    if missing := django_suite.gis_prerequisites(dj):
        pytest.skip(missing)
    from django.contrib.gis.db.backends.postgis import base as stock_postgis
    from django.contrib.gis.geos import GEOSGeometry

    if not dj.execute("SELECT 1 FROM pg_database WHERE datname = %s", [GIS_DB]):
        dj.create_database(GIS_DB)
        dj.execute("CREATE EXTENSION postgis", dbname=GIS_DB)
    w = handler(
        default=database(
            dj, name=GIS_DB, engine="django_lido.backends.postgis", pool={"max_size": 2}
        )
    )["default"]
    point = w.ops.Adapter(GEOSGeometry("POINT(1 2)", srid=4326))
    made = mock.Mock(wraps=stock_postgis.postgis_adapters)
    with mock.patch.object(stock_postgis, "postgis_adapters", made):
        pids = set()
        for _ in range(5):
            pids.add(one(w, "SELECT pg_backend_pid()"))
            # The geometry dumper is in place on the reused connection.
            assert one(w, "SELECT ST_AsText(%s::geometry)", [point]) == "POINT(1 2)"
            w.close()
        assert len(pids) == 1
        assert made.call_count == 1
        # A new physical connection gets its own adapters, also when the wrapper connects
        # the short way (the pool looked up only once).
        held = w.pool.getconn()
        with mock.patch.object(w, "_lido_pool_for", wraps=w._lido_pool_for) as looked_up:
            assert one(w, "SELECT ST_AsText(%s::geometry)", [point]) == "POINT(1 2)"
        assert looked_up.call_count == 0
        assert w.connection is not held
        w.close()
        w.pool.putconn(held)
        w.close_pool()
        assert made.call_count == 2
