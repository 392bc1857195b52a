"""Django's own test suite as an acceptance test for our database backends.

The suite is taken from the sdist of the *installed* Django (downloaded once into a cache),
run with ``tests/runtests.py`` against a throwaway PostgreSQL or MariaDB (or an existing
server), once with Django's stock ENGINE and once with ours; every test that passes with the
stock backend must pass with ours. Per-test outcomes are parsed from the ``-v 2`` output and
cross-checked against the final ``Ran N tests`` / ``OK`` / ``FAILED`` lines, so a broken parse
cannot pass.

Run ``python -m harness.django_suite --help`` for the command line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.mariadb import ExistingMariaDB, MariaDBServer
from harness.servers import ExistingPostgres, PostgresServer

__all__ = [
    "ACCEPTED_DIFFERENCES",
    "DEFAULT_MODULES",
    "DRIVER_MODULES",
    "GIS_MODULES",
    "MYSQL_DRIVERS",
    "VENDORS",
    "Comparison",
    "SuiteResult",
    "compare",
    "django_source",
    "ensure_requirements",
    "gis_prerequisites",
    "main",
    "parse_output",
    "postgis_available",
    "run_suite",
    "server_vendor",
    "suite_server",
]

DEFAULT_MODULES = (
    "backends",
    "transactions",
    "transaction_hooks",
    "select_for_update",
    "queries",
    "basic",
)
GIS_MODULES = ("gis_tests",)
VENDORS = ("postgresql", "mysql")
DRIVERS = ("psycopg", "psycopg2")  # PostgreSQL's
MYSQL_DRIVERS = ("mysqlclient", "pymysql")
VENDOR_DRIVERS = {"postgresql": DRIVERS, "mysql": MYSQL_DRIVERS}  # the first is the default
# The module each driver is imported as (PyMySQL is made Django's MySQLdb by sitecustomize).
DRIVER_MODULES = {
    "psycopg": "psycopg",
    "psycopg2": "psycopg2",
    "mysqlclient": "MySQLdb",
    "pymysql": "pymysql",
}
ENGINES = {
    ("stock", False): "django.db.backends.postgresql",
    ("stock", True): "django.contrib.gis.db.backends.postgis",
    ("lido", False): "django_lido.backends.postgresql",
    ("lido", True): "django_lido.backends.postgis",
}
MYSQL_ENGINES = {"stock": "django.db.backends.mysql", "lido": "django_lido.backends.mysql"}
DEFAULT_POOL_OPTIONS: dict[str, Any] = {"max_size": 4}
DEFAULT_TIMEOUT = 3600.0
FORCE_PSYCOPG2_ENV = "LIDO_FORCE_PSYCOPG2"
FORCE_PYMYSQL_ENV = "LIDO_FORCE_PYMYSQL"

# Outcomes as unittest prints them at -v 2 ("skipped 'reason'" is shortened to "skipped").
OUTCOMES = ("ok", "FAIL", "ERROR", "skipped", "expected failure", "unexpected success")
PASSED = frozenset({"ok", "expected failure"})
UNKNOWN = "unknown"  # a test was started but no outcome line was found
# unittest reports errors in class/module fixtures under these pseudo test names.
FIXTURE_NAMES = frozenset({"setUpClass", "tearDownClass", "setUpModule", "tearDownModule"})
# Tests (ids "module.Class.test") that may pass with stock but not with ours, each with the
# reason the difference is intended; every entry is a documented divergence, so keep it short.
# Tests of Django's whose subject is a behaviour of Django's native pool that our backends
# change on purpose (docs/django.md), or that cannot run under another ENGINE path.
_PG = "backends.postgresql.tests.Tests."
ACCEPTED_DIFFERENCES: dict[str, str] = {
    "gis_tests.inspectapp.tests.OGRInspectTest.test_time_field": (
        "the test maps only Django's own ENGINE paths to a GDAL/OGR driver and skips otherwise"
    ),
    _PG + "test_pooling_not_support_persistent_connections": (
        "Django's native pool refuses CONN_MAX_AGE; ours gives it a meaning (how long a thread "
        "keeps its pooled connection across requests)"
    ),
    _PG + "test_connect_pool_setting_ignored_for_psycopg2": (
        "Django's native pool refuses psycopg2; ours pools psycopg2 too"
    ),
    _PG + "test_pooling_health_checks": (
        "reads psycopg_pool's private ConnectionPool._check; our pool probes every checkout"
    ),
    _PG + "test_pool_check_can_be_overridden": (
        "reads psycopg_pool's private ConnectionPool._check (our pool takes the same `check` "
        "option, tested in tests/test_django_backend.py)"
    ),
}
# Test requirements (import name -> pip requirement) installed only when missing.
REQUIREMENTS = {"tblib": "tblib>=3.0.0"}  # pickles tracebacks of failures under --parallel

_SITECUSTOMIZE = f"""\
# Written by harness.django_suite: Django imports psycopg (3) when it can, so
# hiding it is the only way to run Django on psycopg2 while psycopg is installed. Django's
# MySQL backend imports MySQLdb, which PyMySQL can stand in for.
import os
import sys

