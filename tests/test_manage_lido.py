"""``manage.py lido``: the demo site under gunicorn with two workers, both in one aggregated
``status`` (and host_snapshot()); a killed worker drops out. The other views over child
processes with pools."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django_helpers import database, unique
from django_lido.observe import host, host_snapshot
from observe_helpers import TAKER, PoolChild, wait_for

from harness import demo_site
from harness.servers import free_port

SITE_DIR = demo_site.SITE_DIR
SITE_DB = "lido_manage_site"


def _site_env(pg: Any, rundir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SITE_DIR), os.environ.get("PYTHONPATH", "")]),
        "DJANGO_SETTINGS_MODULE": "loadsite.settings",
        "LIDO_DEMO_DB_NAME": SITE_DB,
        "LIDO_DEMO_DB_HOST": "127.0.0.1",
        "LIDO_DEMO_DB_PORT": str(pg.port),
        "LIDO_DEMO_DB_USER": pg.user,
        "LIDO_DEMO_POOL_MAX_SIZE": "3",
        "LIDO_RUNTIME_DIR": str(rundir),
    }


def lido(env: dict[str, str], *args: str) -> str:
    """``manage.py lido ARGS`` (as ``python -m django``) in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-m", "django", "lido", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def site_db(pg: Any) -> str:
    demo_site.create_database(pg, SITE_DB)
    return SITE_DB


