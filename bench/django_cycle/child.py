"""What runs in the child processes: Django set-up, the scenarios and --info."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import _common

from django_cycle.variants import (
    APP_LABEL,
    AUTHORS,
    BOOKS,
    COUNTRIES,
    ITEMS,
    PUBLISHERS,
    STORES,
    database_settings,
    split_key,
)

# --- child: Django set-up ------------------------------------------------------------------------


def configure_django(key: str, db: dict[str, str], args: argparse.Namespace) -> None:
    import django
    from django.conf import settings

    if args.vendor == "mysql" and args.driver == "pymysql":
        import pymysql

        pymysql.install_as_MySQLdb()  # before Django's MySQL backend imports MySQLdb
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=[],
        DATABASES={"default": database_settings(key, db, args.vendor)},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()


def define_models() -> dict[str, Any]:
    """The benchmark's models, in an app label that is not installed (no migrations)."""
    from django.db import models

    def model(name: str, fields: dict[str, Any]) -> Any:
        meta = type("Meta", (), {"app_label": APP_LABEL, "db_table": f"{APP_LABEL}_{name.lower()}"})
        return type(name, (models.Model,), {"__module__": __name__, "Meta": meta, **fields})

    item = model("Item", {"name": models.CharField(max_length=40)})
    publisher = model(
        "Publisher",
        {"name": models.CharField(max_length=60), "country": models.CharField(max_length=2)},
    )
    author = model(
        "Author", {"name": models.CharField(max_length=60), "age": models.IntegerField()}
    )
    store = model(
        "Store", {"name": models.CharField(max_length=60), "city": models.CharField(max_length=40)}
    )
    book = model(
        "Book",
        {
            "title": models.CharField(max_length=100),
            "pages": models.IntegerField(),
            "rating": models.FloatField(),
            "pubdate": models.DateField(),
            "author": models.ForeignKey(author, models.CASCADE),
            "publisher": models.ForeignKey(publisher, models.CASCADE),
            "store": models.ForeignKey(store, models.CASCADE),
        },
    )
    return {"Item": item, "Publisher": publisher, "Author": author, "Store": store, "Book": book}


def child_setup(m: dict[str, Any]) -> dict[str, Any]:
    """Creates the tables and rows (run once, by the parent, in a stock-backend child)."""
    import datetime as dt

    from django.db import connection

    rnd = random.Random(42)
    with connection.schema_editor() as editor:
        for name in ("Item", "Publisher", "Author", "Store", "Book"):
            editor.create_model(m[name])
    m["Item"].objects.bulk_create(m["Item"](name=f"item {i}") for i in range(1, ITEMS + 1))
    pubs = m["Publisher"].objects.bulk_create(
        m["Publisher"](name=f"publisher {i}", country=COUNTRIES[i % len(COUNTRIES)])
        for i in range(PUBLISHERS)
    )
    authors = m["Author"].objects.bulk_create(
        m["Author"](name=f"author {i}", age=rnd.randint(20, 90)) for i in range(AUTHORS)
    )
    stores = m["Store"].objects.bulk_create(
        m["Store"](name=f"store {i}", city=f"city {i % 7}") for i in range(STORES)
    )
    day0 = dt.date(2000, 1, 1)
    m["Book"].objects.bulk_create(
        m["Book"](
            title=f"book {i}",
            pages=rnd.randint(50, 900),
            rating=rnd.random() * 5,
            pubdate=day0 + dt.timedelta(days=rnd.randint(0, 9000)),
            author=rnd.choice(authors),
            publisher=rnd.choice(pubs),
            store=rnd.choice(stores),
        )
        for i in range(BOOKS)
    )
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute("ANALYZE")
        else:  # fresh statistics for the planner, as ANALYZE above (returns a status row each)
            cur.execute("ANALYZE TABLE " + ", ".join(model._meta.db_table for model in m.values()))
            cur.fetchall()
        cur.execute(f"SELECT count(*) FROM {APP_LABEL}_item")
        (items,) = cur.fetchone()
        server_tz = server_timezone(cur, connection.vendor)
    connection.close()
    return {"items": items, "server_timezone": server_tz}


