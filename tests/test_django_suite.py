"""Django's own test suite as the acceptance test of our backends (slow), and the runner's
parser and comparison (fast).

The slow tests run ``tests/runtests.py`` from the sdist of the installed Django with the stock
ENGINE and with ours, per driver, and fail on any test that passed with stock but not with ours.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import unittest
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import django_suite as ds
from harness.mariadb import ExistingMariaDB, MariaDBServer, find_mariadb
from harness.servers import ExistingPostgres, PostgresServer

# -- the parser and the comparison (fast) ------------------------------------------------------


def _unittest_output() -> tuple[str, int]:
    """Real ``-v 2`` output of unittest for every kind of outcome, and how many tests ran."""

    def ok(self: unittest.TestCase) -> None:
        pass

    def documented(self: unittest.TestCase) -> None:
        """First docstring line.

        More text."""

    def fails(self: unittest.TestCase) -> None:
        self.fail("no")

    def errors(self: unittest.TestCase) -> None:
        raise RuntimeError("boom")

    def skipped(self: unittest.TestCase) -> None:
        self.skipTest("not here ... really")

    def subtests(self: unittest.TestCase) -> None:
        for i in range(3):
            with self.subTest(i=i):
                self.assertNotEqual(i, 1)
        with self.subTest("errs"):
            raise ValueError

    def class_setup_fails(cls: type) -> None:
        raise RuntimeError("setUpClass")

    def make(name: str, attrs: dict[str, object]) -> type[unittest.TestCase]:
        cls = type(name, (unittest.TestCase,), attrs)
        cls.__module__ = "sample.tests"
        cls.__qualname__ = name
        return cls

    main = make(
        "Main",
        {
            "test_ok": ok,
            "test_documented": documented,
            "test_fails": fails,
            "test_errors": errors,
            "test_skipped": skipped,
            # expectedFailure marks the function itself: give it copies.
            "test_xfail": unittest.expectedFailure(lambda self: self.fail("no")),
            "test_xpass": unittest.expectedFailure(lambda self: None),
            "test_subtests": subtests,
        },
    )
    broken = make("Broken", {"setUpClass": classmethod(class_setup_fails), "test_never": ok})
    suite = unittest.TestSuite()
    # Broken first: after an "expected failure" or "unexpected success" line unittest prints a
    # class fixture's error as a bare "ERROR" (it does not reset its newline flag there).
    for cls in (broken, main):
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(cls))
    stream = io.StringIO()
    result = unittest.TextTestRunner(stream=stream, verbosity=2).run(suite)
    return stream.getvalue(), result.testsRun


def test_parse_every_outcome() -> None:
    text, ran = _unittest_output()
    parsed = ds.parse_output(text)
    assert parsed.problems == [], text
    assert parsed.ran == ran == 8
    assert parsed.final is not None and parsed.final.startswith("FAILED")
    assert parsed.outcomes == {
        "sample.tests.Main.test_ok": "ok",
        "sample.tests.Main.test_documented": "ok",
        "sample.tests.Main.test_fails": "FAIL",
        "sample.tests.Main.test_errors": "ERROR",
        "sample.tests.Main.test_skipped": "skipped",
        "sample.tests.Main.test_xfail": "expected failure",
        "sample.tests.Main.test_xpass": "unexpected success",
        "sample.tests.Main.test_subtests": "ERROR",  # the worst of its failed subtests
    }
    assert parsed.fixture_errors == {"sample.tests.Broken.setUpClass": "ERROR"}


def test_parse_tolerates_printed_output() -> None:
    text, _ = _unittest_output()
    line = "test_ok (sample.tests.Main.test_ok) ... ok"
    for noisy in (
        "noise" + line,  # --parallel: a worker's output lands before the replayed line
        line.replace("... ok", "... noiseok"),  # --parallel 1: printed during the test
        line.replace("... ok", "... noise\nok"),
    ):
        parsed = ds.parse_output(text.replace(line, noisy))
        assert parsed.problems == [], noisy
        assert parsed.outcomes["sample.tests.Main.test_ok"] == "ok"


def test_parse_docstrings_with_odd_line_breaks() -> None:
    # Django's files.tests and i18n tests have \r and \f in their docstrings' first lines.
    text = (
        "test_a (m.C.test_a)\n#8149 - with \r line endings ... ok\n"
        "test_b (m.C.test_b)\nno leaky paths, e.g. path\foile.html ... ok\n\n"
        "Ran 2 tests in 0.0s\n\nOK\n"
    )
    parsed = ds.parse_output(text)
    assert parsed.problems == []
    assert parsed.outcomes == {"m.C.test_a": "ok", "m.C.test_b": "ok"}


def test_parse_flags_output_it_cannot_trust() -> None:
    text, _ = _unittest_output()
    lines = text.splitlines()
    dropped = "\n".join(line for line in lines if "test_ok " not in line)
    assert "parsed 7 tests but the runner ran 8" in ds.parse_output(dropped).problems
    truncated = "\n".join(lines[:5])
    assert any("did not finish" in p for p in ds.parse_output(truncated).problems)
    line = "test_ok (sample.tests.Main.test_ok) ... ok"
    lost = ds.parse_output(text.replace(line, line.replace("... ok", "... a\nb\nok")))
    assert any("without an outcome line" in p for p in lost.problems)
    assert ds.parse_output("").problems


def test_parse_parallel_teardown_error_goes_to_last_test() -> None:
    # Under --parallel Django replays a tearDownClass error against the class's last test.
    text = (
        "test_a (m.tests.C.test_a) ... ok\n"
        "test_b (m.tests.C.test_b) ... skipped 'x'\n"
        "test_b (m.tests.C.test_b) ... ERROR\n\n"
        "Ran 2 tests in 0.1s\n\nFAILED (errors=1, skipped=1)\n"
    )
    parsed = ds.parse_output(text)
    assert parsed.problems == []
    assert parsed.outcomes == {"m.tests.C.test_a": "ok", "m.tests.C.test_b": "ERROR"}


def test_compare() -> None:
    stock = {"a": "ok", "b": "ok", "c": "FAIL", "d": "skipped", "e": "ok", "f": "expected failure"}
    ours = {"a": "ok", "b": "ERROR", "c": "ok", "d": "skipped", "f": "expected failure"}
    result = ds.compare(stock, ours)
    assert result.regressions == {"b": ("ok", "ERROR")}
    assert result.missing == ["e"]
    assert result.fixed == ["c"]
    assert result.stock_not_passing == {"c": "FAIL"}
    assert not result.ok
    assert ds.compare(stock, stock).ok
    # A test our backend skips was not run, so it did not pass.
    assert ds.compare({"a": "ok"}, {"a": "skipped"}).regressions == {"a": ("ok", "skipped")}
    accepted = ds.compare(stock, ours, accepted={"b": "why", "e": "why not"})
    assert accepted.ok
    assert accepted.accepted == {"b": ("ok", "ERROR", "why"), "e": ("ok", "missing", "why not")}


def test_databases_setting_has_both_aliases() -> None:
    server = ExistingPostgres("postgresql://u:p%40ss@db.example:6543/x?sslmode=require")
    databases = ds.databases_setting(
        server, engine="django_lido.backends.postgresql", prefix="p", options={"pool": {}}
    )
    assert set(databases) == {"default", "other"}
    assert databases["default"]["NAME"] != databases["other"]["NAME"]
    assert databases["other"] == {
        "ENGINE": "django_lido.backends.postgresql",
        "NAME": "p_other",
        "HOST": "db.example",
        "PORT": "6543",
        "USER": "u",
        "PASSWORD": "p@ss",
        "OPTIONS": {"pool": {}, "sslmode": "require"},
    }


def test_databases_setting_for_mysql() -> None:
    server = ExistingMariaDB("mysql://u:p%40ss@db.example:3307/x")
    databases = ds.databases_setting(
        server, engine="django_lido.backends.mysql", prefix="m", options={"pool": {}}
    )
    assert databases["other"] == {
        "ENGINE": "django_lido.backends.mysql",
        "NAME": "m_other",
        "HOST": "db.example",
        "PORT": "3307",
        "USER": "u",
        "PASSWORD": "p@ss",
        "OPTIONS": {"pool": {}},
        "TEST": {"CHARSET": "utf8mb4"},
    }
    assert databases["default"]["NAME"] == "m"
    # An existing server's socket, when its URL names one, is Django's HOST.
    socket = ExistingMariaDB("mysql://root@localhost/x?unix_socket=/run/my.sock")
    entry = ds.databases_setting(socket, engine="e", prefix="m")["default"]
    assert (entry["HOST"], entry["PORT"]) == ("/run/my.sock", "")


def test_run_suite_refuses_a_driver_of_another_vendor(tmp_path: Path) -> None:
    mysql = ExistingMariaDB("mysql://root@127.0.0.1:3307/x")
    with pytest.raises(ValueError, match=r"one of \('mysqlclient', 'pymysql'\) for mysql"):
        ds.run_suite(mysql, driver="psycopg", source=tmp_path, log_dir=tmp_path)
    with pytest.raises(ValueError, match="PostgreSQL"):
        ds.run_suite(mysql, gis=True, source=tmp_path, log_dir=tmp_path)
    pg = ExistingPostgres("postgresql://u@127.0.0.1:5433/x")
    with pytest.raises(ValueError, match=r"one of \('psycopg', 'psycopg2'\) for postgresql"):
        ds.run_suite(pg, driver="pymysql", source=tmp_path, log_dir=tmp_path)


# -- the suite itself (slow) -------------------------------------------------------------------

# A missing prerequisite (Django, a driver, postgis, GDAL/GEOS, the MariaDB server) skips with
# the reason; anything else that goes wrong fails.


@pytest.fixture(scope="module")
def django_src() -> Path:
    if importlib.util.find_spec("django") is None:
        pytest.skip("Django is not installed")
    source = ds.django_source()
    ds.ensure_requirements()
    return source


@pytest.fixture(scope="module")
def suite_pg() -> Iterator[PostgresServer | ExistingPostgres]:
    """DATABASE_URL when set, else a throwaway cluster of this module's own."""
    with ds.suite_server(os.environ.get("DATABASE_URL")) as server:
        yield server


