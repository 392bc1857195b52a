"""The command line: ``python -m harness.django_suite``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from harness.django_suite.compare import ACCEPTED_DIFFERENCES, compare
from harness.django_suite.run import DEFAULT_MODULES, DEFAULT_TIMEOUT, SuiteResult, run_suite
from harness.django_suite.sdist import django_source, ensure_requirements
from harness.django_suite.settings import (
    DEFAULT_POOL_OPTIONS,
    DRIVERS,
    MYSQL_DRIVERS,
    VENDOR_DRIVERS,
    VENDORS,
    gis_prerequisites,
    suite_server,
)

# -- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (non-zero on a regression, a failed single
    run or an untrustworthy parse)."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.django_suite",
        description=(
            "Run Django's own test suite with the stock and/or our ENGINE, on PostgreSQL or "
            "MySQL/MariaDB."
        ),
    )
    parser.add_argument(
        "--vendor", choices=VENDORS, default="postgresql",
        help="postgresql (a throwaway cluster) or mysql (a throwaway MariaDB) (default: "
        "%(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--driver", choices=(*DRIVERS, *MYSQL_DRIVERS),
        help="psycopg (default) or psycopg2 for postgresql; mysqlclient (default) or pymysql "
        "for mysql",
    )  # fmt: skip
    parser.add_argument("--engine", choices=("stock", "lido", "both"), default="both")
    parser.add_argument("--gis", action="store_true", help="run gis_tests on the PostGIS engines")
    parser.add_argument(
        "--modules", nargs="+", help=f"test labels (default: {' '.join(DEFAULT_MODULES)})"
    )
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--gevent", action="store_true",
        help="every process of the run calls gevent.monkey.patch_all() first (with "
        "--parallel 1: Django's parallel runner hangs in a patched process)",
    )  # fmt: skip
    parser.add_argument(
        "--database-url",
        help="use this server (postgresql:// or mysql:// URL) instead of a throwaway one",
    )
    parser.add_argument(
        "--pool-options", type=json.loads, default=DEFAULT_POOL_OPTIONS,
        help="JSON for our ENGINE's OPTIONS['pool'] (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--log-dir", type=Path, help="where the logs go (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per run, in s")
    args = parser.parse_args(argv)
    driver = args.driver or VENDOR_DRIVERS[args.vendor][0]
    if driver not in VENDOR_DRIVERS[args.vendor]:
        parser.error(f"--driver {driver} is not a driver for --vendor {args.vendor}")
    if args.gis and args.vendor != "postgresql":
        parser.error("--gis needs --vendor postgresql")

    engines = ("stock", "lido") if args.engine == "both" else (args.engine,)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="lido-django-suite-"))
    source = django_source()
    installed = ensure_requirements()
    if installed:
        print(f"installed test requirements: {', '.join(installed)}")
    print(f"Django source: {source}\nlogs: {log_dir}", flush=True)

    results: list[SuiteResult] = []
    with suite_server(args.database_url, args.vendor) as server:
        if args.gis and (missing := gis_prerequisites(server)):
            print(f"cannot run gis_tests: {missing}", file=sys.stderr)
            return 2
        for engine in engines:
            result = run_suite(
                server, engine=engine, driver=driver, gis=args.gis, modules=args.modules,
                parallel=args.parallel, pool_options=args.pool_options, log_dir=log_dir,
                source=source, timeout=args.timeout, gevent=args.gevent,
            )  # fmt: skip
            print(result.summary(), flush=True)
            results.append(result)

    status = 1 if any(r.problems for r in results) else 0
    if len(results) == 2:
        comparison = compare(results[0], results[1], ACCEPTED_DIFFERENCES)
        print(comparison.report())
        status |= 0 if comparison.ok else 1
    elif results[0].failed():
        print("failed:\n" + "\n".join(f"  {t}" for t in results[0].failed()))
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