if os.environ.get({FORCE_PSYCOPG2_ENV!r}) == "1":
    sys.modules["psycopg"] = None
if os.environ.get({FORCE_PYMYSQL_ENV!r}) == "1":
    import pymysql

    pymysql.install_as_MySQLdb()
"""

_PREFLIGHT = """\
import json, sys
import django
info = {"django": django.__version__, "python": sys.version.split()[0]}
if "--mysql" in sys.argv:
    from django.db.backends.mysql.base import Database
    # "MySQLdb" (mysqlclient), or "pymysql" after pymysql.install_as_MySQLdb()
    info["driver"] = {"MySQLdb": "mysqlclient"}.get(Database.__name__, Database.__name__)
else:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3
    info["driver"] = "psycopg" if is_psycopg3 else "psycopg2"
if "--gis" in sys.argv:
    from django.conf import settings
    settings.configure()
    from django.contrib.gis.gdal import gdal_version
    from django.contrib.gis.geos import geos_version
    info["gdal"] = gdal_version().decode()
    info["geos"] = geos_version().decode()
print(json.dumps(info))
"""


# -- the Django source -------------------------------------------------------------------------


def installed_django_version() -> str:
    import django

    return django.__version__


def django_source(version: str | None = None) -> Path:
    """The extracted sdist of Django ``version`` (default: the installed one).

    ``$LIDO_DJANGO_SRC`` may name an extracted Django tree (with ``tests/runtests.py``) to use
    as is, or the cache root in place of ``~/.cache/django-lido/django-src``; the sdist goes
    into ``<root>/<version>/`` and is reused once extracted.
    """
    version = version or installed_django_version()
    override = os.environ.get("LIDO_DJANGO_SRC")
    if override and (Path(override) / "tests" / "runtests.py").is_file():
        return Path(override)
    root = Path(override) if override else Path.home() / ".cache" / "django-lido" / "django-src"
    cache = root / version
    target = cache / f"django-{version}"
    if (target / "tests" / "runtests.py").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    archives = list(cache.glob("[Dd]jango-*.tar.gz"))
    if not archives:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-d", str(cache), f"django=={version}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        archives = list(cache.glob("[Dd]jango-*.tar.gz"))
        if proc.returncode != 0 or len(archives) != 1:
            raise RuntimeError(
                f"pip download of the Django {version} sdist failed (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache))
    try:
        with tarfile.open(archives[0]) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # pragma: no cover - Python without PEP 706 backports
                tar.extractall(staging)
        tops = [p for p in staging.iterdir() if (p / "tests" / "runtests.py").is_file()]
        if len(tops) != 1:
            raise RuntimeError(f"{archives[0]} does not hold one Django tree with tests/")
        with contextlib.suppress(OSError):  # another process may have won the race
            tops[0].rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (target / "tests" / "runtests.py").is_file():
        raise RuntimeError(f"extracting {archives[0]} did not produce {target}/tests")
    return target


def ensure_requirements() -> list[str]:
    """Install the few test requirements the suite needs if missing (with pip, into this
    interpreter's environment; the same for every module list); returns what was installed.
    Optional ones (numpy, PIL, geoip2, ...) are left out: Django skips the tests that need
    them, stock and ours."""
    missing = [req for mod, req in REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *missing],
            check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return missing


# -- servers -----------------------------------------------------------------------------------

Server = PostgresServer | ExistingPostgres
MySQLServer = MariaDBServer | ExistingMariaDB
AnyServer = Server | MySQLServer


def server_vendor(server: AnyServer) -> str:
    """``"mysql"`` for a MariaDB server, else ``"postgresql"``."""
    return "mysql" if isinstance(server, (MariaDBServer, ExistingMariaDB)) else "postgresql"


@contextlib.contextmanager
def suite_server(
    database_url: str | None = None, vendor: str = "postgresql"
) -> Iterator[AnyServer]:
    """An existing server from ``database_url`` (``postgresql://`` or ``mysql://``), else a
    throwaway PostgreSQL cluster or MariaDB server for ``vendor`` (removed on exit)."""
    if vendor not in VENDORS:
        raise ValueError(f"vendor must be one of {VENDORS}, got {vendor!r}")
    if database_url:
        yield ExistingMariaDB(database_url) if vendor == "mysql" else ExistingPostgres(database_url)
        return
    throwaway = MariaDBServer() if vendor == "mysql" else PostgresServer()
    with throwaway as server:
        yield server


def postgis_available(server: Server) -> bool:
    """Whether the server can ``CREATE EXTENSION postgis`` (its extension files exist)."""
    rows = server.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'")
    return bool(rows)


def gis_prerequisites(server: Server) -> str | None:
    """Why ``gis_tests`` cannot run here (postgis extension or GDAL/GEOS libraries missing),
    or None when they can."""
    if not postgis_available(server):
        return f"the postgis extension is not available on {server!r}"
    proc = subprocess.run(
        [sys.executable, "-c", _PREFLIGHT, "--gis"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return f"Django cannot load GDAL/GEOS: {lines[-1] if lines else proc.returncode}"
    return None


# -- parsing -----------------------------------------------------------------------------------

# -v 2 lines: "test_x (mod.Class.test_x) ... <outcome>", with the first docstring line, if any,
# on a line of its own before " ... <outcome>"; a failed subtest adds "  test_x (mod.Class.test_x)
# [msg] (i=1) ... FAIL", an error in a class fixture "setUpClass (mod.Class) ... ERROR". What a
# test prints may end up before a line (--parallel) or before the outcome (--parallel 1).
_STATUS_WORDS = r"ok|FAIL|ERROR|skipped(?: .*)?|expected failure|unexpected success"
_HEAD = re.compile(r"(?P<sub>^  )?(?P<name>\w+) \((?P<paren>\w+(?:\.\w+)+)\)(?P<rest>.*)$")
_STATUS = re.compile(rf" \.\.\. .*?(?P<status>{_STATUS_WORDS})$")
_BARE_STATUS = re.compile(rf"^(?P<status>{_STATUS_WORDS})$")
_ERRORS_SECTION = re.compile(r"^={70}$", re.M)
_RAN = re.compile(r"^Ran (\d+) tests? in [\d.]+s$", re.M)
_FINAL = re.compile(r"^(OK|FAILED)(?: \((.*)\))?$", re.M)
_FINAL_KEYS = {
    "failures": "FAIL",
    "errors": "ERROR",
    "skipped": "skipped",
    "expected failures": "expected failure",
    "unexpected successes": "unexpected success",
}
_SEVERITY = {
    UNKNOWN: 0,
    "ok": 1,
    "skipped": 1,
    "expected failure": 1,
    "unexpected success": 2,
    "FAIL": 3,
    "ERROR": 4,
}


@dataclasses.dataclass
class ParsedOutput:
    """What ``parse_output`` found: outcome per test id and the runner's own totals."""

    outcomes: dict[str, str]  # "mod.Class.test_x" -> one of OUTCOMES or UNKNOWN
    fixture_errors: dict[str, str]  # "mod.Class.setUpClass" -> "ERROR"
    ran: int | None  # from "Ran N tests"
    final: str | None  # "OK (skipped=3)" / "FAILED (errors=1)"
    totals: dict[str, int]  # the numbers in the final line, keyed like OUTCOMES
    problems: list[str]  # inconsistencies: a non-empty list means the parse cannot be trusted


def _test_id(name: str, paren: str) -> tuple[str, bool] | None:
    """(id, is_fixture) for the ``name (paren)`` of a -v 2 line (``name`` may carry printed
    noise in front), or None if it is no test line."""
    if name.endswith(paren.rpartition(".")[2]):
        return paren, False
    fixture = next((f for f in FIXTURE_NAMES if name.endswith(f)), None)
    return (f"{paren}.{fixture}", True) if fixture else None


def parse_output(text: str) -> ParsedOutput:
    """Parse the ``-v 2`` output of ``runtests.py`` (``--parallel`` or not)."""
    outcomes: dict[str, str] = {}
    fixtures: dict[str, str] = {}
    problems: list[str] = []
    pending: str | None = None  # a test whose docstring line (and outcome) comes next
    seen: collections.Counter[str] = collections.Counter()  # outcome lines, not per test

    def record(test_id: str, status: str, fixture: bool, subtest: bool = False) -> None:
        status = "skipped" if status.startswith("skipped") else status
        if not subtest:
            seen[status] += 1
        target = fixtures if fixture else outcomes
        # The worst outcome wins: failed subtests follow their test's line, and under
        # --parallel an error in tearDownClass is reported against the class's last test.
        if _SEVERITY[status] > _SEVERITY[target.get(test_id, UNKNOWN)]:
            target[test_id] = status

    ran_matches = list(_RAN.finditer(text))
    end = ran_matches[-1].start() if ran_matches else len(text)
    errors_section = _ERRORS_SECTION.search(text, 0, end)  # tracebacks of failures from here on
    # split("\n"), not splitlines(): docstrings may hold \r or \f (files.tests has both)
    for line in text[: errors_section.start() if errors_section else end].split("\n"):
        head = _HEAD.search(line)
        found = _test_id(head["name"], head["paren"]) if head else None
        if found is None:
            if pending is not None:
                status = _STATUS.search(line) or _BARE_STATUS.match(line)
                if status:
                    record(pending, status["status"], False)
                pending = None
            continue
        pending = None
        test_id, fixture = found
        rest = head["rest"]
        if status := _STATUS.search(rest):
            record(test_id, status["status"], fixture, subtest=bool(head["sub"]))
        elif not head["sub"] and not fixture and (rest == "" or rest.startswith(" ... ")):
            outcomes.setdefault(test_id, UNKNOWN)
            pending = test_id  # the outcome follows a docstring line or printed output

    ran = int(ran_matches[-1][1]) if ran_matches else None
    finals = list(_FINAL.finditer(text))
    final = finals[-1].group(0) if finals else None
    totals = dict.fromkeys(OUTCOMES[1:], 0)
    if finals and finals[-1][2]:
        for part in finals[-1][2].split(", "):
            key, _, value = part.partition("=")
            if key in _FINAL_KEYS and value.isdigit():
                totals[_FINAL_KEYS[key]] = int(value)

    counts = collections.Counter(outcomes.values())
    if ran is None or final is None:
        problems.append("no 'Ran N tests' and OK/FAILED lines: the run did not finish")
    elif ran != len(outcomes):
        problems.append(f"parsed {len(outcomes)} tests but the runner ran {ran}")
    if counts[UNKNOWN]:
        unknown = sorted(t for t, o in outcomes.items() if o == UNKNOWN)
        problems.append(f"{len(unknown)} tests without an outcome line, e.g. {unknown[:3]}")
    if final is not None:
        for outcome in ("skipped", "expected failure", "unexpected success"):
            if seen[outcome] != totals[outcome]:
                problems.append(
                    f"parsed {seen[outcome]} {outcome!r} but the runner reports {totals[outcome]}"
                )
        # Failed subtests each count as a failure, so only check these loosely.
        bad = counts["FAIL"] + counts["ERROR"] + len(fixtures)
        reported = totals["FAIL"] + totals["ERROR"]
        if (bad == 0) != (reported == 0) or bad > reported:
            problems.append(f"parsed {bad} failed/errored tests but the runner reports {reported}")
    return ParsedOutput(outcomes, fixtures, ran, final, totals, problems)


# -- running -----------------------------------------------------------------------------------


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
        return text


def _settings_source(databases: Mapping[str, Any]) -> str:
    return (
        "# Written by harness.django_suite.\n"
        "# The suite's own defaults (SECRET_KEY, PASSWORD_HASHERS, DEFAULT_AUTO_FIELD where the\n"
        "# version sets it, USE_TZ) come from tests/test_sqlite.py of the same sdist.\n"
        "from test_sqlite import *  # noqa: F403\n\n"
        f"DATABASES = {json.dumps(databases, indent=4)}\n"
    )


def databases_setting(
    server: AnyServer,
    *,
    engine: str,
    prefix: str,
    options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """``DATABASES`` with the ``default`` and ``other`` aliases the suite needs; the test
    databases are ``test_<prefix>`` and ``test_<prefix>_other`` (plus clones per process).

    A throwaway server is reached over TCP; an existing MariaDB over its Unix socket when
    its URL names one (``?unix_socket=``)."""
    if isinstance(server, (MariaDBServer, ExistingMariaDB)):
        my = server.conn_params(tcp=isinstance(server, MariaDBServer))
        entry = {
            "ENGINE": engine,
            "HOST": my["HOST"],
            "PORT": my["PORT"],
            "USER": my["USER"],
            "PASSWORD": my["PASSWORD"],
            "OPTIONS": dict(options or {}),
            # Django's MySQL tests expect 4-byte UTF-8 whatever the server's default.
            "TEST": {"CHARSET": "utf8mb4"},
        }
        return {
            "default": {**entry, "NAME": prefix},
            "other": {**entry, "NAME": f"{prefix}_other"},
        }
    params = server._conn_params(dbname=None, tcp=True)
    base = {
        "ENGINE": engine,
        "HOST": params["host"],
        "PORT": params["port"],
        "USER": params["user"],
        "PASSWORD": params.get("password", ""),
        "OPTIONS": dict(options or {}),
    }
    # Keywords from the URL's query (sslmode, ...) go to the driver as they are.
    base["OPTIONS"].update(
        {k: v for k, v in params.items() if k not in ("host", "port", "user", "password", "dbname")}
    )
    return {
        "default": {**base, "NAME": prefix},
        "other": {**base, "NAME": f"{prefix}_other"},
    }


def _preflight(env: Mapping[str, str], gis: bool, vendor: str = "postgresql") -> dict[str, str]:
    flags = [*(["--gis"] if gis else []), *(["--mysql"] if vendor == "mysql" else [])]
    argv = [sys.executable, "-c", _PREFLIGHT, *flags]
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
) -> SuiteResult:
    """Run ``tests/runtests.py`` for ``modules`` with ``engine`` ("stock" or "lido") on
    ``driver`` and parse every test's outcome.

    The server's vendor decides the ENGINEs and drivers: PostgreSQL with "psycopg" (default)
    or "psycopg2", MariaDB/MySQL with "mysqlclient" (default) or "pymysql" (made Django's
    ``MySQLdb`` with ``pymysql.install_as_MySQLdb()``); ``gis`` is PostgreSQL's only.
    ``pool_options`` is ``OPTIONS["pool"]`` for our ENGINE (default ``{"max_size": 4}``).
    The output goes to ``<log_dir>/<engine>-<driver>[-gis].log``.
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
    label = f"{engine}/{driver}" + ("/gis" if gis else "")
    log_path = log_dir / f"{label.replace('/', '-')}.log"

    options: dict[str, Any] = {}
    if engine == "lido":
        options["pool"] = dict(DEFAULT_POOL_OPTIONS if pool_options is None else pool_options)
    prefix = f"djsuite_{engine}_{driver}" + ("_gis" if gis else "")
    databases = databases_setting(server, engine=engine_path, prefix=prefix, options=options)

    with tempfile.TemporaryDirectory(prefix="lido-django-settings-") as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        (Path(tmp) / "lido_suite_settings.py").write_text(_settings_source(databases))
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


# -- comparing ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Comparison:
    """How ours fared on the tests that passed with the stock backend."""

    regressions: dict[str, tuple[str, str]]  # test id -> (stock outcome, our outcome)
    missing: list[str]  # passed with stock, absent from our run
    fixed: list[str]  # did not pass with stock, passed with ours (informational)
    stock_not_passing: dict[str, str]  # not counted against ours
    accepted: dict[str, tuple[str, str, str]]  # accepted differences: (stock, ours, reason)

    @property
    def ok(self) -> bool:
        return not self.regressions and not self.missing

    def report(self) -> str:
        lines = [
            f"regressions: {len(self.regressions)}, missing: {len(self.missing)}, "
            f"not passing with stock (ignored): {len(self.stock_not_passing)}, "
            f"passing only with ours: {len(self.fixed)}"
        ]
        lines += [
            f"  REGRESSION {t}: stock {s}, ours {o}" for t, (s, o) in self.regressions.items()
        ]
        lines += [f"  MISSING {t}" for t in self.missing]
        lines += [
            f"  accepted {t}: stock {s}, ours {o} ({r})" for t, (s, o, r) in self.accepted.items()
        ]
        lines += [f"  stock {o}: {t}" for t, o in self.stock_not_passing.items()]
        return "\n".join(lines)


def _outcomes(result: SuiteResult | Mapping[str, str]) -> Mapping[str, str]:
    return result.outcomes if isinstance(result, SuiteResult) else result


def compare(
    stock_results: SuiteResult | Mapping[str, str],
    ours_results: SuiteResult | Mapping[str, str],
    accepted: Mapping[str, str] | None = None,
) -> Comparison:
    """Tests that passed (ok or expected failure) with stock but not with ours (a skip counts
    as not passing), and those missing from our run. ``accepted`` maps test ids whose
    difference is intended to the reason; they are reported but are no regressions."""
    stock, ours = _outcomes(stock_results), _outcomes(ours_results)
    accepted = accepted or {}
    regressions, missing, accepted_diffs = {}, [], {}
    for test, outcome in sorted(stock.items()):
        if outcome not in PASSED or ours.get(test) in PASSED:
            continue
        if test in accepted:
            accepted_diffs[test] = (outcome, ours.get(test, "missing"), accepted[test])
        elif test not in ours:
            missing.append(test)
        else:
            regressions[test] = (outcome, ours[test])
    fixed = sorted(t for t, o in ours.items() if o in PASSED and stock.get(t, "") not in PASSED)
    not_passing = {t: o for t, o in sorted(stock.items()) if o not in PASSED and o != "skipped"}
    return Comparison(regressions, missing, fixed, not_passing, accepted_diffs)


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
                source=source, timeout=args.timeout,
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