@pytest.fixture(scope="module")
def suite_maria() -> Iterator[MariaDBServer | ExistingMariaDB]:
    """MYSQL_URL when set, else a throwaway MariaDB of this module's own."""
    url = os.environ.get("MYSQL_URL")
    if not url:
        try:
            find_mariadb()
        except RuntimeError as exc:
            pytest.skip(f"no MariaDB server binaries: {exc}")
    with ds.suite_server(url, vendor="mysql") as server:
        yield server


def _need_driver(driver: str) -> None:
    module = ds.DRIVER_MODULES[driver]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"driver {driver} ({module}) is not installed in {sys.prefix}")


def _run_both(
    server: ds.AnyServer,
    source: Path,
    log_dir: Path,
    *,
    driver: str,
    gis: bool = False,
    gevent: bool = False,
) -> None:
    results = {}
    for engine in ("stock", "lido"):
        result = ds.run_suite(
            server, engine=engine, driver=driver, gis=gis, source=source, log_dir=log_dir,
            gevent=gevent, parallel=1 if gevent else 2,
        )  # fmt: skip
        print(result.summary())
        assert not result.problems, f"cannot trust the parse of {result.log_path}"
        results[engine] = result
    comparison = ds.compare(results["stock"], results["lido"], ds.ACCEPTED_DIFFERENCES)
    print(comparison.report())
    assert comparison.ok, comparison.report()
    assert len(results["stock"].outcomes) > 0
    assert results["stock"].counts()["ok"] > 0, "no test passed with the stock backend"


