"""Django-level benchmark: no pool, persistent connections, Django's native pool,
django-db-connection-pool and django-lido, side by side in one run, on PostgreSQL or MariaDB.

One throwaway server (Unix socket) unless --conninfo / --mysql-url is given: PostgreSQL from
harness.servers (trust), or with --vendor mysql MariaDB from
harness.mariadb (root, no password; mysqlclient, or PyMySQL with --driver pymysql).
Every (variant, scenario) runs in its own child process of this script (Django settings are per
process): `--child VARIANT SCENARIO` configures Django with settings.configure(), warms up for
--warmup seconds, measures for --seconds and prints one JSON line. The parent interleaves
repetitions (rotating the order of the variants each repetition), takes medians and prints the
tables; unless --no-write it also rewrites the `django_cycle` (PostgreSQL) or
`django_cycle_mysql` (MariaDB) section of docs/benchmarks.md.

Scenarios:

* a: one thread, `connection.cursor().execute("select 1"); connection.close()` in a loop
  (the persistent variant never closes: the limit) -> iterations/s;
* b: --threads threads (16), each cycle `close_old_connections()`, `select 1`, a primary-key
  lookup in a 1,000-row table, `close_old_connections()` -> cycles/s, fairness (min/max
  cycles per thread), peak server connections (pg_stat_activity or the MariaDB processlist,
  polled by the parent);
* c (PostgreSQL only): one thread, a 4-table ORM query (`Book` with `select_related` author,
  publisher, store, filtered and ordered, first 10 rows), one checkout per query ->
  queries/s; also reports how many statements the server holds prepared on the connection at
  the end.

MySQL has no native pool in Django and no server-side binding: on MariaDB the variants are no
pool, persistent, django-db-connection-pool and lido, in (a) and (b).

Run from the repo root (Python 3.13 venv: the one the anchor figures were taken with):

    .venv313/bin/python bench/django_cycle.py                  # about 4-5 minutes
    .venv313/bin/python bench/django_cycle.py --quick          # about a minute, smoke figures
    .venv313/bin/python bench/django_cycle.py --vendor mysql   # MariaDB, about 2-3 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

VENDORS = ("postgresql", "mysql")  # Django's vendor names, also the backends' module names
SECTIONS = {"postgresql": "django_cycle", "mysql": "django_cycle_mysql"}
DBNAME = "djbench"
APP_LABEL = "djbench"
ITEMS = 1000
BOOKS = 1000
AUTHORS = 200
PUBLISHERS = 50
STORES = 20
COUNTRIES = ("AR", "BR", "CA", "DE", "ES", "FR", "IT", "JP", "NL", "US")


# --- variants ----------------------------------------------------------------------------------
#
# A variant key is "kind" or "kind-N" (N: pool size). The child builds its DATABASES entry
# from the key; the parent only passes keys around.

KINDS: dict[str, str] = {  # kind -> row label
    "nopool": "no pool",
    "persistent": "persistent",
    "native": "native pool",
    "native_ssbp": "native pool + server_side_binding + prepare_threshold 5 (info)",
    "dbcp": "django-db-connection-pool",
    "lido": "lido",
    "lido_ssb": "lido + server_side_binding",
    "noop": "stock backend + a no-op pool (info)",
    "lido_noop": "lido backend + a no-op engine (info)",
}
MYSQL_DRIVERS = {"mysqlclient": "MySQLdb", "pymysql": "pymysql"}  # --driver -> module
# Django's MySQL backend has no pool, and MySQLdb/PyMySQL bind on the client only.
POSTGRESQL_ONLY = frozenset({"native", "native_ssbp", "lido_ssb"})


def split_key(key: str) -> tuple[str, int | None]:
    kind, _, size = key.partition("-")
    if kind not in KINDS:
        raise ValueError(f"unknown variant kind {kind!r} in {key!r}")
    return kind, int(size) if size else None


def label(key: str, threads: int) -> str:
    kind, n = split_key(key)
    if n is None or kind == "nopool":
        return KINDS[kind]
    if kind == "persistent":
        # Persistent with fewer threads than the others: 4 threads with a connection
        # each, no pool, is what any pool of 4 shared by more threads can at best reach
        # in (b), where a thread does nothing but database work.
        return f"persistent, {n} threads" + (" (info)" if n < threads else "")
    if kind == "dbcp":
        return f"{KINDS[kind]} size {n}, no overflow"
    return f"{KINDS[kind]}, max {n}"


def database_settings(key: str, db: dict[str, str], vendor: str) -> dict[str, Any]:
    """The DATABASES entry of a variant; `db` has host (a Unix socket: a directory for
    PostgreSQL, the socket file for MySQL), port, user and maybe password."""
    kind, n = split_key(key)
    if kind in POSTGRESQL_ONLY and vendor != "postgresql":
        raise ValueError(f"variant {key!r} is PostgreSQL-only")
    entry: dict[str, Any] = {
        "ENGINE": f"django.db.backends.{vendor}",
        "NAME": DBNAME,
        "USER": db["user"],
        "HOST": db["host"],
        "PORT": db["port"],
        "CONN_MAX_AGE": 0,
        "OPTIONS": {},
    }
    if db.get("password"):
        entry["PASSWORD"] = db["password"]
    if kind == "persistent":
        entry["CONN_MAX_AGE"] = 600
    elif kind == "native":
        entry["OPTIONS"] = {"pool": {"min_size": n, "max_size": n}}
    elif kind == "native_ssbp":
        entry["OPTIONS"] = {
            "server_side_binding": True,
            "prepare_threshold": 5,
            "pool": {"min_size": n, "max_size": n},
        }
    elif kind == "dbcp":
        entry["ENGINE"] = f"dj_db_conn_pool.backends.{vendor}"
        entry["POOL_OPTIONS"] = {"POOL_SIZE": n, "MAX_OVERFLOW": 0}
    elif kind == "lido":
        # Sized like the native pool above: opened ahead, min_size = max_size.
        entry["ENGINE"] = f"django_lido.backends.{vendor}"
        entry["OPTIONS"] = {"pool": {"min_size": n, "max_size": n}}
    elif kind == "lido_noop":
        # One connection, which install_noop_engine() takes from the pool for good.
        entry["ENGINE"] = f"django_lido.backends.{vendor}"
        entry["OPTIONS"] = {"pool": {"max_size": 1}}
    elif kind == "lido_ssb":
        entry["ENGINE"] = "django_lido.backends.postgresql"
        entry["OPTIONS"] = {
            "server_side_binding": True,
            "pool": {"min_size": n, "max_size": n},
        }
    return entry


def scenario_variants(scenario: str, args: argparse.Namespace) -> list[str]:
    keys = postgresql_variants(scenario, args)
    if args.vendor == "postgresql":
        return keys
    return [k for k in keys if split_key(k)[0] not in POSTGRESQL_ONLY]


def postgresql_variants(scenario: str, args: argparse.Namespace) -> list[str]:
    n, t = args.size, args.threads
    if scenario == "a":
        return [
            "nopool",
            "persistent",
            "noop",
            "lido_noop",
            f"native-{n}",
            f"dbcp-{n}",
            f"lido-{n}",
        ]
    if scenario == "b":
        return [
            "nopool",
            f"persistent-{t}",
            f"persistent-{n}",
            f"native-{n}",
            f"native-{t}",
            f"dbcp-{n}",
            f"lido-{n}",
            f"lido-{t}",
        ]
    if scenario == "c":
        return [f"native-{n}", f"lido-{n}", f"lido_ssb-{n}", f"native_ssbp-{n}"]
    raise ValueError(scenario)


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


# --- parent ------------------------------------------------------------------------------------


@dataclass
class Runs:
    rate: list[float] = field(default_factory=list)
    fairness: list[float] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class BenchServer:
    """The server the children connect to, as the parent sees it."""

    name: str  # "PostgreSQL" or "MariaDB"
    version: str
    desc: str
    params: dict[str, str]  # for the children: host, port, user and maybe password
    pid: int | None  # the server process, for the CPU ledger; None if not ours
    admin: Callable[[], Any]  # opens an autocommit DB-API connection off the bench database
    count_sql: str  # connections to the bench database (one %s: its name), not the admin's


# (The admin connection is in autocommit: in a transaction PostgreSQL would keep serving one
# stats snapshot.)
POSTGRESQL_COUNT_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'"
)
# The admin connection has no default database; its id is left out anyway, in case it does.
MYSQL_COUNT_SQL = (
    "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()"
)


class Monitor:
    """Polls the server for connections to the bench database (pg_stat_activity or the
    MariaDB processlist), from an admin connection, in a thread of the parent process."""

    def __init__(self, server: BenchServer, interval: float) -> None:
        self.conn = server.admin()
        self.count_sql = server.count_sql
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute(self.count_sql, [DBNAME])
            return cur.fetchone()[0]

    def wait_idle(self, timeout: float = 5.0) -> int:
        """Waits until no backend is connected to the bench database (the last child's
        backends exit asynchronously); returns how many are left."""
        deadline = time.monotonic() + timeout
        while (n := self.count()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return n

    def start(self) -> None:
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.count())

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak

    def close(self) -> None:
        self.conn.close()


def child_argv(args: argparse.Namespace, key: str, scenario: str, db: dict[str, str]) -> list[str]:
    return [
        args.python,
        str(Path(__file__).resolve()),
        "--child",
        key,
        scenario,
        "--db",
        json.dumps(db),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--size",
        str(args.size),
        *vendor_argv(args),
    ]


def vendor_argv(args: argparse.Namespace) -> list[str]:
    return ["--vendor", args.vendor, "--driver", args.driver]


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float:
    """CPU-seconds spent not idle since boot, over all CPUs (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / CLK_TCK


def tree_seconds(pid: int) -> float:
    """CPU-seconds of a process (all its threads: mariadbd's connections), its reaped children
    and its live direct children (a postmaster: its backends)."""

    def stat(path: str) -> list[str] | None:
        try:
            with open(path, encoding="ascii") as f:
                return f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None

    total = 0
    mine = stat(f"/proc/{pid}/stat")
    if mine is None:
        return float("nan")
    total += sum(int(x) for x in mine[11:15])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat(f"/proc/{entry}/stat")
            if fields is not None and fields[1] == str(pid):
                total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


class CpuLedger:
    """What else ran on the machine during a run: all the CPU time the machine spent, less
    this process's (monitor thread), the child's (reaped children) and the benchmark
    server's. Reported as a fraction of the machine (all CPUs) over the run's wall time."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.ncpu = _common.nproc()

    def snapshot(self) -> tuple[float, float, float, float]:
        t = os.times()
        server = tree_seconds(self.server_pid) if self.server_pid else 0.0
        try:
            busy = machine_busy_seconds()
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        return (
            time.monotonic(),
            busy,
            t.user + t.system + t.children_user + t.children_system,
            server,
        )

    def foreign(self, a: tuple[float, ...], b: tuple[float, ...]) -> float:
        wall = b[0] - a[0]
        ours = (b[2] - a[2]) + (b[3] - a[3])
        return max(0.0, (b[1] - a[1]) - ours) / max(1e-9, wall * self.ncpu)


def cpu_busy(interval: float = 0.25) -> float:
    """Fraction of all CPUs busy over `interval` (from /proc/stat). Taken between two runs,
    when this benchmark is idle, it is the load of whatever else runs on the machine."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError):
        return float("nan")
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(args: argparse.Namespace) -> float:
    """Samples the machine's load before a run; with --quiet-below, waits (up to
    --quiet-wait seconds) until it is under that. Returns the last sample."""
    busy = cpu_busy()
    if args.quiet_below is None:
        return busy
    deadline = time.monotonic() + args.quiet_wait
    while busy > args.quiet_below and time.monotonic() < deadline:
        busy = cpu_busy(0.5)
    return busy


def run_child(
    args: argparse.Namespace,
    key: str,
    scenario: str,
    db: dict[str, str],
    monitor: Monitor | None,
    ledger: CpuLedger | None = None,
) -> dict[str, Any]:
    argv = child_argv(args, key, scenario, db)
    busy_before = wait_quiet(args)
    before = ledger.snapshot() if ledger is not None else None
    if monitor is not None:
        monitor.start()
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=args.seconds * 10 + args.warmup + 120
        )
    except subprocess.TimeoutExpired as exc:
        return {"error": f"child timed out: {' '.join(argv)}\nstderr:\n{exc.stderr}"}
    finally:
        peak = monitor.stop() if monitor is not None else None
    foreign = ledger.foreign(before, ledger.snapshot()) if ledger and before else None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {
            "error": f"child exited {proc.returncode} without a result\nstdout:\n{proc.stdout}"
            f"\nstderr:\n{proc.stderr}"
        }
    result = json.loads(lines[-1])
    if proc.stderr.strip():
        result["stderr"] = proc.stderr.strip()
    if peak is not None:
        result["peak"] = peak
    result["busy_before"] = busy_before
    if foreign is not None:
        result["foreign"] = foreign
    return result


