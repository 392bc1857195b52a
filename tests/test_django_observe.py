"""Issue 13 through Django: the statement hook tells the pool of each statement and
transaction, so ``Pool.connections()`` shows them, an idle transaction is reported with the
stack that began it and the stack that took the connection (and optionally ended), and the
holder's label comes from the request; against a real PostgreSQL."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import DatabaseError, transaction
from django_helpers import child_python, configure, database, global_alias, unique
from django_lido.labels import labels
from helpers import eventually

LOGGER = "django_lido.pool"
SECRET = "s3cr3t-4711-value"


@pytest.fixture(scope="module")
def dj(pg: Any) -> Any:
    configure(pg, default=database(pg, pool={"max_size": 4}))
    return pg


def wrapper(dj: Any, **pool: Any) -> Any:
    """A global alias of its own (``transaction.atomic`` looks aliases up globally)."""
    alias = unique("observe")
    w = global_alias(alias, database(dj, pool={"max_size": 2, **pool}))
    with w.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS lido_observe (v text)")
    w.close()
    return w


def wait_for_report(pool: Any, kind: str) -> None:
    eventually(lambda: any(r["kind"] == kind for r in pool.reports()), f"a {kind} report", 10)


def take_the_connection(w: Any) -> None:
    w.ensure_connection()


def begin_the_transaction(w: Any) -> Any:
    atomic = transaction.atomic(using=w.alias)
    atomic.__enter__()
    with w.cursor() as cur:
        cur.execute("INSERT INTO lido_observe (v) VALUES (%s)", [SECRET])
    return atomic


def test_connections_show_the_transaction_and_the_last_statement(dj: Any) -> None:
    w = wrapper(dj)
    pool = w.pool
    take_the_connection(w)
    try:
        (row,) = pool.connections()
        assert row["in_transaction"] is False and row["transaction_stack"] is None
        assert row["stack"][-1].endswith(" in take_the_connection")
        atomic = begin_the_transaction(w)
        (row,) = pool.connections()
        assert row["in_transaction"] is True and row["transaction_for"] >= 0
        assert row["transaction_stack"][-1].endswith(" in begin_the_transaction")
        assert row["statement_running"] is False
        assert row["last_statement_seconds"] > 0
        assert row["last_statement"].startswith("INSERT INTO lido_observe")
        assert SECRET not in str(row)
        atomic.__exit__(None, None, None)
        (row,) = pool.connections()
        assert row["in_transaction"] is False and row["transaction_for"] is None
    finally:
        w.close()
    assert pool.connections() == []


def run_the_next_statement(w: Any) -> None:
    with w.cursor() as cur:
        cur.execute("SELECT 1")


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_with_autocommit_off_the_next_statement_opens_the_next_transaction(
    dj: Any, end: str
) -> None:
    """``set_autocommit(False)``: a commit (or rollback) ends the transaction, and the driver
    opens the next one with the next statement; until then nothing is open, so nothing is
    reported idle in a transaction."""
    w = wrapper(dj, idle_in_transaction_threshold=0.2)
    pool = w.pool
    try:
        w.set_autocommit(False)
        run_the_next_statement(w)
        (row,) = pool.connections()
        assert row["in_transaction"] is True
        getattr(w, end)()
        (row,) = pool.connections()
        assert row["in_transaction"] is False and row["transaction_stack"] is None
        # Idle past the threshold with no transaction open: no report.
        threading.Event().wait(0.6)
        assert not [r for r in pool.reports() if r["kind"] == "idle_in_transaction"]
        run_the_next_statement(w)
        (row,) = pool.connections()
        assert row["in_transaction"] is True and row["transaction_for"] < 0.6
        assert row["transaction_stack"][-1].endswith(" in run_the_next_statement")
        wait_for_report(pool, "idle_in_transaction")
        w.rollback()
        w.set_autocommit(True)
        (row,) = pool.connections()
        assert row["in_transaction"] is False
    finally:
        w.close()
    assert pool.connections() == []


def test_a_statement_running_is_shown_as_running(dj: Any) -> None:
    w = wrapper(dj)
    pool = w.pool
    seen: list[dict[str, Any]] = []

    def run_a_slow_statement() -> None:
        with w.cursor() as cur:
            cur.execute("SELECT pg_sleep(1.5)")

    w.inc_thread_sharing()
    t = threading.Thread(target=run_a_slow_statement)
    t.start()
    try:
        eventually(
            lambda: any(r["statement_running"] for r in pool.connections()),
            "the statement is seen running",
            10,
        )
        seen = pool.connections()
    finally:
        t.join(10)
        w.dec_thread_sharing()
        w.close()
    assert seen[0]["last_statement"].startswith("SELECT pg_sleep(")


def test_a_long_hold_is_logged_with_the_function_that_took_it(
    dj: Any, caplog: pytest.LogCaptureFixture
) -> None:
    w = wrapper(dj, leak_threshold=0.2)
    pool = w.pool
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        take_the_connection(w)
        try:
            wait_for_report(pool, "long_hold")
        finally:
            w.close()
    (held,) = [r.getMessage() for r in caplog.records if "has been held" in r.getMessage()]
    assert "taken at:" in held and "in take_the_connection" in held
    assert [r["kind"] for r in pool.reports()] == ["long_hold", "long_hold_returned"]


def test_an_idle_transaction_is_reported_with_both_stacks(
    dj: Any, caplog: pytest.LogCaptureFixture
) -> None:
    w = wrapper(dj, idle_in_transaction_threshold=0.3)
    pool = w.pool
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        take_the_connection(w)
        atomic = begin_the_transaction(w)
        try:
            wait_for_report(pool, "idle_in_transaction")
        finally:
            atomic.__exit__(None, None, None)
            w.close()
    (report,) = [r for r in pool.reports() if r["kind"] == "idle_in_transaction"]
    assert report["seconds"] >= 0.3
    assert report["transaction_stack"][-1].endswith(" in begin_the_transaction")
    assert report["stack"][-1].endswith(" in take_the_connection")
    assert report["last_statement"].startswith("INSERT INTO lido_observe")
    (logged,) = [
        r.getMessage() for r in caplog.records if "idle in a transaction" in r.getMessage()
    ]
    assert "in begin_the_transaction" in logged and "in take_the_connection" in logged
    assert "INSERT INTO lido_observe" in logged
    assert SECRET not in logged and SECRET not in str(report)


def test_an_idle_transaction_is_ended_after_the_timeout(dj: Any) -> None:
    w = wrapper(dj, idle_in_transaction_threshold=None, idle_in_transaction_timeout=0.3)
    pool = w.pool
    with w.cursor() as cur:
        cur.execute("DELETE FROM lido_observe")
    take_the_connection(w)
    closed_before = pool.stats()["closes_broken"]
    atomic = begin_the_transaction(w)
    try:
        wait_for_report(pool, "idle_transaction_ended")
        with pytest.raises(DatabaseError), w.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        with pytest.raises(DatabaseError):
            atomic.__exit__(None, None, None)
        w.close()
    # Discarded on return, and the server rolled the insert back.
    assert pool.stats()["closes_broken"] == closed_before + 1
    with w.cursor() as cur:
        cur.execute("SELECT count(*) FROM lido_observe WHERE v = %s", [SECRET])
        assert cur.fetchone()[0] == 0
    w.close()


def test_the_holder_label_is_the_request(dj: Any) -> None:
    w = wrapper(dj)
    pool = w.pool
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/orders/7/"}
    request_started.send(sender=WSGIHandler, environ=environ)
    try:
        take_the_connection(w)
        (row,) = pool.connections()
        assert row["holder"]["label"] == "GET /orders/7/"
    finally:
        request_finished.send(sender=WSGIHandler)  # gives it back too (CONN_MAX_AGE 0)
    assert threading.get_ident() not in labels
    assert pool.connections() == []


CELERY_SCRIPT = """
import json, sys
import celery  # imported before Django is set up, as in a worker
import django
from django.conf import settings
settings.configure(DATABASES={"default": json.loads(sys.argv[1])}, USE_TZ=False)
django.setup()
from celery.signals import task_postrun, task_prerun
from django.db import connection

class Task:
    name = "shop.tasks.send_invoice"

connection.pool  # the first pooled wrapper connects the label handlers
task_prerun.send(sender=Task, task_id="1", task=Task(), args=(), kwargs={})
connection.ensure_connection()
during = connection.pool.connections()[0]["holder"]["label"]
task_postrun.send(sender=Task, task_id="1", task=Task(), args=(), kwargs={}, retval=None)
after = connection.pool.connections()[0]["holder"]["label"]
connection.close()
print(json.dumps([during, after]))
"""


def test_the_holder_label_is_the_celery_task(dj: Any) -> None:
    pytest.importorskip("celery")
    entry = database(dj, pool={"max_size": 1})
    out = child_python(CELERY_SCRIPT, json.dumps(entry))
    assert json.loads(out) == [
        "task shop.tasks.send_invoice",
        None,
    ]