@pytest.mark.parametrize("driver", ds.DRIVERS)
@pytest.mark.slow
@pytest.mark.django_suite
def test_django_suite_no_regression(
    driver: str,
    suite_pg: PostgresServer | ExistingPostgres,
    django_src: Path,
    tmp_path: Path,
) -> None:
    _need_driver(driver)
    _run_both(suite_pg, django_src, tmp_path, driver=driver)


@pytest.mark.slow
@pytest.mark.django_suite
def test_django_suite_under_gevent_no_regression(
    suite_pg: PostgresServer | ExistingPostgres,
    django_src: Path,
    tmp_path: Path,
) -> None:
    """The gevent worker model: every process patched by ``patch_all()`` first, on psycopg
    3 (gevent-aware), in one process (Django's parallel runner hangs in a patched process,
    with the stock backend too). With Django 5.2 two tests of ``basic`` (``asave`` with
    positional arguments) fail with stock too: ``sync_to_async`` runs in a greenlet of the event
    loop's own thread, which Django refuses (``SynchronousOnlyOperation``); compare() does
    not count them."""
    pytest.importorskip("gevent")
    _need_driver("psycopg")
    _run_both(suite_pg, django_src, tmp_path, driver="psycopg", gevent=True)


@pytest.mark.parametrize("driver", ds.DRIVERS)
@pytest.mark.slow
@pytest.mark.django_suite
def test_django_gis_suite_no_regression(
    driver: str,
    suite_pg: PostgresServer | ExistingPostgres,
    django_src: Path,
    tmp_path: Path,
) -> None:
    _need_driver(driver)
    if missing := ds.gis_prerequisites(suite_pg):
        pytest.skip(f"gis_tests cannot run: {missing}")
    _run_both(suite_pg, django_src, tmp_path, driver=driver, gis=True)


@pytest.mark.parametrize("driver", ds.MYSQL_DRIVERS)
@pytest.mark.slow
@pytest.mark.django_suite
def test_django_mysql_suite_no_regression(
    driver: str,
    suite_maria: MariaDBServer | ExistingMariaDB,
    django_src: Path,
    tmp_path: Path,
) -> None:
    # With PyMySQL one of Django's tests fails with stock too (SchemaEditorTests.
    # test_quote_value); compare() does not count what did not pass with stock.
    _need_driver(driver)
    _run_both(suite_maria, django_src, tmp_path, driver=driver)
