"""One run of Django's suite with one ENGINE and driver."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.django_suite.parse import OUTCOMES, PASSED, UNKNOWN, ParsedOutput, parse_output
from harness.django_suite.sdist import django_source
from harness.django_suite.settings import (
    DEFAULT_POOL_OPTIONS,
    DRIVER_MODULES,
    ENGINES,
    FORCE_PSYCOPG2_ENV,
    FORCE_PYMYSQL_ENV,
    GEVENT_ENV,
    MYSQL_ENGINES,
    PREFLIGHT,
    SITECUSTOMIZE,
    VENDOR_DRIVERS,
    AnyServer,
    databases_setting,
    server_vendor,
    settings_source,
)
from harness.mariadb import MariaDBServer
from harness.servers import PostgresServer

DEFAULT_MODULES = (
    "backends",
    "transactions",
    "transaction_hooks",
    "select_for_update",
    "queries",
    "basic",
)
GIS_MODULES = ("gis_tests",)


DEFAULT_TIMEOUT = 3600.0


@dataclasses.dataclass
class SuiteResult:
    """One run of Django's suite with one ENGINE and driver."""

    label: str  # e.g. "stock/psycopg2"
    engine: str  # the ENGINE path
    driver: str
    modules: tuple[str, ...]
    parsed: ParsedOutput
    returncode: int
    wall_time: float
    log_path: Path
    versions: dict[str, str]

    @property
    def outcomes(self) -> dict[str, str]:
        return self.parsed.outcomes

    @property
    def problems(self) -> list[str]:
        return self.parsed.problems

    def counts(self) -> dict[str, int]:
        counter = collections.Counter(self.outcomes.values())
        counts = {outcome: counter[outcome] for outcome in OUTCOMES}
        counts["fixture errors"] = len(self.parsed.fixture_errors)
        if counter[UNKNOWN]:
            counts[UNKNOWN] = counter[UNKNOWN]
        return counts

    def failed(self) -> list[str]:
        """Tests (and class/module fixtures) that errored or failed."""
        bad = [t for t, o in self.outcomes.items() if o not in PASSED and o != "skipped"]
        return sorted(bad) + sorted(self.parsed.fixture_errors)

    def summary(self) -> str:
        c = self.counts()
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        text = (
            f"{self.label} [{self.engine}; {versions}]: {len(self.outcomes)} tests: "
            f"{c['ok']} passed, {c['FAIL']} failed, {c['ERROR']} errors, {c['skipped']} skipped, "
            f"{c['expected failure']} expected failures, "
            f"{c['unexpected success']} unexpected successes"
        )
        if c["fixture errors"]:
            text += f", {c['fixture errors']} class/module fixture errors"
        text += f"; {self.wall_time:.1f} s; exit {self.returncode}; log {self.log_path}"
        for problem in self.problems:
            text += f"\n  PROBLEM: {problem}"


