"""The result tables and the docs/benchmarks.md section."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import _common

from django_cycle.runner import Runs
from django_cycle.server import BenchServer
from django_cycle.variants import (
    KINDS,
    SECTIONS,
    label,
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
