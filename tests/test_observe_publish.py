"""Each process publishes its pools; host_snapshot() puts every live process's record
together and forgets dead ones. Real pools on a throwaway PostgreSQL, real child processes."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django_helpers import configure, database, global_alias, unique
from django_lido import AsyncPool, Pool
from django_lido.observe import host, host_snapshot, publish
from observe_helpers import PoolChild, wait_for


@pytest.fixture
def rundir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime directory of this test's own, with this process's publisher restarted
    into it."""
    d = tmp_path / "run"
    monkeypatch.setenv("LIDO_RUNTIME_DIR", str(d))
    publish.stop()
    yield d
    publish.stop()


def _records(d: Path) -> dict[int, dict[str, Any]]:
    return {r["pid"]: r for r in host.read_records(d)}


def test_a_pool_publishes_its_record_atomically_in_a_private_directory(
    pg: Any, rundir: Path
) -> None:
    with Pool(pg.conninfo(), name="pub-basic", max_size=3) as pool:
        assert publish.current() is not None, "the first pool starts the publisher"
        conn = pool.getconn()
        conn.execute("SELECT 1")
        path = rundir / f"{os.getpid()}.json"

        def published() -> dict[str, Any] | None:
            if not path.exists():
                return None
            rec = json.loads(path.read_bytes())
            pools = {p["name"]: p for p in rec["pools"]}
            p = pools.get("pub-basic")
            return rec if p is not None and p["stats"]["in_use"] == 1 else None

        rec = wait_for(published)
        assert rec["pid"] == os.getpid()
        assert rec["host"] and rec["title"] and rec["written_at"] >= rec["started_at"]
        assert rec["proc_start"] == publish.proc_start(os.getpid())[1]  # type: ignore[index]
        (p,) = [p for p in rec["pools"] if p["name"] == "pub-basic"]
        assert p["stats"]["pool_max"] == 3 and p["stats"]["requests_num"] == 1
        assert stat.S_IMODE(rundir.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [f.name for f in rundir.iterdir()] == [path.name], "no temporary file left"
        pool.putconn(conn)
    # No open pool left in the test's directory... unless other tests left theirs open.
    publish.stop()
    assert not path.exists(), "stopping removes the record"


def test_a_record_is_rewritten_when_something_changes_or_at_the_heartbeat(
    pg: Any, rundir: Path
) -> None:
    with Pool(pg.conninfo(), name="pub-change", max_size=2) as pool:
        publish.stop()  # driven by hand below, not by the thread
        pub = publish.Publisher()
        held = pool.getconn()  # its age grows, and that alone is no change
        try:
            assert pub.publish_once(force=True)
            time.sleep(0.01)
            assert not pub.publish_once(), "nothing changed: no write"
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            assert pub.publish_once(), "a checkout changed the statistics"
            assert not pub.publish_once()
            pub._last_write -= publish.HEARTBEAT
            assert pub.publish_once(), "the heartbeat rewrites an unchanged record"
            assert pub.writes == 3
        finally:
            pool.putconn(held)
            pub.remove()


def test_a_killed_process_record_disappears(pg: Any, rundir: Path) -> None:
    rundir.mkdir(mode=0o700)
    with (
        PoolChild(pg.conninfo(), rundir, "pub-child", held=2) as a,
        PoolChild(pg.conninfo(), rundir, "pub-child", held=1) as b,
    ):
        snap = host_snapshot(rundir)
        pids = {r["pid"] for r in snap["processes"]}
        assert {a.pid, b.pid} <= pids
        (total,) = [t for t in snap["pools"] if t["name"] == "pub-child"]
        assert total["processes"] == 2 and total["in_use"] == 3 and total["max_size"] == 8
        a.kill()
        snap = host_snapshot(rundir)
        assert a.pid not in {r["pid"] for r in snap["processes"]}
        assert not (rundir / f"{a.pid}.json").exists(), "the dead process's record is deleted"
        (total,) = [t for t in snap["pools"] if t["name"] == "pub-child"]
        assert total["processes"] == 1 and total["in_use"] == 1


def test_other_processes_connections_are_aged_to_the_time_of_the_read(
    pg: Any, rundir: Path
) -> None:
    """A quiet process rewrites its record only at the heartbeat; the snapshot still gives
    each connection's age at the time it is taken."""
    rundir.mkdir(mode=0o700)
    with PoolChild(pg.conninfo(), rundir, "pub-ages", held=1) as child:
        for _ in range(2):
            time.sleep(0.6)
            snap = host_snapshot(rundir)
            (c,) = [c for c in snap["connections"] if c["pid"] == child.pid]
            assert c["pool"] == "pub-ages" and c["holder"]["thread"] == "MainThread"
            assert c["held_for"] == pytest.approx(snap["taken_at"] - c["taken_at"], abs=0.05)
            assert c["held_for"] > 0.5


def test_this_process_queries_are_read_live(pg: Any, rundir: Path) -> None:
    """The calling process's own pools go into the snapshot as they are now: statements just
    run are there, and gone after reset_query_stats()."""
    configure(pg, default=database(pg))
    w = global_alias(unique("pub_q"), database(pg, pool={"max_size": 2}))
    with w.cursor() as cur:
        for n in range(3):
            cur.execute("SELECT %s + 1", [n])
            cur.execute("SELECT 4711 * 2")
    pool = w.pool
    w.close()

    def ours(snap: dict[str, Any]) -> dict[str, int]:
        return {q["shape"]: q["count"] for q in snap["queries"] if q["pool"] == pool.name}

    shapes = ours(host_snapshot(rundir))
    assert shapes == {"SELECT %s + ?": 3, "SELECT ? * ?": 3}, shapes
    (t,) = [t for t in host_snapshot(rundir)["pools"] if t["name"] == pool.name]
    assert t["alias"] == w.alias and t["vendor"] == "postgresql" and t["database"] == "postgres"
    pool.reset_query_stats()
    assert ours(host_snapshot(rundir)) == {}


def test_a_reset_request_reaches_the_named_pools_once(pg: Any, rundir: Path) -> None:
    configure(pg, default=database(pg))
    wrappers = [global_alias(unique("pub_r"), database(pg, pool={"max_size": 1})) for _ in "ab"]
    for w in wrappers:
        with w.cursor() as cur:
            cur.execute("SELECT 1")
        w.close()
    a, b = (w.pool for w in wrappers)
    rundir.mkdir(mode=0o700)
    publish.request_query_reset(rundir, a.name)  # older than the publisher: not for it
    publish.stop()
    pub = publish.Publisher()
    try:
        pub.publish_once()
        assert a.query_stats() and b.query_stats()
        time.sleep(0.01)  # a later modification time than the first request's
        publish.request_query_reset(rundir, a.name)
        pub.publish_once()
        assert not a.query_stats() and b.query_stats()
        with wrappers[0].cursor() as cur:
            cur.execute("SELECT 1")
        wrappers[0].close()
        pub.publish_once()
        assert a.query_stats(), "a request is taken once"
        time.sleep(0.01)
        publish.request_query_reset(rundir)
        pub.publish_once()
        assert not a.query_stats() and not b.query_stats()
    finally:
        pub.remove()


def test_a_drain_request_reaches_the_named_pools_once(pg: Any, rundir: Path) -> None:
    """The same mechanism as the reset, with a file of its own: a reset request drains
    nothing, and each request is taken once."""
    with (
        Pool(pg.conninfo(), name=unique("pub_d"), max_size=2) as a,
        Pool(pg.conninfo(), name=unique("pub_e"), max_size=2) as b,
    ):

        def drained() -> tuple[int, int]:
            return a.stats()["closes_drained"], b.stats()["closes_drained"]

        def use_both() -> None:
            for p in (a, b):
                p.putconn(p.getconn())

        use_both()
        rundir.mkdir(mode=0o700, exist_ok=True)
        publish.stop()
        publish.request_drain(rundir, a.name)  # older than the publisher: not for it
        time.sleep(0.01)
        pub = publish.Publisher()
        try:
            pub.publish_once()
            assert drained() == (0, 0)
            time.sleep(0.01)  # a later modification time than the first request's
            publish.request_drain(rundir, a.name)
            publish.request_query_reset(rundir)
            pub.publish_once()
            assert drained() == (1, 0)
            assert a.stats()["idle"] == 0 and b.stats()["idle"] == 1
            use_both()
            pub.publish_once()
            assert drained() == (1, 0), "a request is taken once"
            time.sleep(0.01)
            publish.request_action("drain", rundir)
            pub.publish_once()
            assert drained() == (2, 1)
        finally:
            pub.remove()
    with pytest.raises(
        ValueError, match="action must be one of reset_queries, drain, resize, not 'x'"
    ):
        publish.request_action("x", rundir)


def test_a_resize_reaches_the_process_named_and_requests_in_one_tick_are_all_taken(
    pg: Any, rundir: Path
) -> None:
    with (
        Pool(pg.conninfo(), name=unique("pub_z"), max_size=2) as a,
        Pool(pg.conninfo(), name=unique("pub_y"), max_size=2) as b,
    ):
        rundir.mkdir(mode=0o700, exist_ok=True)
        publish.stop()
        pub = publish.Publisher()
        try:
            publish.request_resize(a.name, 0, 3, rundir)
            publish.request_resize(a.name, 0, 5, rundir, pid=os.getpid() + 1)  # not this one
            publish.request_resize(b.name, 0, 4, rundir, pid=os.getpid())
            publish.request_drain(rundir, b.name)
            pub.publish_once()
            assert (a.stats()["pool_max"], b.stats()["pool_max"]) == (3, 4)
            assert b.stats()["closes_drained"] == 0  # nothing to drain, but taken: below
            b.putconn(b.getconn())
            pub.publish_once()
            assert b.stats()["closes_drained"] == 0, "a request is taken once"
            with pytest.raises(ValueError, match=r"min_size=6: an integer from 0 to max_size"):
                publish.request_resize(a.name, 6, 2, rundir)
            # Requests older than REQUEST_TTL are deleted, not taken.
            requests = rundir / publish.REQUESTS
            drain_all = json.dumps({"action": "drain", "at": time.time(), "pool": None})
            stale = requests / f"{time.time_ns() - 61 * 10**9}-1-0-drain.json"
            stale.write_text(drain_all)
            # Not requests: a FIFO (reading it would block the thread), a link, a big file.
            made = time.time_ns()
            os.mkfifo(requests / f"{made}-1-1-drain.json")
            (rundir / "elsewhere.json").write_text(drain_all)
            (requests / f"{made}-1-2-drain.json").symlink_to(rundir / "elsewhere.json")
            (requests / f"{made}-1-3-drain.json").write_text(drain_all + " " * 5000)
            pub.publish_once()
            assert not stale.exists()
            assert b.stats()["closes_drained"] == 0
        finally:
            pub.remove()


def test_requests_are_deleted_once_expired_though_taken(
    pg: Any, rundir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "REQUEST_TTL", 0.3)
    with Pool(pg.conninfo(), name=unique("pub_x"), max_size=1) as a:
        rundir.mkdir(mode=0o700, exist_ok=True)
        publish.stop()
        pub = publish.Publisher()
        try:
            a.putconn(a.getconn())
            publish.request_drain(rundir, a.name)
            pub.publish_once()
            assert a.stats()["closes_drained"] == 1
            (request,) = (rundir / publish.REQUESTS).iterdir()
            wait_for(lambda: (pub.publish_once(), not request.exists())[1], timeout=5)
            assert a.stats()["closes_drained"] == 1
        finally:
            pub.remove()


def _aio(body: Any) -> Any:
    """Runs an async test body, a hang failed by a watchdog."""

    async def guarded() -> Any:
        return await asyncio.wait_for(body(), 60.0)

    return asyncio.run(guarded())


async def _eventually(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


async def _backend_pid(conn: Any) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    return int(row[0])


def test_an_async_pool_is_published_and_acted_on_on_its_loop(pg: Any, rundir: Path) -> None:
    """The publisher, another thread, reads an AsyncPool as it reads a Pool, and runs a
    requested drain on the pool's own loop (where its connections are awaited)."""

    async def body() -> None:
        pool = AsyncPool(pg.conninfo(), name=unique("pub_aio"), max_size=3)
        assert publish.current() is not None, "the first AsyncPool starts the publisher"
        publish.stop()  # driven by hand below, from another thread
        pub = publish.Publisher()
        try:
            rundir.mkdir(mode=0o700, exist_ok=True)
            idle, held = await pool.getconn(), await pool.getconn()
            idle_pid = await _backend_pid(idle)
            await pool.putconn(idle)
            await held.execute("SELECT 4711")
            assert await asyncio.to_thread(pub.publish_once, True)
            rec = json.loads((rundir / f"{os.getpid()}.json").read_bytes())
            (p,) = [p for p in rec["pools"] if p["name"] == pool.name]
            assert p["stats"]["in_use"] == 1 and p["stats"]["idle"] == 1, p["stats"]
            assert p["stats"]["pool_max"] == 3
            (c,) = p["connections"]
            task = asyncio.current_task()
            assert task is not None and c["holder"]["task"] == task.get_name(), c
            snap = await asyncio.to_thread(host_snapshot, rundir)
            assert [c["pool"] for c in snap["connections"]].count(pool.name) == 1
            (t,) = [t for t in snap["pools"] if t["name"] == pool.name]
            assert t["in_use"] == 1

            time.sleep(0.01)  # requests made after the publisher started
            publish.request_drain(rundir, pool.name)
            publish.request_resize(pool.name, 0, 5, rundir)
            await asyncio.to_thread(pub.publish_once)
            assert pool.stats()["pool_max"] == 5, "the resize is run in the publisher's thread"
            await _eventually(lambda: pool.stats()["closes_drained"] == 1, "the idle one drained")
            assert pool.stats()["idle"] == 0
            await pool.putconn(held)
            assert pool.stats()["closes_drained"] == 2, "the one in use closes as it comes back"
            async with pool.connection() as conn:
                assert await _backend_pid(conn) != idle_pid, "a new connection"

            await pool.close()
            assert pool not in publish.open_pools()
            snap = await asyncio.to_thread(host_snapshot, rundir)
            assert pool.name not in {t["name"] for t in snap["pools"]}
        finally:
            await pool.close()
            pub.remove()

    _aio(body)


def test_a_requested_async_action_without_a_loop_is_skipped_and_a_failure_logged(
    pg: Any, rundir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pool not bound to a loop yet, or whose loop has ended, is skipped (the coroutine
    closed unrun); a coroutine that fails on the pool's loop is logged."""

    class FailingDrain(AsyncPool):
        async def drain(self) -> None:
            raise RuntimeError("drain broke")

    unbound = AsyncPool(pg.conninfo(), name=unique("pub_unbound"), max_size=1)

    async def orphaned() -> AsyncPool:
        return AsyncPool(pg.conninfo(), name=unique("pub_orphan"), max_size=1)

    orphan = asyncio.run(orphaned())  # its loop is closed now, the pool left open
    failing_name = unique("pub_failing")
    caplog.set_level(logging.DEBUG, "django_lido.observe")
    rundir.mkdir(mode=0o700, exist_ok=True)
    publish.stop()
    pub = publish.Publisher()

    async def body() -> None:
        failing = FailingDrain(pg.conninfo(), name=failing_name, max_size=1)
        try:
            time.sleep(0.01)
            publish.request_drain(rundir)
            await asyncio.to_thread(pub.publish_once)
            await _eventually(
                lambda: any("drain broke" in r.exc_text for r in caplog.records if r.exc_text),
                "the failure logged",
            )
        finally:
            await failing.close()

    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            _aio(body)
            gc.collect()
        assert not [w for w in warned if "never awaited" in str(w.message)]
        skipped = {r.args[0] for r in caplog.records if "skipped" in r.getMessage()}
        assert skipped == {unbound.name, orphan.name}
        (failed,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert failed.args[:2] == (failing_name, "drain")
        assert unbound.stats()["closes_drained"] == orphan.stats()["closes_drained"] == 0
    finally:
        pub.remove()
        unbound._at_exit.close(0)
        orphan._at_exit.close(0)


def test_stale_records_and_reused_pids_are_dropped(rundir: Path) -> None:
    rundir.mkdir(mode=0o700)
    me = publish.process_record([])
    parent = os.getppid()
    # A live process (our parent) whose record was not rewritten for too long.
    stale = {**me, "pid": parent, "proc_start": None, "written_at": time.time() - 2 * publish.STALE}
    publish.write_record(rundir, stale)
    # A live pid whose record was written by an earlier process with that pid.
    reused = {**me, "pid": parent, "proc_start": -1}
    other = rundir / "other"
    other.mkdir()
    publish.write_record(other, reused)
    assert host.read_records(rundir) == []
    assert host.read_records(other) == []
    assert not list(rundir.glob("*.json")) and not list(other.glob("*.json"))
    # The same record, fresh and with the right start time, is kept.
    fresh = {**me, "pid": parent, "proc_start": publish.proc_start(parent)[1]}  # type: ignore[index]
    publish.write_record(rundir, fresh)
    assert [r["pid"] for r in host.read_records(rundir)] == [parent]


def test_runtime_dir_choice_and_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIDO_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert publish.runtime_dir() == tmp_path / "django-lido"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert publish.runtime_dir(create=False) == Path(f"/tmp/django-lido-{os.getuid()}")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    monkeypatch.setenv("LIDO_RUNTIME_DIR", str(tmp_path / "link"))
    with pytest.raises(OSError, match="not a directory"):
        publish.runtime_dir()
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    monkeypatch.setenv("LIDO_RUNTIME_DIR", str(loose))
    assert publish.runtime_dir() == loose
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def _run_child(script: str, pg: Any, rundir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIDO_RUNTIME_DIR": str(rundir)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), pg.conninfo()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_under_gevent_the_publisher_is_a_real_thread(pg: Any, rundir: Path) -> None:
    """The main greenlet blocks the hub (a real sleep); the record still gets written, so
    the publisher does not run on the hub."""
    pytest.importorskip("gevent")
    out = _run_child(
        """
        from gevent import monkey; monkey.patch_all()
        import os, sys, signal
        signal.alarm(50)
        from django_lido import Pool, _green
        from django_lido.observe import publish
        sleep = monkey.get_original("time", "sleep")
        pool = Pool(sys.argv[1], name="pub-gevent")
        assert isinstance(publish.current()._thread, _green.RealThread)
        path = publish.runtime_dir() / f"{os.getpid()}.json"
        for _ in range(200):
            if path.exists():
                break
            sleep(0.05)  # blocks the hub: no greenlet runs meanwhile
        print("published" if path.exists() else "not published")
        pool.close()
        """,
        pg,
        rundir,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "published"


def test_a_forked_child_publishes_its_own_record(pg: Any, rundir: Path) -> None:
    out = _run_child(
        """
        import json, os, sys, signal, time
        signal.alarm(50)
        from django_lido import AsyncPool, Pool
        from django_lido.observe import publish
        pool = Pool(sys.argv[1], name="pub-fork")
        d = publish.runtime_dir()
        parent_started = publish.process_record([])["started_at"]
        pid = os.fork()
        if pid == 0:
            try:
                conn = pool.getconn()
                for _ in range(200):
                    p = d / f"{os.getpid()}.json"
                    if p.exists():
                        rec = json.loads(p.read_bytes())
                        if rec["pools"] and rec["pools"][0]["stats"]["in_use"] == 1:
                            # Its own start, not the parent's.
                            os._exit(0 if rec["started_at"] > parent_started else 3)
                    time.sleep(0.05)
                os._exit(1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), (d / f"{os.getpid()}.json").exists())
        pool.close()
        """,
        pg,
        rundir,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "True"], out.stdout + out.stderr


def test_publishing_can_be_turned_off(pg: Any, rundir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom django_lido import Pool\n"
         "from django_lido.observe import publish\n"
         "pool = Pool(sys.argv[1], name='pub-off')\nprint(publish.current())\npool.close()",
         pg.conninfo()],
        env={**os.environ, "LIDO_RUNTIME_DIR": str(rundir), "LIDO_PUBLISH": "off"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
    assert not rundir.exists() or not list(rundir.glob("*.json"))


def test_an_unusable_directory_is_said_once_and_the_pool_works_on(pg: Any, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(
            """
            import logging, signal, sys, time
            signal.alarm(50)
            logging.basicConfig(level=logging.WARNING)
            from django_lido import AsyncPool, Pool
            pool = Pool(sys.argv[1], name="pub-broken")
            for _ in range(8):
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
                time.sleep(0.25)
            print(pool.stats()["requests_num"])
            pool.close()
            """
        ), pg.conninfo()],
        env={**os.environ, "LIDO_RUNTIME_DIR": str(not_a_dir), "LIDO_PUBLISH_INTERVAL": "0.25"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8"
    assert out.stderr.count("could not publish this process's pools") == 1, out.stderr
    assert "is not a directory" in out.stderr