def _preflight(env: Mapping[str, str], gis: bool, vendor: str = "postgresql") -> dict[str, str]:
    flags = [*(["--gis"] if gis else []), *(["--mysql"] if vendor == "mysql" else [])]
    argv = [sys.executable, "-c", PREFLIGHT, *flags]
    proc = subprocess.run(argv, env=dict(env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the suite's interpreter cannot load Django:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_suite(
    server: AnyServer,
    *,
    engine: str = "stock",
    driver: str | None = None,
    gis: bool = False,
    modules: Sequence[str] | None = None,
    parallel: int = 2,
    pool_options: Mapping[str, Any] | None = None,
    log_dir: Path | None = None,
    source: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    extra_args: Sequence[str] = (),
    gevent: bool = False,
) -> SuiteResult:
    """Run ``tests/runtests.py`` for ``modules`` with ``engine`` ("stock" or "lido") on
    ``driver`` and parse every test's outcome.

    The server's vendor decides the ENGINEs and drivers: PostgreSQL with "psycopg" (default)
    or "psycopg2", MariaDB/MySQL with "mysqlclient" (default) or "pymysql" (made Django's
    ``MySQLdb`` with ``pymysql.install_as_MySQLdb()``); ``gis`` is PostgreSQL's only.
    ``pool_options`` is ``OPTIONS["pool"]`` for our ENGINE (default ``{"max_size": 4}``).
    ``gevent``: every process of the run calls ``gevent.monkey.patch_all()`` first.
    The output goes to ``<log_dir>/<engine>-<driver>[-gis][-gevent].log``.
    """
    vendor = server_vendor(server)
    drivers = VENDOR_DRIVERS[vendor]
    driver = driver or drivers[0]
    if driver not in drivers:
        raise ValueError(f"driver must be one of {drivers} for {vendor}, got {driver!r}")
    if (engine, gis) not in ENGINES:
        raise ValueError(f"engine must be 'stock' or 'lido', got {engine!r}")
    if gis and vendor != "postgresql":
        raise ValueError("gis_tests run on PostgreSQL (PostGIS) only")
    engine_path = MYSQL_ENGINES[engine] if vendor == "mysql" else ENGINES[engine, gis]
    # Django clones MySQL test databases (one per process) with ``mysqldump | mysql``.
    tools = ("mysqldump", "mysql") if vendor == "mysql" and parallel > 1 else ()
    if missing := [tool for tool in tools if shutil.which(tool) is None]:
        raise RuntimeError(
            f"parallel={parallel} needs {' and '.join(missing)} on PATH (Django's MySQL "
            "backend clones the test databases with them): install the MariaDB client, "
            "or run with parallel=1"
        )
    modules = tuple(modules or (GIS_MODULES if gis else DEFAULT_MODULES))
    source = source or django_source()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="lido-django-suite-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    label = f"{engine}/{driver}" + ("/gis" if gis else "") + ("/gevent" if gevent else "")
    log_path = log_dir / f"{label.replace('/', '-')}.log"

    options: dict[str, Any] = {}
    if engine == "lido":
        options["pool"] = dict(DEFAULT_POOL_OPTIONS if pool_options is None else pool_options)
    prefix = f"djsuite_{engine}_{driver}" + ("_gis" if gis else "")
    databases = databases_setting(server, engine=engine_path, prefix=prefix, options=options)

    with tempfile.TemporaryDirectory(prefix="lido-django-settings-") as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(SITECUSTOMIZE)
        (Path(tmp) / "lido_suite_settings.py").write_text(settings_source(databases))
        env = dict(os.environ)
        if isinstance(server, PostgresServer):  # the developer's PG* settings are not for it
            env = {k: v for k, v in env.items() if not k.startswith("PG")}
        elif isinstance(server, MariaDBServer):  # nor MYSQL_PWD, MYSQL_HOST... (mysqldump)
            env = {k: v for k, v in env.items() if not k.startswith(("MYSQL_", "MARIADB_"))}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env[FORCE_PSYCOPG2_ENV] = "1" if driver == "psycopg2" else "0"
        env[FORCE_PYMYSQL_ENV] = "1" if driver == "pymysql" else "0"
        env[GEVENT_ENV] = "1" if gevent else "0"
        if importlib.util.find_spec(DRIVER_MODULES[driver]) is None:
            raise RuntimeError(
                f"driver {driver} requested but {DRIVER_MODULES[driver]} is not installed"
            )
        versions = _preflight(env, gis, vendor)
        if versions.pop("driver") != driver:
            raise RuntimeError(f"Django would not use {driver} in the suite's environment")

        argv = [
            sys.executable, "runtests.py", "--settings", "lido_suite_settings",
            "--parallel", str(parallel), "-v", "2", "--noinput", *extra_args, *modules,
        ]  # fmt: skip
        start = time.monotonic()
        with log_path.open("w") as log:
            log.write(f"# {' '.join(argv)}\n# cwd {source / 'tests'}\n")
            shown = {
                a: {**d, "PASSWORD": "***" if d["PASSWORD"] else ""} for a, d in databases.items()
            }
            log.write(f"# DATABASES = {json.dumps(shown)}\n")
            log.flush()
            proc = subprocess.Popen(
                argv, cwd=source / "tests", env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                returncode = proc.wait(timeout)
            except BaseException as exc:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker processes
                returncode = proc.wait()
                if not isinstance(exc, subprocess.TimeoutExpired):
                    raise
                log.write(f"\n# killed after {timeout:.0f} s\n")  # parsed as unfinished
        wall_time = time.monotonic() - start

    parsed = parse_output(log_path.read_bytes().decode(errors="replace"))  # keep \r as is
    if parsed.final is not None and returncode != (0 if parsed.final.startswith("OK") else 1):
        # e.g. killed, or destroying the test databases failed after the tests had run
        parsed.problems.append(f"the runner exited {returncode} after {parsed.final!r}")
    return SuiteResult(
        label=label,
        engine=engine_path,
        driver=driver,
        modules=modules,
        parsed=parsed,
        returncode=returncode,
        wall_time=wall_time,
        log_path=log_path,
        versions=versions,
    )
