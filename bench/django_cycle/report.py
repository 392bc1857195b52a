"""The result tables and the docs/benchmarks.md section."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _common

from django_cycle.runner import Runs
from django_cycle.server import BenchServer
from django_cycle.variants import KINDS, SECTIONS, label


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


# --- cells of the per-scenario tables -------------------------------------------------------


def note(runs: Runs) -> str:
    notes = [f"errors in {len(runs.errors)} run(s)"] if runs.errors else []
    starved = [sum(1 for c in e["per_thread"] if c == 0) for e in runs.extra if "per_thread" in e]
    if any(starved):
        notes.append(f"threads with no cycle: {', '.join(map(str, starved))} (per run)")
    pool = [e["pool"] for e in runs.extra if e.get("pool")]
    if pool and "usage_p50_ms" in pool[0]:
        hold = statistics.median(p.get("usage_p50_ms", 0) for p in pool)
        wait = statistics.median(p.get("acquire_wait_p50_ms", 0) for p in pool)
        notes.append(f"pool stats p50: held {hold:.2g} ms, waited {wait:.2g} ms")
    return "; ".join(notes)


def rate(runs: Runs) -> str:
    return fmt(runs.rate)


def fairness(runs: Runs) -> str:
    return fmt(runs.fairness, 2, comma=False)


def peak(runs: Runs) -> str:
    return f"{max(runs.peak)}" if runs.peak else "n/a"


def cpu(runs: Runs) -> str:
    vals = [e["cpu_us"] for e in runs.extra if "cpu_us" in e]
    return f"{statistics.median(vals):,.0f}" if vals else "n/a"


def switches(runs: Runs) -> str:
    vals = [e["vcsw"] + e["ivcsw"] for e in runs.extra if "vcsw" in e]
    return fmt(vals, 0, comma=False) if vals else "n/a"


def seen(name: str) -> Callable[[Runs], str]:
    """The distinct values a child reported under `name`."""

    def cell(runs: Runs) -> str:
        values = sorted({e.get(name) for e in runs.extra if name in e})
        return ", ".join(map(str, values)) or "n/a"

    return cell


# --- the table spec ----------------------------------------------------------------------------
#
# Text and variant keys may hold {t} (--threads) and {n} (--size). Every table starts with the
# variant and ends with the notes; "native" marks what exists only on PostgreSQL, where Django
# has a native pool.


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Runs], str] | None = None
    over: str | None = None  # a ratio column: the row's rate over this variant's
    native: bool = False


@dataclass(frozen=True)
class Target:
    what: str
    key: str
    over: str | None = None  # the key's rate over this variant's; None: the key's own figure
    figure: str = "rate"  # the Runs field measured when `over` is None
    goal: float | None = None  # None: shown beside the targets, with no goal of its own
    native: bool = False


@dataclass(frozen=True)
class Table:
    scenario: str
    title: str
    columns: tuple[Column, ...]
    targets: tuple[Target, ...]


TABLES = (
    Table(
        "a",
        "(a) one thread: `connection.cursor().execute('select 1'); connection.close()`",
        (
            Column("iter/s", rate),
            Column("/ persistent", over="persistent"),
            Column("/ native max {n}", over="native-{n}", native=True),
            Column("CPU µs/iter", cpu),
        ),
        (
            Target("(a) lido / persistent", "lido-{n}", over="persistent", goal=0.97),
            Target(f"(a) {KINDS['noop']} / persistent", "noop", over="persistent"),
            Target(f"(a) {KINDS['lido_noop']} / persistent", "lido_noop", over="persistent"),
            Target(
                "(a) lido / native pool max {n}",
                "lido-{n}",
                over="native-{n}",
                goal=1.1,
                native=True,
            ),
        ),
    ),
    Table(
        "b",
        "(b) {t} threads: `close_old_connections()`, `select 1`, primary-key lookup, "
        "`close_old_connections()`",
        (
            Column("cycles/s", rate),
            Column("fairness", fairness),
            Column("peak server conns", peak),
            Column("/ persistent {t}", over="persistent-{t}"),
            Column("/ native max {n}", over="native-{n}", native=True),
            Column("CPU µs/cycle", cpu),
            Column("ctx switches/cycle", switches),
        ),
        (
            Target(
                "(b) lido max {n} / persistent, {t} threads",
                "lido-{n}",
                over="persistent-{t}",
                goal=0.9,
            ),
            Target(
                "(b) persistent, {n} threads (info) / persistent, {t} threads",
                "persistent-{n}",
                over="persistent-{t}",
            ),
            Target(
                "(b) lido max {n} / native pool max {n}",
                "lido-{n}",
                over="native-{n}",
                goal=1.8,
                native=True,
            ),
            Target("(b) lido max {n} fairness", "lido-{n}", figure="fairness", goal=0.9),
        ),
    ),
    Table(  # PostgreSQL-only scenario: its native-pool ratio is not marked
        "c",
        "(c) one thread: 4-table ORM query (`select_related`, filter, order, first 10), "
        "one checkout per query",
        (
            Column("queries/s", rate),
            Column("/ native max {n} defaults", over="native-{n}"),
            Column("CPU µs/query", cpu),
            Column("statements prepared on server", seen("prepared")),
            Column("cursor class", seen("cursor_class")),
        ),
        (
            Target(
                "(c) lido (defaults) / native pool defaults",
                "lido-{n}",
                over="native-{n}",
                goal=1.3,
            ),
            Target(
                "(c) lido + server_side_binding / native pool defaults",
                "lido_ssb-{n}",
                over="native-{n}",
                goal=1.3,
            ),
        ),
    ),
)


def results_tables(
    results: dict[str, dict[str, Runs]], args: argparse.Namespace
) -> tuple[str, list[list[str]]]:
    """The per-scenario tables, and the rows of the targets table."""
    out: list[str] = []
    targets: list[list[str]] = []
    for table in TABLES:
        if table.scenario in results:
            text, rows = render(table, results[table.scenario], args)
            out.append(text)
            targets += rows
    return "\n\n".join(out), targets


def render(
    table: Table, scenario: dict[str, Runs], args: argparse.Namespace
) -> tuple[str, list[list[str]]]:
    """One scenario's table, and its rows of the targets table."""
    native = args.vendor == "postgresql"
    sub = {"t": args.threads, "n": args.size}

    def median(key: str, figure: str = "rate") -> float | None:
        runs = scenario.get(key.format(**sub))
        return med(getattr(runs, figure)) if runs else None

    columns = [c for c in table.columns if native or not c.native]
    rows = []
    for key, runs in scenario.items():
        r = med(runs.rate)
        cells = [ratio(r, median(c.over)) if c.over else c.cell(runs) for c in columns]
        rows.append([label(key, args.threads), *cells, note(runs)])
    headers = ["variant", *(c.header.format(**sub) for c in columns), "notes"]
    text = f"### {table.title.format(**sub)}\n\n" + _common.md_table(headers, rows)
    targets = []
    for tg in table.targets:
        if tg.native and not native:
            continue
        value = div(median(tg.key), median(tg.over)) if tg.over else median(tg.key, tg.figure)
        shown = "n/a" if value is None else f"{value:.2f}" + ("x" if tg.over else "")
        what = tg.what.format(**sub)
        if tg.goal is None:
            targets.append([what, "-", shown, "-"])
        else:
            met = "n/a" if value is None else "yes" if value >= tg.goal else "no"
            targets.append([what, f">= {tg.goal:g}", shown, met])
    return text, targets


def div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


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

Generated by `bench/django_cycle`; everything between the `{section}` markers is rewritten
on each run.

- Date: {_common.utc_now()}
- Machine: {_common.machine_line()}
- Python: {info["python"]}
{packages}
{server_line}
{settings}
- Other load on the machine: {busy_line(raw, args)}
- Reproduce (from the repo root): `{_common.repro_command("bench/django_cycle")}`

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