def server_timezone(cur: Any, vendor: str) -> str:
    if vendor == "postgresql":
        cur.execute("SHOW TimeZone")
        return cur.fetchone()[0]
    cur.execute("SELECT @@session.time_zone, @@system_time_zone")
    tz, system = cur.fetchone()
    return f"{tz} ({system})" if tz == "SYSTEM" else tz


# --- child: scenarios ----------------------------------------------------------------------------


def cpu_seconds() -> float:
    """This process's CPU time, all threads, user + system."""
    t = os.times()
    return t.user + t.system


def usage() -> tuple[float, float, int, int]:
    """(user s, system s, voluntary, involuntary context switches) of this process."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_nvcsw, r.ru_nivcsw


def usage_per(a: tuple[float, float, int, int], b: tuple[float, float, int, int], n: int) -> dict:
    n = max(1, n)
    return {
        "user_us": (b[0] - a[0]) / n * 1e6,
        "sys_us": (b[1] - a[1]) / n * 1e6,
        "vcsw": (b[2] - a[2]) / n,
        "ivcsw": (b[3] - a[3]) / n,
    }


def pool_figures() -> dict[str, Any]:
    """Hold and wait times from a django-lido pool (cumulative, warm-up included)."""
    from django.db import connection

    pool = getattr(connection, "pool", None)
    stats = getattr(pool, "stats", None)
    if not callable(stats):
        return {}
    st = stats()
    out: dict[str, Any] = {}
    for name in ("usage", "acquire_wait"):
        h = st.get(name)
        if isinstance(h, dict) and h.get("count"):
            out[f"{name}_p50_ms"] = h.get("p50_ms")
            out[f"{name}_p99_ms"] = h.get("p99_ms")
    if st.get("requests_num"):
        out["queued_share"] = st.get("requests_queued", 0) / st["requests_num"]
    return {"pool": out}


def run_a(key: str, args: argparse.Namespace) -> dict[str, Any]:
    from django.db import connection

    close = split_key(key)[0] != "persistent"  # persistent: never closed (the limit)

    def loop(seconds: float) -> tuple[int, float]:
        n = 0
        cursor = connection.cursor
        clock = time.perf_counter
        t0 = clock()
        deadline = t0 + seconds
        if close:
            conn_close = connection.close
            while True:
                cursor().execute("select 1")
                conn_close()
                n += 1
                if clock() >= deadline:
                    break
        else:
            while True:
                cursor().execute("select 1")
                n += 1
                if clock() >= deadline:
                    break
        return n, clock() - t0

    loop(args.warmup)
    cpu0 = cpu_seconds()
    with profiling(args.profile):
        n, elapsed = loop(args.seconds)
    cpu = cpu_seconds() - cpu0
    connection.close()
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed, "cpu_us": cpu / n * 1e6}


def run_b(key: str, args: argparse.Namespace) -> dict[str, Any]:
    from django.db import close_old_connections, connection

    kind, n = split_key(key)
    # persistent-N runs N threads, one connection each; every other variant --threads.
    threads = n if kind == "persistent" and n else args.threads
    if args.profile and threads != 1:
        raise SystemExit("--profile in (b) needs --threads 1 (use py-spy for more threads)")
    counts = [0] * threads
    stop = threading.Event()
    errors: list[str] = []
    profiles: list[Any] = []
    sql_pk = f"SELECT id, name FROM {APP_LABEL}_item WHERE id = %s"
    started = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        rnd = random.Random(i)
        prof = None
        try:
            started.wait()
            while not stop.is_set():
                if prof is None and args.profile and measuring.is_set():
                    # One thread only: since Python 3.12 cProfile is one per process.
                    import cProfile

                    prof = cProfile.Profile()
                    prof.enable()
                close_old_connections()
                with connection.cursor() as cur:
                    cur.execute("select 1")
                    cur.fetchone()
                    cur.execute(sql_pk, [rnd.randint(1, ITEMS)])
                    cur.fetchone()
                close_old_connections()
                counts[i] += 1
        except BaseException:
            errors.append(f"thread {i}:\n{traceback.format_exc()}")
            stop.set()
        finally:
            if prof is not None:
                prof.disable()
                profiles.append(prof)
            try:
                connection.close()
            except Exception:
                errors.append(f"thread {i} close:\n{traceback.format_exc()}")

    measuring = threading.Event()
    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    started.wait()
    stop.wait(args.warmup)
    before = counts[:]
    cpu0 = cpu_seconds()
    use0 = usage()
    t0 = time.perf_counter()
    measuring.set()
    stop.wait(args.seconds)
    after = counts[:]
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    use1 = usage()
    figures = pool_figures()
    stop.set()
    hung = join_all(workers, timeout=max(30.0, args.seconds * 5))
    if args.profile and profiles:
        import pstats

        stats = pstats.Stats(profiles[0])
        for p in profiles[1:]:
            stats.add(p)
        stats.dump_stats(args.profile)
    per_thread = [b - a for a, b in zip(before, after, strict=True)]
    out: dict[str, Any] = {
        "rate": sum(per_thread) / elapsed,
        "fairness": min(per_thread) / max(1, max(per_thread)),
        "per_thread": per_thread,
        "elapsed": elapsed,
        "cpu_us": cpu / max(1, sum(per_thread)) * 1e6,
        **usage_per(use0, use1, sum(per_thread)),
        **figures,
    }
    if errors:
        out["error"] = "\n".join(errors[:3]) + (
            f"\n(+{len(errors) - 3} more)" if len(errors) > 3 else ""
        )
    if hung:
        out["error"] = (
            out.get("error", "") + f"\n{hung} thread(s) still running after stop"
        ).strip()
    return out


def join_all(workers: list[threading.Thread], timeout: float) -> int:
    """Joins the workers; if some hang, dumps every thread's stack to stderr and returns how
    many are still alive."""
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    alive = sum(w.is_alive() for w in workers)
    if alive:
        import faulthandler

        print(f"{alive} worker(s) hang; stacks:", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    return alive


def run_c(key: str, args: argparse.Namespace, m: dict[str, Any]) -> dict[str, Any]:
    from django.db import connection

    Book = m["Book"]
    rnd = random.Random(7)
    ages = list(range(25, 70, 5))

    def query() -> list[Any]:
        return list(
            Book.objects.select_related("author", "publisher", "store")
            .filter(publisher__country=rnd.choice(COUNTRIES), author__age__gt=rnd.choice(ages))
            .order_by("-pubdate", "id")[:10]
        )

    def loop(seconds: float) -> tuple[int, float, int]:
        n = rows = 0
        clock = time.perf_counter
        t0 = clock()
        deadline = t0 + seconds
        while True:
            rows += len(query())
            connection.close()
            n += 1
            if clock() >= deadline:
                break
        return n, clock() - t0, rows

    loop(args.warmup)
    cpu0 = cpu_seconds()
    with profiling(args.profile):
        n, elapsed, rows = loop(args.seconds)
    cpu = cpu_seconds() - cpu0
    query()
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_prepared_statements")
        (prepared,) = cur.fetchone()
    cursor_class = type(connection.connection.cursor()).__name__
    connection.close()
    return {
        "rate": n / elapsed,
        "n": n,
        "elapsed": elapsed,
        "rows_per_query": rows / max(1, n),
        "cpu_us": cpu / max(1, n) * 1e6,
        "prepared": prepared,
        "cursor_class": cursor_class,
    }


@contextmanager
def profiling(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(path)


def close_pools(key: str) -> None:
    """Closes this process's pools (not measured): psycopg_pool otherwise spends 5 s per
    worker thread at exit complaining that it could not stop them."""
    from django.apps import apps

    if not apps.ready:
        return
    from django.db import connection

    connection.close()
    while _before_close:
        _before_close.pop()()
    close_pool = getattr(connection, "close_pool", None)
    if close_pool is not None:
        close_pool()
    if split_key(key)[0] == "dbcp":
        from dj_db_conn_pool.core import pool_container

        pool_container.dispose()


def install_noop_pool() -> None:
    """The "noop" variant: the stock backend, whose every connect hands back one physical
    connection, opened once, and whose close keeps it (no pool code, no check, no reset).
    Django's own connect()/close() still run at each checkout."""
    from django.db import connections

    cls = type(connections["default"])
    stock_new_connection = cls.get_new_connection
    kept: list[Any] = []

    def get_new_connection(self: Any, conn_params: dict[str, Any]) -> Any:
        if not kept:
            kept.append(stock_new_connection(self, conn_params))
        return kept[0]

    cls.get_new_connection = get_new_connection
    cls._close = lambda self: None


