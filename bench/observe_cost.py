"""What the observability of issue 13 costs, in one run against one throwaway PostgreSQL,
each part on vs off in interleaved rounds (medians, and the range over rounds):

1. checkout + return (``getconn``/``putconn`` of a plain ``Pool``) called 40 frames deep,
   with stacks (``stack_depth=16``) vs without (``stack_depth=0``); and again below 30
   frames of a skipped package (as Django's frames are, between a view and its checkout);
2. the statement hook per statement (``cursor.execute()`` through Django's cursor wrapper
   on a driver cursor that does nothing, so only the Python side is timed): Django's own
   wrapper, the hook with ``query_stats=False`` and with ``query_stats=True``;
3. the Django request cycle through Django's WSGI handler (``request_started``: the holder
   label and ``close_old_connections``; a view with four ORM statements, one of them in an
   ``atomic()`` block; ``request_finished``: the connection goes back), everything on (the
   defaults: stacks, query stats, idle-transaction review, long-hold review, labels) vs
   everything off (``stack_depth=0``, ``query_stats=False``, no thresholds, no labels);
4. bench/django_cycle's scenarios (b) (16 threads on a pool of 4: close_old_connections,
   two statements, close_old_connections) and (c) (an ORM query with three joins, one
   checkout per query) for its "lido-4" variant, with the pool's observability on (the
   defaults) vs off, alternating whole django_cycle runs (one repetition each, in child
   processes, against this run's server).

Run from the repo root after ./scripts/setup.sh (about three minutes):

    .venv313/bin/python bench/observe_cost.py            # or .venv/bin/python
    .venv313/bin/python bench/observe_cost.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import _common

from harness.servers import PostgresServer

OFF = {
    "stack_depth": 0,
    "query_stats": False,
    "idle_in_transaction_threshold": None,
    "leak_threshold": None,
}


def summary(name: str, per_round: list[float], unit: str) -> str:
    lo, hi = min(per_round), max(per_round)
    return f"{name:<34} {statistics.median(per_round):9.1f} {unit}  (range {lo:.1f}-{hi:.1f})"


def interleaved(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each case once per round, the order rotated every round."""
    results: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            results[name].append(cases[name]())
    return results


# --- 1. checkout + return -------------------------------------------------------------------


def deep(n: int, fn: Callable[[], float]) -> float:
    return deep(n - 1, fn) if n else fn()


def _library_deep() -> Callable[[int, Callable[[], float]], float]:
    """``deep`` compiled as if it were a file of django_lido's: frames the stack walk goes
    past (as it goes past Django's between a view and the checkout), keeping none."""
    import django_lido

    src = "def library_deep(n, fn):\n    return library_deep(n - 1, fn) if n else fn()\n"
    space: dict[str, Any] = {}
    exec(compile(src, django_lido.__file__.replace("__init__.py", "_bench.py"), "exec"), space)
    return space["library_deep"]  # type: ignore[no-any-return]


def checkout_cost(server: PostgresServer, n: int, rounds: int) -> dict[str, list[float]]:
    import psycopg
    from django_lido import Pool

    conninfo = server.conninfo()
    pools = {
        depth: Pool(lambda: psycopg.connect(conninfo), max_size=1, stack_depth=depth)
        for depth in (16, 0)
    }

    def cycles(pool: Pool) -> float:
        get, put = pool.getconn, pool.putconn
        t = time.perf_counter()
        for _ in range(n):
            put(get())
        return (time.perf_counter() - t) / n * 1e9

    for pool in pools.values():
        pool.putconn(pool.getconn())
    library_deep = _library_deep()
    cases: dict[str, Callable[[], float]] = {}
    for d, p in pools.items():
        cases[f"stack_depth={d}"] = lambda p=p: deep(40, lambda: cycles(p))
        # 20 frames of the caller's, then 30 to walk past, then the checkout.
        cases[f"stack_depth={d}, 30 library frames"] = lambda p=p: deep(
            20, lambda: library_deep(30, lambda: cycles(p))
        )
    try:
        return interleaved(cases, rounds)
    finally:
        for pool in pools.values():
            pool.close()


# --- Django, for 2 and 3 ----------------------------------------------------------------------


