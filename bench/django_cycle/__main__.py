"""The command line: `python bench/django_cycle` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:
    # Run as `python bench/django_cycle`: import the package from bench/, not from its own
    # directory.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import _common

import django_cycle
from django_cycle.child import child_info, child_main
from django_cycle.machine import CpuLedger, Monitor
from django_cycle.report import doc_section, results_tables
from django_cycle.runner import (
    PACKAGE_DIR,
    Runs,
    progress_line,
    record,
    run_child,
    run_measured,
    vendor_argv,
)
from django_cycle.server import bench_server
from django_cycle.variants import DBNAME, MYSQL_DRIVERS, SECTIONS, VENDORS, scenario_variants


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=django_cycle.__doc__.split("\n")[0])
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.info:
        return child_info(args)
    if args.child:
        return child_main(args)

    log = sys.stderr
    info = json.loads(
        subprocess.run(
            [args.python, str(PACKAGE_DIR), "--info", *vendor_argv(args)],
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
