"""What the statement hook costs (issue 15, point 5): a Django request cycle on the pooled
PostgreSQL backend with the hook on (the default: each statement shown to the classifier)
and off (Django's own cursor wrappers), interleaved in one run against one throwaway
PostgreSQL. Run from the repo root after ./scripts/setup.sh:

    .venv/bin/python bench/statement_hook.py

A request: connect (a checkout), four ORM statements (a get by primary key, a filtered
slice, an update, a count), close (a return). Single thread, one pooled connection.
Also prints the classifier's cost per statement through Python, on the request's SQL.
"""

from __future__ import annotations

import statistics
import time
import timeit
from typing import Any

import _common  # noqa: F401  (puts the repository root, with harness/, on sys.path)

from harness.servers import PostgresServer

REQUESTS = 1_000
REPS = 15


def configure(server: PostgresServer) -> None:
    import django
    from django.conf import settings

    params = server._conn_params(dbname=None, tcp=False)
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=[],
        DATABASES={
            "default": {
                "ENGINE": "django_lido.backends.postgresql",
                "NAME": params["dbname"],
                "USER": params["user"],
                "HOST": params["host"],
                "PORT": params["port"],
                "OPTIONS": {"pool": {"max_size": 1}},
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()


def define_model() -> Any:
    from django.db import models

    meta = type("Meta", (), {"app_label": "hook_bench", "db_table": "hook_bench_item"})
    return type(
        "Item",
        (models.Model,),
        {"__module__": __name__, "Meta": meta, "name": models.CharField(max_length=40)},
    )


def run(item: Any, requests: int) -> tuple[float, float]:
    """µs per request: wall time, and this process's CPU time (the server's excluded)."""
    from django.db import connection

    objects = item.objects
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(requests):
        pk = i % 100 + 1
        obj = objects.get(pk=pk)
        list(objects.filter(name__startswith="item").order_by("id")[:10])
        objects.filter(pk=obj.pk).update(name=obj.name)
        objects.count()
        connection.close()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return wall / requests * 1e6, cpu / requests * 1e6


def hook_off() -> tuple[Any, Any]:
    """Django's own cursor wrappers on the pooled backend; returns the hooked methods."""
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django_lido.backends.pooled import PooledDatabaseMixin as Mixin

    shipped = (Mixin.__dict__["make_cursor"], Mixin.__dict__["make_debug_cursor"])
    Mixin.make_cursor = BaseDatabaseWrapper.make_cursor  # type: ignore[method-assign]
    Mixin.make_debug_cursor = BaseDatabaseWrapper.make_debug_cursor  # type: ignore[method-assign]
    return shipped


def hook_on(shipped: tuple[Any, Any]) -> None:
    from django_lido.backends.pooled import PooledDatabaseMixin as Mixin

    Mixin.make_cursor, Mixin.make_debug_cursor = shipped  # type: ignore[method-assign]


def classifier_ns(sql: str) -> float:
    from django_lido._lido import changes_session

    n = 200_000
    best = min(timeit.repeat(lambda: changes_session(sql, "postgresql"), number=n, repeat=5))
    empty = min(timeit.repeat(lambda: None, number=n, repeat=5))
    return (best - empty) / n * 1e9


def execute_ns(sql: str) -> tuple[float, float]:
    """ns per ``cursor.execute()`` on a driver cursor that does nothing, through Django's
    ``CursorWrapper`` and through ``HookedCursorWrapper``: the hook alone, medians of
    interleaved repetitions."""
    from django.db import connections
    from django.db.backends.utils import CursorWrapper
    from django_lido.backends.statements import HookedCursorWrapper

    connection = connections["default"]  # the wrapper itself, as cursors have it

    class NullCursor:
        def execute(self, sql: str, params: Any = None) -> None:
            pass

    connection.ensure_connection()
    n = 100_000
    times: dict[type, list[float]] = {CursorWrapper: [], HookedCursorWrapper: []}
    for rep in range(9):
        for cls in (CursorWrapper, HookedCursorWrapper)[:: 1 if rep % 2 else -1]:
            cursor = cls(NullCursor(), connection)
            t = timeit.timeit(lambda c=cursor: c.execute(sql, (1,)), number=n)
            times[cls].append(t / n * 1e9)
    connection.close()
    return statistics.median(times[CursorWrapper]), statistics.median(times[HookedCursorWrapper])


def main() -> None:
    with PostgresServer() as server:
        configure(server)
        from django.db import connection

        item = define_model()
        with connection.schema_editor() as editor:
            editor.create_model(item)
        item.objects.bulk_create(item(name=f"item {i}") for i in range(1, 101))
        captured: list[str] = []
        with connection.execute_wrapper(lambda ex, sql, *a: captured.append(sql) or ex(sql, *a)):
            run(item, 1)
        connection.close()
        run(item, 500)  # warm-up

        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        shipped = hook_off()
        hook_on(shipped)
        for rep in range(REPS):
            for on in (True, False) if rep % 2 == 0 else (False, True):
                if on:
                    hook_on(shipped)
                else:
                    hook_off()
                results[on].append(run(item, REQUESTS))
        hook_on(shipped)
        for i, what in enumerate(("wall", "client CPU")):
            on, off = (statistics.median(r[i] for r in results[h]) for h in (True, False))
            for name, h, median in (("on ", True, on), ("off", False, off)):
                runs = sorted(round(r[i], 1) for r in results[h])
                print(f"{what:>10} hook {name} {median:8.1f} µs/request  {runs}")
            print(f"{what:>10} on/off {on / off:.4f} ({on - off:+.1f} µs per request)")
        print(f"{len(captured)} statements per request, {REPS} interleaved repetitions each")
        print(f"pool: {connection.pool.stats()['connections_num']} connection(s) opened")
        stock, hooked = execute_ns(captured[0])
        print(
            f"cursor.execute() on a null driver cursor: Django's {stock:.0f} ns, hooked"
            f" {hooked:.0f} ns ({hooked - stock:+.0f} ns per statement)"
        )
        from django_lido._lido import changes_session

        for sql in captured:
            marks = changes_session(sql, "postgresql")
            print(f"classifier {classifier_ns(sql):6.0f} ns  marks={marks}  {sql[:60]}")


if __name__ == "__main__":
    main()