def prepare_database(conninfo: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(DBNAME)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DBNAME)))


@contextmanager
def database(conninfo: str | None) -> Iterator[tuple[str, str, int | None]]:
    """Yields (admin conninfo to the postgres database, description, postmaster pid if
    known)."""
    if conninfo:
        yield conninfo, "server given by --conninfo", None
        return
    from harness.servers import PostgresServer

    server = PostgresServer().start()
    try:
        try:
            pid: int | None = int((server.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        yield (
            server.conninfo(dbname="postgres", tcp=False),
            "PostgresServer from harness.servers, Unix socket, trust",
            pid,
        )
    finally:
        server.cleanup()


def db_params(conninfo: str) -> tuple[dict[str, str], str]:
    """(connection parameters for the children, server version)"""
    import psycopg

    with psycopg.connect(conninfo) as conn:
        info = conn.info
        params = {"host": info.host, "port": str(info.port), "user": info.user}
        if info.password:
            params["password"] = info.password
        v = info.server_version
    return params, f"{v // 10000}.{v % 10000}"


@contextmanager
def bench_server(args: argparse.Namespace) -> Iterator[BenchServer]:
    """The server for --vendor, with an empty bench database."""
    if args.vendor == "mysql":
        with mariadb(args.mysql_url, args.driver) as server:
            yield server
        return
    import psycopg

    with database(args.conninfo) as (conninfo, desc, pid):
        prepare_database(conninfo)
        params, version = db_params(conninfo)
        yield BenchServer(
            name="PostgreSQL",
            version=version,
            desc=desc,
            params=params,
            pid=pid,
            admin=lambda: psycopg.connect(conninfo, autocommit=True),
            count_sql=POSTGRESQL_COUNT_SQL,
        )


@contextmanager
def mariadb(url: str | None, driver: str) -> Iterator[BenchServer]:
    """A throwaway MariaDB (or the server at `url`) with the bench database recreated."""
    from harness.mariadb import ExistingMariaDB, MariaDBServer

    server = ExistingMariaDB(url) if url else MariaDBServer()
    with server:  # starts and then removes a throwaway server; nothing for an existing one
        server.execute(f"DROP DATABASE IF EXISTS `{DBNAME}`")
        server.create_database(DBNAME)
        conn = server.conn_params(DBNAME)  # the Unix socket when the server has one
        params = {"host": conn["HOST"], "port": conn["PORT"], "user": conn["USER"]}
        if conn["PASSWORD"]:
            params["password"] = conn["PASSWORD"]
        version = server.execute("SELECT VERSION()")[0][0]
        pid: int | None = None
        if isinstance(server, MariaDBServer):
            desc = "MariaDBServer from harness.mariadb, Unix socket, root"
            # mariadbd's own pid, not that of the runuser/prlimit wrapper it may run under
            with suppress(OSError, ValueError, IndexError):
                pid = int((server.tmpdir / "mariadbd.pid").read_text().split()[0])
        else:
            desc = "server given by --mysql-url"
        yield BenchServer(
            name="MariaDB" if "mariadb" in version.lower() else "MySQL",
            version=version,
            desc=desc,
            params=params,
            pid=pid,
            admin=lambda: server.connect(autocommit=True, driver=MYSQL_DRIVERS[driver]),
            count_sql=MYSQL_COUNT_SQL,
        )


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(values: list[float], digits: int = 0, comma: bool = True) -> str:
    if not values:
        return "n/a"
    spec = f",.{digits}f" if comma else f".{digits}f"
    m = statistics.median(values)
    if len(values) == 1:
        return format(m, spec)
    return f"{format(m, spec)} ({format(min(values), spec)}..{format(max(values), spec)})"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def results_tables(
    results: dict[str, dict[str, Runs]], args: argparse.Namespace
) -> tuple[str, list[list[str]]]:
    """The per-scenario tables, and the rows of the targets table."""
    out: list[str] = []
    targets: list[list[str]] = []
    t, n = args.threads, args.size
    native = args.vendor == "postgresql"  # the native pool: a reference column and targets

    def if_native(*cells: str) -> list[str]:
        return list(cells) if native else []

    def rate(scn: str, key: str) -> float | None:
        runs = results.get(scn, {}).get(key)
        return med(runs.rate) if runs else None

    def note(runs: Runs) -> str:
        notes = [f"errors in {len(runs.errors)} run(s)"] if runs.errors else []
        starved = [
            sum(1 for c in e["per_thread"] if c == 0) for e in runs.extra if "per_thread" in e
        ]
        if any(starved):
            notes.append(f"threads with no cycle: {', '.join(map(str, starved))} (per run)")
        pool = [e["pool"] for e in runs.extra if e.get("pool")]
        if pool and "usage_p50_ms" in pool[0]:
            hold = statistics.median(p.get("usage_p50_ms", 0) for p in pool)
            wait = statistics.median(p.get("acquire_wait_p50_ms", 0) for p in pool)
            notes.append(f"pool stats p50: held {hold:.2g} ms, waited {wait:.2g} ms")
        return "; ".join(notes)

    def switches(runs: Runs) -> str:
        vals = [e["vcsw"] + e["ivcsw"] for e in runs.extra if "vcsw" in e]
        return fmt(vals, 0, comma=False) if vals else "n/a"

    def cpu(runs: Runs) -> str:
        vals = [e["cpu_us"] for e in runs.extra if "cpu_us" in e]
        return f"{statistics.median(vals):,.0f}" if vals else "n/a"

    def target(what: str, value: float | None, goal: float, fmt_: str = "{:.2f}x") -> None:
        if value is None:
            targets.append([what, f">= {goal:g}", "n/a", "n/a"])
            return
        targets.append([what, f">= {goal:g}", fmt_.format(value), "yes" if value >= goal else "no"])

    def info(what: str, value: float | None) -> None:
        """A ratio shown beside the targets, with no goal of its own."""
        targets.append([what, "-", "n/a" if value is None else f"{value:.2f}x", "-"])

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    if "a" in results:
        ref_p, ref_n = rate("a", "persistent"), rate("a", f"native-{n}")
        rows = []
        for key, runs in results["a"].items():
            r = med(runs.rate)
            rows.append(
                [
                    label(key, t),
                    fmt(runs.rate),
                    ratio(r, ref_p),
                    *if_native(ratio(r, ref_n)),
                    cpu(runs),
                    note(runs),
                ]
            )
        out.append(
            "### (a) one thread: `connection.cursor().execute('select 1'); connection.close()`\n\n"
            + _common.md_table(
                [
                    "variant",
                    "iter/s",
                    "/ persistent",
                    *if_native(f"/ native max {n}"),
                    "CPU µs/iter",
                    "notes",
                ],
                rows,
            )
        )
        lido = rate("a", f"lido-{n}")
        target("(a) lido / persistent", div(lido, ref_p), 0.97)
        for kind in ("noop", "lido_noop"):
            info(f"(a) {KINDS[kind]} / persistent", div(rate("a", kind), ref_p))
        if native:
            target(f"(a) lido / native pool max {n}", div(lido, ref_n), 1.1)

    if "b" in results:
        ref_p, ref_n = rate("b", f"persistent-{t}"), rate("b", f"native-{n}")
        rows = []
        for key, runs in results["b"].items():
            r = med(runs.rate)
            peak = f"{max(runs.peak)}" if runs.peak else "n/a"
            rows.append(
                [
                    label(key, t),
                    fmt(runs.rate),
                    fmt(runs.fairness, 2, comma=False),
                    peak,
                    ratio(r, ref_p),
                    *if_native(ratio(r, ref_n)),
                    cpu(runs),
                    switches(runs),
                    note(runs),
                ]
            )
        out.append(
            f"### (b) {t} threads: `close_old_connections()`, `select 1`, primary-key lookup, "
            "`close_old_connections()`\n\n"
            + _common.md_table(
                [
                    "variant",
                    "cycles/s",
                    "fairness",
                    "peak server conns",
                    f"/ persistent {t}",
                    *if_native(f"/ native max {n}"),
                    "CPU µs/cycle",
                    "ctx switches/cycle",
                    "notes",
                ],
                rows,
            )
        )
        lido = rate("b", f"lido-{n}")
        target(f"(b) lido max {n} / persistent, {t} threads", div(lido, ref_p), 0.9)
        info(
            f"(b) persistent, {n} threads (info) / persistent, {t} threads",
            div(rate("b", f"persistent-{n}"), ref_p),
        )
        if native:
            target(f"(b) lido max {n} / native pool max {n}", div(lido, ref_n), 1.8)
        runs = results["b"].get(f"lido-{n}")
        target(
            f"(b) lido max {n} fairness",
            med(runs.fairness) if runs else None,
            0.9,
            "{:.2f}",
        )

    if "c" in results:
        ref_n = rate("c", f"native-{n}")
        rows = []
        for key, runs in results["c"].items():
            r = med(runs.rate)
            prepared = sorted({e.get("prepared") for e in runs.extra if "prepared" in e})
            cursor = sorted({e.get("cursor_class") for e in runs.extra if "cursor_class" in e})
            rows.append(
                [
                    label(key, t),
                    fmt(runs.rate),
                    ratio(r, ref_n),
                    cpu(runs),
                    ", ".join(map(str, prepared)) or "n/a",
                    ", ".join(cursor) or "n/a",
                    note(runs),
                ]
            )
        out.append(
            "### (c) one thread: 4-table ORM query (`select_related`, filter, order, first 10), "
            "one checkout per query\n\n"
            + _common.md_table(
                [
                    "variant",
                    "queries/s",
                    f"/ native max {n} defaults",
                    "CPU µs/query",
                    "statements prepared on server",
                    "cursor class",
                    "notes",
                ],
                rows,
            )
        )
        lido = rate("c", f"lido-{n}")
        target("(c) lido (defaults) / native pool defaults", div(lido, ref_n), 1.3)
        target(
            "(c) lido + server_side_binding / native pool defaults",
            div(rate("c", f"lido_ssb-{n}"), ref_n),
            1.3,
        )
    return "\n\n".join(out), targets


def busy_line(raw: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Other work on the machine during the runs (this benchmark shares it)."""
    during = [r["foreign"] for r in raw if isinstance(r.get("foreign"), float)]
    before = [r["busy_before"] for r in raw if r.get("busy_before") == r.get("busy_before")]
    parts = []
    if during:
        parts.append(
            f"other processes took {statistics.median(during):.0%} of the machine during the "
            f"runs kept (median; max {max(during):.0%})"
        )
    if before:
        parts.append(f"CPUs {statistics.median(before):.0%} busy just before a run (median)")
    redone = sum(r.get("tries", 1) - 1 for r in raw)
    if args.max_foreign is not None:
        parts.append(
            f"a run was redone (up to {args.retries} times) when others took more than "
            f"{args.max_foreign:.0%}: {redone} redo(s)"
        )
    return "; ".join(parts) or "not measured"


def doc_section(
    body: str,
    args: argparse.Namespace,
    info: dict[str, str],
    server: BenchServer,
    setup: dict[str, Any],
    raw: list[dict[str, Any]],
) -> str:
    mode = " (`--quick`: smoke figures, not for comparison)" if args.quick else ""
    git = f" (git {info['git']})" if info.get("git") else ""
    poll_ms = f"{args.poll * 1000:g}"
    section = SECTIONS[args.vendor]
    if args.vendor == "postgresql":
        title = "Django: no pool, persistent, native pool, django-db-connection-pool, lido"
        driver = f"psycopg {info['psycopg']}, psycopg-pool {info['psycopg-pool']}"
        timezone, variants, tail = "TimeZone", POSTGRESQL_NOTES, POSTGRESQL_TAIL
    else:
        title = f"Django on {server.name}: no pool, persistent, django-db-connection-pool, lido"
        driver = info["driver"]
        timezone, variants, tail = "time_zone", MYSQL_NOTES, ""
    packages = (
        f"- Packages: Django {info['django']}, {driver}, "
        f"django-db-connection-pool {info['django-db-connection-pool']} "
        f"(SQLAlchemy {info['SQLAlchemy']}), django-lido {info['django-lido']}{git}"
    )
    server_line = (
        f"- {server.name}: {server.version} ({server.desc}); server {timezone} "
        f"{setup.get('server_timezone')}, "
        'Django `TIME_ZONE="UTC"`, `USE_TZ=True`'
    )
    settings = (
        f"- Settings: each (variant, scenario) in its own process, {args.warmup:g} s warm-up "
        f"then {args.seconds:g} s measured; {args.repeat} repetition(s), variants in rotating "
        f"order; pool size {args.size} where not stated; {args.threads} threads in (b)"
    )
    return f"""## {title}{mode}

Generated by `bench/django_cycle.py`; everything between the `{section}` markers is rewritten
on each run.

- Date: {_common.utc_now()}
- Machine: {_common.machine_line()}
- Python: {info["python"]}
{packages}
{server_line}
{settings}
- Other load on the machine: {busy_line(raw, args)}
- Reproduce (from the repo root): `{_common.repro_command("bench/django_cycle.py")}`

{body}

Figures are medians over repetitions, with the range in parentheses; ratios are of medians.
{variants.replace("{poll_ms}", poll_ms)}
"ctx switches/cycle" counts the process's voluntary and involuntary context switches per
cycle: with 16 threads on this 2-CPU machine, runs fall into a good mode or a mode where the
GIL is handed round in slivers (about 30 switches and 2-3 times the CPU per cycle), which
shows there and in the range of cycles/s.
"pool stats" are django-lido's own `usage` (held) and `acquire_wait` histograms, warm-up
included.{tail}
{NOOP_NOTE}
"""


# The vendor-specific parts of the notes under the tables ({poll_ms}: the poll interval;
# POSTGRESQL_TAIL goes on after "included.").
POSTGRESQL_NOTES = """\
Variants: no pool = stock `django.db.backends.postgresql`, `CONN_MAX_AGE=0`; persistent =
stock, `CONN_MAX_AGE=600` (in (a) the connection is never closed: the limit; in (b) the
"persistent, 4 threads (info)" row runs only as many threads as the pools have connections,
each with its own: the most a pool of 4 can give threads that do nothing but database
work); native pool =
stock with `OPTIONS={"pool": {"min_size": N, "max_size": N}}`; django-db-connection-pool =
`dj_db_conn_pool.backends.postgresql` with `POOL_OPTIONS={"POOL_SIZE": N, "MAX_OVERFLOW": 0}`
(its other defaults, among them `pre_ping=True`: one `SELECT 1` round trip per checkout);
lido = `django_lido.backends.postgresql` with `OPTIONS={"pool": {"min_size": N, "max_size": N}}`
(sized like the native pool; lido's own default min_size is 0). Fairness
is min / max cycles per thread over the measured window (1.0 = even); peak server
connections is the most client backends on the bench database seen by polling
`pg_stat_activity` every {poll_ms} ms from the parent process over the child's whole
life. CPU µs is the benchmark process's CPU time (all threads, user + system) over the
measured window per iteration, cycle or query (median over runs); the server's is not in it."""
POSTGRESQL_TAIL = """\
 In (c), "statements prepared on server" is `pg_prepared_statements` on the connection
after the run (psycopg's `ClientCursor`, Django's default, never prepares; the info row is the
native pool configured like lido + server_side_binding)."""
# Both vendors: after the notes.
NOOP_NOTE = """\
In (a), two info rows bound what a pool can do behind Django's own `connect()` and `close()`,
which run at every checkout: "stock backend + a no-op pool" hands back one physical
connection, opened once, and its close keeps it (no pool code, no check, no reset, but the
stock backend's per-connect steps, round trips included where it has them); "lido backend +
a no-op engine" is django-lido's backend whose pool checkout and return do nothing, so the
gap between it and lido is the engine's whole cost (checkout, probe, rollback check, reset
policy, return)."""
MYSQL_NOTES = """\
Variants: no pool = stock `django.db.backends.mysql`, `CONN_MAX_AGE=0`; persistent = stock,
`CONN_MAX_AGE=600` (in (a) the connection is never closed: the limit; in (b) the "persistent,
4 threads (info)" row runs only as many threads as the pools have connections, each with its
own: the most a pool of 4 can give threads that do nothing but database work); Django's MySQL
backend has no native pool; django-db-connection-pool = `dj_db_conn_pool.backends.mysql` with
`POOL_OPTIONS={"POOL_SIZE": N, "MAX_OVERFLOW": 0}` (its other defaults, among them
`pre_ping=True`: one `COM_PING` round trip per checkout); lido = `django_lido.backends.mysql`
with `OPTIONS={"pool": {"min_size": N, "max_size": N}}`. Fairness is min / max cycles per
thread over the measured window (1.0 = even); peak server connections is the most
connections on the bench database seen by polling `information_schema.PROCESSLIST` every
{poll_ms} ms from the parent process over the child's whole life. CPU µs is the benchmark
process's CPU time (all threads, user + system) over the measured window per iteration or
cycle (median over runs); the server's is not in it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--python", default=sys.executable, help="interpreter for the children "
                   "(default: this one)")  # fmt: skip
    p.add_argument("--vendor", choices=VENDORS, default="postgresql",
                   help="database server (%(default)s); mysql: MariaDB")  # fmt: skip
    p.add_argument("--conninfo", help="libpq conninfo of an existing server's postgres "
                   "database (default: start a throwaway one); the database "
                   f"{DBNAME!r} is dropped and recreated")  # fmt: skip
    p.add_argument("--mysql-url", help="with --vendor mysql: mysql://user:password@host:port/"
                   "?unix_socket=PATH of an existing server (default: start a throwaway "
                   f"MariaDB); the database {DBNAME!r} is dropped and recreated")  # fmt: skip
    p.add_argument("--driver", choices=tuple(MYSQL_DRIVERS), default="mysqlclient",
                   help="with --vendor mysql: the driver Django uses (%(default)s; pymysql "
                   "through pymysql.install_as_MySQLdb())")  # fmt: skip
    p.add_argument("--scenarios", help="comma-separated subset of a,b,c (default: all; "
                   "c is PostgreSQL-only)")  # fmt: skip
    p.add_argument("--only", help="comma-separated variant keys to run (e.g. lido-4,persistent-16)")
    p.add_argument("--quick", action="store_true", help="2 repetitions of 0.6 s: smoke figures")
    p.add_argument("--repeat", type=int, help="repetitions (default 5, quick 2)")
    p.add_argument("--seconds", type=float, help="measured seconds per run (2, quick 0.6)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per run (0.5, quick 0.2)")
    p.add_argument("--threads", type=int, default=16, help="threads in (b) (%(default)s)")
    p.add_argument("--size", type=int, default=4, help="pool size where not stated (%(default)s)")
    p.add_argument("--poll", type=float, default=0.02,
                   help="server connections poll interval, seconds (%(default)s)")  # fmt: skip
    p.add_argument("--quiet-below", type=float, metavar="FRACTION",
                   help="before each run, wait until the machine's CPUs are less busy than "
                   "this (0-1; other work on the machine skews every figure)")  # fmt: skip
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="longest wait for --quiet-below, seconds (%(default)s)")  # fmt: skip
    p.add_argument("--max-foreign", type=float, metavar="FRACTION",
                   help="redo a run if other work took more than this fraction of the "
                   "machine during it (tells the server's CPU apart only for the throwaway "
                   "server)")  # fmt: skip
    p.add_argument("--retries", type=int, default=3, help="most redos per run (%(default)s)")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--json", help="also write every run's raw result to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="print each child's result")
    # child mode
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "SCENARIO"), help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--info", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile", help="(child mode) cProfile the measured window to this file")
    args = p.parse_args(argv)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.seconds = args.seconds or (0.6 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 0.5)
    available = ("a", "b", "c") if args.vendor == "postgresql" else ("a", "b")
    scenarios = args.scenarios or ",".join(available)
    args.scenario_list = [s.strip() for s in scenarios.split(",") if s.strip()]
    if not set(args.scenario_list) <= set(available):
        p.error(f"--scenarios: choose from {','.join(available)} with --vendor {args.vendor}")
    if args.conninfo and args.vendor != "postgresql":
        p.error("--conninfo needs --vendor postgresql")
    if args.mysql_url and args.vendor != "mysql":
        p.error("--mysql-url needs --vendor mysql")
    return args


def run_measured(
    args: argparse.Namespace,
    key: str,
    scn: str,
    params: dict[str, str],
    monitor: Monitor,
    ledger: CpuLedger,
) -> dict[str, Any]:
    """One run; with --max-foreign, run again (up to --retries times) while other work on
    the machine took more than that fraction of it."""
    tries = 0
    while True:
        left = monitor.wait_idle()
        if left:
            print(f"  note: {left} backend(s) left before {key}", file=sys.stderr)
        res = run_child(args, key, scn, params, monitor if scn == "b" else None, ledger)
        res["tries"] = tries + 1
        foreign = res.get("foreign")
        if (
            args.max_foreign is None
            or foreign is None
            or foreign <= args.max_foreign
            or tries >= args.retries
            or "error" in res
        ):
            return res
        tries += 1
        print(
            f"  ({scn}) {key}: other work took {foreign:.0%} of the machine; again",
            file=sys.stderr,
        )


def record(runs: Runs, res: dict[str, Any]) -> None:
    if "error" in res:
        runs.errors.append(res["error"])
        if "rate" not in res:
            return
    runs.rate.append(res["rate"])
    if "fairness" in res:
        runs.fairness.append(res["fairness"])
    if "peak" in res:
        runs.peak.append(res["peak"])
    runs.extra.append(res)


def progress_line(res: dict[str, Any], args: argparse.Namespace) -> str:
    head = f"rep {res['rep'] + 1}/{args.repeat} ({res['scenario']}) "
    head += label(res["variant"], args.threads)
    line = head + (f": {res['rate']:,.0f}/s" if "rate" in res else ": no result")
    if "fairness" in res:
        line += f", fairness {res['fairness']:.2f}, peak {res.get('peak')}"
    if "prepared" in res:
        line += f", prepared {res['prepared']} ({res['cursor_class']})"
    line += f" [other load: {res.get('busy_before', float('nan')):.0%} before"
    if "foreign" in res:
        line += f", {res['foreign']:.0%} during"
    line += f", try {res['tries']}]" if res.get("tries", 1) > 1 else "]"
    if "error" in res:
        line += "\n    ERROR: " + res["error"].replace("\n", "\n    ")
    if args.verbose:
        shown = {k: v for k, v in res.items() if k not in ("stderr", "error")}
        line += f"\n    {json.dumps(shown)}"
    if res.get("stderr"):
        line += "\n    stderr: " + res["stderr"].replace("\n", "\n    ")
    return line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.info:
        return child_info(args)
    if args.child:
        return child_main(args)

    log = sys.stderr
    info = json.loads(
        subprocess.run(
            [args.python, str(Path(__file__).resolve()), "--info", *vendor_argv(args)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    print(f"children: {args.python}: {info}", file=log)
    only = set(args.only.split(",")) if args.only else None
    plan = {
        s: [k for k in scenario_variants(s, args) if only is None or k in only]
        for s in args.scenario_list
    }
    results: dict[str, dict[str, Runs]] = {s: {k: Runs() for k in ks} for s, ks in plan.items()}
    raw: list[dict[str, Any]] = []
    t_start = time.monotonic()

    with bench_server(args) as server:
        params = server.params
        setup = run_child(args, "nopool", "setup", params, None)
        if "error" in setup:
            print(f"set-up failed:\n{setup['error']}", file=log)
            return 1
        print(f"{server.name} {server.version} ({server.desc}); set-up {setup}", file=log)
        monitor = Monitor(server, args.poll)
        ledger = CpuLedger(server.pid)
        try:
            for rep in range(args.repeat):
                for scn, keys in plan.items():
                    shift = rep % max(1, len(keys))
                    for key in keys[shift:] + keys[:shift]:
                        res = run_measured(args, key, scn, params, monitor, ledger)
                        res.update(rep=rep, scenario=scn, variant=key)
                        raw.append(res)
                        record(results[scn][key], res)
                        print(progress_line(res, args), file=log, flush=True)
        finally:
            monitor.close()

    body, targets = results_tables(results, args)
    if targets:
        body += "\n\n### Targets\n\n" + _common.md_table(
            ["target", "goal", "measured", "met"], targets
        )
    print(body)
    print(f"total {time.monotonic() - t_start:.0f} s", file=log)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    if not args.no_write:
        _common.replace_section(
            _common.BENCHMARKS_MD,
            SECTIONS[args.vendor],
            doc_section(body, args, info, server, setup, raw),
        )
        print(f"wrote {_common.BENCHMARKS_MD.relative_to(_common.REPO_ROOT)}", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