def configure(server: PostgresServer) -> None:
    import django
    from django.conf import settings

    params = server._conn_params(dbname=None, tcp=False)

    def entry(pool: dict[str, Any]) -> dict[str, Any]:
        return {
            "ENGINE": "django_lido.backends.postgresql",
            "NAME": params["dbname"],
            "USER": params["user"],
            "HOST": params["host"],
            "PORT": params["port"],
            "OPTIONS": {"pool": {"max_size": 1, **pool}},
        }

    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        ROOT_URLCONF=__name__,
        DATABASES={"default": entry({}), "on": entry({}), "off": entry(OFF)},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()


def define_model() -> Any:
    from django.db import models

    meta = type("Meta", (), {"app_label": "observe_bench", "db_table": "observe_bench_item"})
    return type(
        "Item",
        (models.Model,),
        {"__module__": __name__, "Meta": meta, "name": models.CharField(max_length=40)},
    )


# --- 2. the statement hook ----------------------------------------------------------------------


def hook_cost(n: int, rounds: int) -> dict[str, list[float]]:
    from django.db import connections
    from django.db.backends.utils import CursorWrapper
    from django_lido.backends.statements import HookedCursorWrapper

    class NullCursor:
        rowcount = 1

        def execute(self, sql: str, params: Any = None) -> None:
            pass

    sql = 'SELECT "observe_bench_item"."id", "observe_bench_item"."name" FROM "observe_bench_item" WHERE "observe_bench_item"."id" = %s LIMIT 21'  # noqa: E501
    for alias in ("on", "off"):
        connections[alias].ensure_connection()

    def timed(cursor: Any) -> float:
        execute = cursor.execute
        t = time.perf_counter()
        for _ in range(n):
            execute(sql, (1,))
        return (time.perf_counter() - t) / n * 1e9

    cases = {
        "Django's CursorWrapper": lambda: timed(CursorWrapper(NullCursor(), connections["off"])),
        "hook, query_stats=False": lambda: timed(
            HookedCursorWrapper(NullCursor(), connections["off"])
        ),
        "hook, query_stats=True": lambda: timed(
            HookedCursorWrapper(NullCursor(), connections["on"])
        ),
    }
    try:
        return interleaved(cases, rounds)
    finally:
        for alias in ("on", "off"):
            connections[alias].close()


# --- 3. the request cycle -----------------------------------------------------------------------

ITEM: Any = None


def view(request: Any, alias: str) -> Any:
    from django.db import transaction
    from django.http import HttpResponse

    objects = ITEM.objects.using(alias)
    obj = objects.get(pk=7)
    names = [i.name for i in objects.filter(name__startswith="item").order_by("id")[:10]]
    with transaction.atomic(using=alias):
        objects.filter(pk=obj.pk).update(name=obj.name)
    return HttpResponse(f"{len(names)} {objects.count()}")


def _urls() -> list[Any]:
    from django.urls import path

    return [path("<str:alias>/", view)]


urlpatterns: list[Any] = []