@contextlib.contextmanager
def gunicorn(
    env: dict[str, str], workers: int, worker_class: str = "sync"
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    pytest.importorskip("gunicorn")
    if worker_class == "gevent":
        pytest.importorskip("gevent")
    port = free_port()
    cmd = [
        sys.executable, "-m", "gunicorn", "--chdir", str(SITE_DIR),
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "-k", worker_class,
        "--timeout", "20", "--graceful-timeout", "5", "--log-level", "warning", "loadsite.wsgi",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _answers(port) or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield port, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(port: int) -> bool:
    try:
        _get(port, "/pool-stats")
    except OSError:
        return False
    return True


def _get(port: int, path: str) -> Any:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        resp = c.getresponse()
        body = resp.read()
        assert resp.status == 200, (path, resp.status, body[:500])
        return json.loads(body)
    finally:
        c.close()


def _load_until(port: int, done: Any, timeout: float = 30.0) -> None:
    """Four clients send /slow requests until ``done()`` (or ``timeout``): with sync workers
    busy on one request each, every worker gets some."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def client(i: int) -> None:
        n = 0
        while not stop.is_set() and n < 2000:
            try:
                _get(port, f"/slow/{1 + (i * 31 + n) % 100}")
            except BaseException as e:
                errors.append(e)
                return
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: done() or errors, timeout=timeout, step=0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not errors, errors[0]


@pytest.mark.parametrize("worker_class", ["sync", "gevent"])
def test_two_gunicorn_workers_in_one_status_and_a_killed_one_drops_out(
    pg: Any, site_db: str, tmp_path: Path, worker_class: str
) -> None:
    """Sync workers, and gevent workers (where the publisher is a real OS thread)."""
    rundir = tmp_path / "run"
    env = _site_env(pg, rundir)
    pool_name = f"default:{site_db}"
    with gunicorn(env, workers=2, worker_class=worker_class) as (port, master):

        def worker_pids() -> set[int]:
            return {
                r["pid"]
                for r in host.read_records(rundir)
                if any(p["name"] == pool_name for p in r["pools"])
            }

        _load_until(port, lambda: len(worker_pids()) >= 2)
        pids = worker_pids()
        assert len(pids) == 2 and master.pid not in pids

        status = json.loads(lido(env, "status", "--json"))
        assert {r["pid"] for r in status["processes"]} == pids
        for r in status["processes"]:
            assert "gunicorn" in r["title"]
            (p,) = r["pools"]
            assert p["alias"] == "default" and p["vendor"] == "postgresql"
            assert p["stats"]["requests_num"] > 0
        (total,) = status["pools"]
        assert total["name"] == pool_name and total["processes"] == 2
        assert total["max_size"] == 6
        assert total["requests"] == sum(
            r["pools"][0]["stats"]["requests_num"] for r in status["processes"]
        )

        text = lido(env, "status")
        lines = text.splitlines()
        assert lines[1].split()[:4] == ["PID", "PROCESS", "POOL", "DB"]
        rows = {line.split()[0]: line for line in lines[2:]}
        assert {str(pid) for pid in pids} | {"total"} == set(rows)
        assert "2 processes" in rows["total"] and pool_name in rows["total"]

        # (The test process's own pools, left by other tests, are in it too.)
        snap = host_snapshot(rundir)
        assert {r["pid"] for r in snap["processes"] if r["pid"] != os.getpid()} == pids
        (total,) = [t for t in snap["pools"] if t["name"] == pool_name]
        assert total["processes"] == 2

        # The statements of both workers, merged per shape; never a literal's value.
        queries = json.loads(lido(env, "queries", "--json", "--limit", "50"))
        by_shape = {q["shape"]: q for q in queries}
        (sleep,) = [q for shape, q in by_shape.items() if "pg_sleep" in shape]
        assert "0.005" not in sleep["shape"]
        per_process = [
            q["count"]
            for r in status["processes"]
            for q in r["pools"][0]["queries"]
            if q["shape"] == sleep["shape"]
        ]
        assert len(per_process) == 2 and sleep["count"] >= sum(per_process)
        assert sleep["processes"] == 2 and sleep["pool"] == pool_name
        assert all(str(pk) not in q["shape"] for q in queries for pk in (31, 62, 93))
        text = lido(env, "queries", "--order", "count", "--limit", "3")
        assert text.splitlines()[0].split()[:3] == ["POOL", "COUNT", "ERRORS"]
        assert len(text.splitlines()) == 4
        # Reset in every worker, by the other process's request.
        assert "reset" in lido(env, "queries", "--reset", "--pool", pool_name)
        wait_for(lambda: not json.loads(lido(env, "queries", "--json")), timeout=20, step=0.2)
        _drain_in_every_worker(pg, env, port, pids, pool_name)
        _resize_one_worker_then_all(env, pids, pool_name)

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in {r["pid"] for r in host_snapshot(rundir)["processes"]})
        status = json.loads(lido(env, "status", "--json"))
        assert victim not in {r["pid"] for r in status["processes"]}
        assert not (rundir / f"{victim}.json").exists()
        assert max(pids) in {r["pid"] for r in status["processes"]}, "the other one stays"


def _drain_in_every_worker(
    pg: Any, env: dict[str, str], port: int, pids: set[int], pool_name: str
) -> None:
    """``lido drain``: every worker closes its connections (idle now, the load being over)
    at its next tick; the next requests run on new server connections."""
    rundir = Path(env["LIDO_RUNTIME_DIR"])

    def backends() -> set[int]:
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = %s"
        return {int(r[0]) for r in pg.execute(sql, [SITE_DB])}

    def stats() -> dict[int, dict[str, Any]]:
        return {
            r["pid"]: p["stats"]
            for r in host.read_records(rundir)
            if r["pid"] in pids
            for p in r["pools"]
            if p["name"] == pool_name
        }

    old, before = backends(), stats()
    assert old and set(before) == pids
    assert "drain" in lido(env, "drain", "--pool", pool_name)

    def in_every_worker(done: Callable[[int, dict[str, Any]], bool]) -> bool:
        now = stats()
        return set(now) == pids and all(done(pid, s) for pid, s in now.items())

    wait_for(lambda: in_every_worker(lambda _, s: s["closes_drained"] > 0), timeout=20, step=0.2)
    wait_for(lambda: not backends() & old, timeout=20, step=0.2)
    # Each worker opens new connections for the next requests.
    _load_until(
        port,
        lambda: in_every_worker(
            lambda pid, s: s["connections_num"] > before[pid]["connections_num"]
        ),
    )
    assert backends() and not backends() & old


def _resize_one_worker_then_all(env: dict[str, str], pids: set[int], pool_name: str) -> None:
    """``lido resize``: the worker named by ``--pid`` resizes its pool, then every worker."""
    rundir = Path(env["LIDO_RUNTIME_DIR"])

    def sizes() -> dict[int, tuple[int, int]]:
        return {
            r["pid"]: (p["stats"]["pool_min"], p["stats"]["pool_max"])
            for r in host.read_records(rundir)
            if r["pid"] in pids
            for p in r["pools"]
            if p["name"] == pool_name
        }

    one, other = sorted(pids)
    start = sizes()[other]
    first, then = (0, start[1] + 2), (1, start[1] + 3)
    resize = ("resize", "--pool", pool_name)
    lido(env, *resize, "--min-size", "0", "--max-size", str(first[1]), "--pid", str(one))
    wait_for(lambda: sizes()[one] == first, timeout=20, step=0.2)
    assert sizes()[other] == start, "the other worker is not the one named"
    lido(env, *resize, "--min-size", "1", "--max-size", str(then[1]))
    wait_for(lambda: set(sizes().values()) == {then}, timeout=20, step=0.2)
    bad = subprocess.run(
        [sys.executable, "-m", "django", "lido", "resize", "--pool", pool_name,
         "--min-size", "4", "--max-size", "2"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "min_size=4: an integer from 0 to max_size (2)" in bad.stderr


@pytest.fixture
def site_env(pg: Any, site_db: str, tmp_path: Path) -> dict[str, str]:
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    return _site_env(pg, rundir)


def test_connections_and_leaks_views(pg: Any, site_env: dict[str, str]) -> None:
    """Another process's connections, with the stack that took them, and its long-hold
    report (leak_threshold 0.3 s), as the command shows them."""
    rundir = Path(site_env["LIDO_RUNTIME_DIR"])
    with PoolChild(pg.conninfo(), rundir, "views", held=2, leak_threshold=0.3) as child:
        rows = [c for c in json.loads(lido(site_env, "connections", "--json"))]
        assert {c["pid"] for c in rows} == {child.pid}
        assert len(rows) == 2
        for c in rows:
            assert c["pool"] == "views" and c["holder"]["thread"] == "MainThread"
            assert any(TAKER in frame for frame in c["stack"]), c["stack"]
        text = lido(site_env, "connections", "--stacks")
        assert f"(pid {child.pid}) taken at:" in text and TAKER in text
        assert "MainThread" in text

        def reported() -> list[dict[str, Any]]:
            # The snapshot also holds this process's own pools (earlier tests' reports).
            leaks = host_snapshot(rundir)["leaks"]
            return [e for e in leaks if e["kind"] == "long_hold" and e["pid"] == child.pid]

        wait_for(lambda: len(reported()) == 2, timeout=20)
        leaks = json.loads(lido(site_env, "leaks", "--json"))
        assert {e["connection_id"] for e in leaks} == {c["id"] for c in rows}
        assert all(e["pid"] == child.pid and e["seconds"] >= 0.3 for e in leaks)
        text = lido(site_env, "leaks")
        assert text.count(f"long_hold  pid {child.pid}  pool views") == 2
        assert text.count(TAKER) >= 2

        status = lido(site_env, "status", "--pool", "views")
        assert str(child.pid) in status and "total" in status
        assert lido(site_env, "status", "--pool", "nothing-by-that-name").endswith(
            f"no pools (records in {rundir})\n"
        )


def test_top_refreshes_a_bounded_number_of_times(pg: Any, site_env: dict[str, str]) -> None:
    rundir = Path(site_env["LIDO_RUNTIME_DIR"])
    with PoolChild(pg.conninfo(), rundir, "top", held=1) as child:
        out = lido(site_env, "top", "--iterations", "3", "--interval", "0.1")
        frames = [line for line in out.splitlines() if line.startswith("host ")]
        assert len(frames) == 3
        assert str(child.pid) in out
        assert "\x1b[2J" not in out, "no screen clearing when the output is not a terminal"
        jl = lido(site_env, "top", "--iterations", "2", "--interval", "0.1", "--json")
        frames_json = [json.loads(line) for line in jl.splitlines() if line.strip()]
        assert len(frames_json) == 2
        assert any(p["name"] == "top" and p["in_use"] == 1 for p in frames_json[0]["pools"])


def test_celery_prefork_processes_in_one_status(pg: Any, tmp_path: Path) -> None:
    """celery -P prefork -c 2: the worker processes that ran tasks are in one status, and
    the statements of all their tasks add up in one row per shape."""
    for module in ("celery", "redis"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    from harness.celery_worker import (
        CeleryWorker,
        create_table_sql,
        run_tasks_in_subprocess,
        write_project,
    )
    from harness.redis import RedisServer

    dbname = unique("lido_celery_obs")
    pg.create_database(dbname)
    pg.execute(create_table_sql(), dbname=dbname)
    project, rundir = tmp_path / "project", tmp_path / "run"
    tasks = 40
    with RedisServer() as redis:
        broker, backend = redis.broker_url(), redis.backend_url()
        databases = {"default": database(pg, name=dbname, pool={"max_size": 2})}
        config = write_project(project, databases, broker, backend, apps=("django_lido",))
        env = {
            **os.environ,
            "LIDO_RUNTIME_DIR": str(rundir),
            "LIDO_CELERY_CONFIG": str(config),
            "DJANGO_SETTINGS_MODULE": "celeryproj.settings",
            "PYTHONPATH": str(project),
        }
        worker = CeleryWorker(project, config, pool="prefork", concurrency=2)
        # The worker's environment is this process's.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LIDO_RUNTIME_DIR", str(rundir))
            worker.start()
        try:
            results = run_tasks_in_subprocess(broker, backend, tasks, timeout=60)
            workers = {pid for pid, _ in results}

            seen: list[Any] = []

            def counted() -> dict[str, Any] | None:
                """The ORM query's row, once every task's statement is in."""
                queries = json.loads(lido(env, "queries", "--json", "--order", "count"))
                seen[:] = [queries]
                rows = [q for q in queries if "COUNT(*)" in q["shape"]]
                return rows[0] if rows and rows[0]["count"] == tasks else None

            try:
                row = wait_for(counted, timeout=20, step=0.3)
            except AssertionError as e:
                raise AssertionError(f"{seen}\n{worker.log_tail()}") from e
            assert row["processes"] == len(workers)
            status = json.loads(lido(env, "status", "--json"))
            pids = {r["pid"] for r in status["processes"] if r["pools"]}
            assert pids == workers, (pids, workers)
            assert all("celery" in r["title"] for r in status["processes"])
            (total,) = status["pools"]
            assert total["processes"] == len(workers) and total["requests"] >= tasks
        finally:
            if worker.stop() is None:
                worker.kill()