def install_noop_engine() -> None:
    """The "lido_noop" variant: django-lido's backend, with the pool's checkout and return
    replaced by handing back one connection (taken from the pool for good) and doing
    nothing. What is left is Django's connect()/close() and django-lido's glue."""
    from django.db import connections

    wrapper = connections["default"]
    wrapper.ensure_connection()
    raw, pool = wrapper.connection, wrapper.pool
    wrapper.close()
    if pool.getconn() is not raw:
        raise RuntimeError("the pool did not hand back its only connection")
    pool.getconn = lambda timeout=None: raw
    pool.putconn = lambda conn: None

    def give_back() -> None:
        # Returned before the pool closes, so that it is not reported as leaked.
        del pool.getconn, pool.putconn
        pool.putconn(raw)

    _before_close.append(give_back)


# Run by close_pools() first (the "lido_noop" variant's connection goes back to its pool).
_before_close: list[Callable[[], None]] = []


def child_main(args: argparse.Namespace) -> int:
    key, scenario = args.child
    db = json.loads(args.db)
    result: dict[str, Any] = {"variant": key, "scenario": scenario}
    try:
        configure_django(key if scenario != "setup" else "nopool", db, args)
        if split_key(key)[0] == "noop" and scenario != "setup":
            install_noop_pool()
        if split_key(key)[0] == "lido_noop" and scenario != "setup":
            install_noop_engine()
        m = define_models()
        if scenario == "setup":
            result.update(child_setup(m))
        elif scenario == "a":
            result.update(run_a(key, args))
        elif scenario == "b":
            result.update(run_b(key, args))
        elif scenario == "c":
            result.update(run_c(key, args, m))
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
    except BaseException:
        result["error"] = traceback.format_exc()
    try:
        close_pools(key)
    except BaseException:
        result["cleanup_error"] = traceback.format_exc()
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


def child_info(args: argparse.Namespace) -> int:
    import django

    info = {"python": _common.python_line(), "django": django.get_version()}
    if args.vendor == "postgresql":
        import psycopg

        libpq = psycopg.pq.version()
        info["psycopg"] = (
            f"{psycopg.__version__} ({psycopg.pq.__impl__}, libpq {libpq // 10000}.{libpq % 10000})"
        )
        dists: tuple[str, ...] = ("psycopg-pool",)
    elif args.driver == "pymysql":  # (pymysql.__version__ is the mysqlclient one it poses as)
        info["driver"] = f"PyMySQL {_common.dist_version('PyMySQL')}"
        dists = ()
    else:
        import MySQLdb

        info["driver"] = (
            f"mysqlclient {_common.dist_version('mysqlclient')} "
            f"(client library {MySQLdb.get_client_info()})"
        )
        dists = ()
    for dist in (*dists, "django-db-connection-pool", "SQLAlchemy", "django-lido"):
        info[dist] = _common.dist_version(dist) or "not installed"
    info["git"] = _common.git_describe() or ""
    print(json.dumps(info))
    return 0
