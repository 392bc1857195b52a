"""The statement classifier's binding (``django_lido._lido.changes_session``), as the
Django backends' statement hook calls it: the SQL and Django's ``connection.vendor``."""

from __future__ import annotations

import pytest
from django_lido._lido import changes_session

PG_CHANGES = [
    "SET search_path TO other",
    "set statement_timeout = 5",
    "SET ROLE other",
    "SET SESSION AUTHORIZATION other",
    "RESET ALL",
    "SELECT set_config('app.user', '1', false)",
    "CREATE TEMP TABLE t (id int)",
    "SELECT pg_advisory_lock(42)",
    "LISTEN channel",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "PREPARE q AS SELECT 1",
    "/* leading */ SET search_path TO x",
]
PG_PLAIN = [
    'SELECT "auth_user"."id" FROM "auth_user" WHERE "auth_user"."id" = %s',
    'INSERT INTO "app_item" ("name") VALUES (%s) RETURNING "app_item"."id"',
    "UPDATE app_item SET name = %s WHERE id = %s",
    "DELETE FROM app_item WHERE id = 1",
    "SET LOCAL statement_timeout = 1000",
    'SAVEPOINT "s1_x1"',
    "SELECT pg_advisory_xact_lock(1)",
    "SELECT 'SET x' FROM t",
    "",
]
MYSQL_CHANGES = [
    "SET NAMES utf8mb4",
    "SET @x = 1",
    "SELECT @x := 1",
    "SELECT 1 INTO @x",
    "SELECT GET_LOCK('a', 0)",
    "CREATE TEMPORARY TABLE t (id int)",
    "USE other",
    "PREPARE s FROM 'SELECT 1'",
]
MYSQL_PLAIN = [
    "SELECT `app_item`.`id` FROM `app_item` WHERE `app_item`.`id` = %s",
    "INSERT INTO `app_item` (`name`) VALUES (%s)",
    "SELECT @@max_connections, @@max_user_connections",
    "CREATE TABLE t (id int)",
]


@pytest.mark.parametrize("sql", PG_CHANGES)
def test_postgres_session_changes(sql: str) -> None:
    assert changes_session(sql, "postgresql") is True
    assert changes_session(sql.encode(), "postgresql") is True


@pytest.mark.parametrize("sql", PG_PLAIN)
def test_postgres_plain_statements(sql: str) -> None:
    assert changes_session(sql, "postgresql") is False
    assert changes_session(sql.encode(), "postgresql") is False


@pytest.mark.parametrize("sql", MYSQL_CHANGES)
def test_mysql_session_changes(sql: str) -> None:
    assert changes_session(sql, "mysql") is True


@pytest.mark.parametrize("sql", MYSQL_PLAIN)
def test_mysql_plain_statements(sql: str) -> None:
    assert changes_session(sql, "mysql") is False


def test_non_ascii_text_is_read() -> None:
    assert changes_session("SELECT 'é€' FROM t", "postgresql") is False
    assert changes_session("SET application_name = 'é€'", "postgresql") is True


def test_what_cannot_be_read_counts_as_a_change() -> None:
    # A psycopg sql.Composed, or bytes that are not UTF-8: not read, so a reset.
    assert changes_session(object(), "postgresql") is True
    assert changes_session(b"SELECT \xff", "postgresql") is True


def test_unknown_vendor_is_refused() -> None:
    with pytest.raises(ValueError, match="'postgresql' or 'mysql'"):
        changes_session("SELECT 1", "sqlite")