def request_cost(requests: int, rounds: int) -> dict[str, list[float]]:
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.signals import request_finished, request_started
    from django_lido.backends import holders

    handler = WSGIHandler()
    status: list[str] = []

    def start_response(s: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    def environ(alias: str) -> dict[str, Any]:
        return {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": f"/{alias}/",
            "SERVER_NAME": "bench",
            "SERVER_PORT": "80",
            "wsgi.input": io.BytesIO(),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
        }

    def labels(on: bool) -> None:
        uid = "django_lido.labels"
        if on:
            request_started.connect(holders._request_started, dispatch_uid=uid)
            request_finished.connect(holders._ended, dispatch_uid=uid)
        else:
            request_started.disconnect(dispatch_uid=uid)
            request_finished.disconnect(dispatch_uid=uid)

    cpu: dict[str, list[float]] = {"on": [], "off": []}

    def cycle(alias: str) -> float:
        labels(alias == "on")
        env = environ(alias)
        t, c = time.perf_counter(), time.process_time()
        for _ in range(requests):
            env["wsgi.input"] = io.BytesIO()
            response = handler(env, start_response)
            response.close()  # request_finished
        took = (time.perf_counter() - t) / requests * 1e6
        cpu[alias].append((time.process_time() - c) / requests * 1e6)
        if status[-1] != "200 OK":
            raise RuntimeError(f"the view answered {status[-1]}")
        status.clear()
        return took

    for alias in ("on", "off"):
        cycle(alias)
    cpu["on"].clear()
    cpu["off"].clear()
    wall = interleaved({"everything on": lambda: cycle("on"),
                        "everything off": lambda: cycle("off")}, rounds)  # fmt: skip
    return {
        **{f"{k} (wall)": v for k, v in wall.items()},
        "everything on (client CPU)": cpu["on"],
        "everything off (client CPU)": cpu["off"],
    }


# --- 4. bench/django_cycle, lido-4 ---------------------------------------------------------------


def django_cycle_cost(server: PostgresServer, rounds: int, quick: bool) -> dict[str, list[float]]:
    """Rates of django_cycle's (b) and (c) for lido-4, on vs off, one whole run each."""
    import json
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    script = Path(__file__).resolve().parent / "django_cycle"
    conninfo = server.conninfo(dbname="postgres")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw.json"
        for r in range(rounds):
            for on in (True, False) if r % 2 == 0 else (False, True):
                env = dict(os.environ)
                if not on:
                    env["LIDO_BENCH_POOL_OPTIONS"] = json.dumps(OFF)
                argv = [
                    sys.executable,
                    str(script),
                    "--conninfo",
                    conninfo,
                    "--only",
                    "lido-4",
                    "--scenarios",
                    "b,c",
                    "--repeat",
                    "1",
                    "--no-write",
                    "--json",
                    str(out),
                ]
                if quick:
                    argv.append("--quick")
                subprocess.run(argv, env=env, check=True, capture_output=True, timeout=600)
                for res in json.loads(out.read_text()):
                    name = f"({res['scenario']}) {'on' if on else 'off'}"
                    results.setdefault(f"{name} rate", []).append(res["rate"])
                    results.setdefault(f"{name} client CPU", []).append(res["cpu_us"])
    return dict(sorted(results.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds: smoke figures")
    p.add_argument("--no-django-cycle", action="store_true", help="skip part 4")
    args = p.parse_args()
    rounds = 5 if args.quick else 15
    scale = 0.2 if args.quick else 1.0
    global ITEM
    with PostgresServer() as server:
        print(f"# {_common.machine_line()}; {_common.python_line()}")
        one = checkout_cost(server, int(20_000 * scale), rounds)
        for name, runs in one.items():
            print(summary(f"getconn+putconn, {name}", runs, "ns"))
        for where in ("", ", 30 library frames"):
            on, off = (statistics.median(one[f"stack_depth={d}{where}"]) for d in (16, 0))
            print(f"{'  stack capture per checkout' + where:<34} {on - off:+9.1f} ns")

        configure(server)
        from django.db import connections

        ITEM = define_model()
        with connections["default"].schema_editor() as editor:
            editor.create_model(ITEM)
        ITEM.objects.bulk_create(ITEM(name=f"item {i}") for i in range(1, 101))
        connections["default"].close()
        urlpatterns.extend(_urls())

        two = hook_cost(int(100_000 * scale), rounds)
        for name, runs in two.items():
            print(summary(f"execute(), {name}", runs, "ns"))
        stock, off_, on_ = (statistics.median(r) for r in two.values())
        print(f"{'  hook without query stats':<34} {off_ - stock:+9.1f} ns per statement")
        print(f"{'  query stats':<34} {on_ - off_:+9.1f} ns per statement")

        three = request_cost(int(400 * scale), rounds)
        for name, runs in three.items():
            print(summary(f"request, {name}", runs, "µs"))
        for what in ("wall", "client CPU"):
            on, off = (statistics.median(three[f"everything {h} ({what})"]) for h in ("on", "off"))
            print(f"{'  ' + what + ': on vs off':<34} {on / off - 1:+9.2%} "
                  f"({on - off:+.1f} µs per request)")  # fmt: skip
        pool = connections["on"].pool
        print(f"query stats kept: {len(pool.query_stats(top=100))} shapes; "
              f"reports: {len(pool.reports())}")  # fmt: skip
        for alias in ("default", "on", "off"):
            connections[alias].close()

        if not args.no_django_cycle:
            four = django_cycle_cost(server, 3 if args.quick else 5, args.quick)
            for name, runs in four.items():
                unit = "/s" if name.endswith("rate") else "µs per cycle"
                print(summary(f"django_cycle lido-4 {name}", runs, unit))
            for scn in ("b", "c"):
                for what in ("rate", "client CPU"):
                    on, off = (
                        statistics.median(four[f"({scn}) {h} {what}"]) for h in ("on", "off")
                    )
                    print(f"{'  (' + scn + ') ' + what + ' on vs off':<34} {on / off - 1:+9.2%}")


if __name__ == "__main__":
    main()
