"""Throwaway MariaDB servers for tests (and ``ExistingMariaDB`` for a ``MYSQL_URL``).

``MariaDBServer`` runs Debian's ``mariadbd`` with ``--no-defaults`` in a fresh temp dir, on a
free port on 127.0.0.1 and its own Unix socket, so the machine's MariaDB service (port 3306,
/run/mysqld) is never touched. ``root`` has no password and is reachable over TCP from
127.0.0.1 and over the socket; grant tables are real (no ``--skip-grant-tables``).

The admin helpers use PyMySQL when installed, else mysqlclient (``MySQLdb``).
"""

from __future__ import annotations

import abc
import atexit
import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import ModuleType
from typing import Any

from ._spawn import SpawnedServer
from .servers import ExistingServer, _base_tempdir, find_or_install, free_port

__all__ = [
    "ExistingMariaDB",
    "MariaDBServer",
    "find_mariadb",
    "mariadb_for_tests",
    "mariadb_version",
]

DRIVERS = ("pymysql", "MySQLdb")
STOP_MODES = ("smart", "fast", "immediate")
# Options that shape the data directory: used for the template and for every server started
# from a copy of it (a different InnoDB log size would be rebuilt at each start).
INIT_OPTIONS = ("--innodb-log-file-size=8M",)
# mariadb-install-db also creates root@<hostname>, useless with --skip-name-resolve (and
# warned about at every start).
_INIT_SQL = """
DELETE FROM mysql.global_priv WHERE host NOT IN ('localhost', '127.0.0.1', '::1');
DELETE FROM mysql.proxies_priv WHERE host NOT IN ('localhost', '127.0.0.1', '::1');
"""

_templates: dict[tuple[str, str | None], Path] = {}


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if found:
            return found
    return None


def _find_both() -> tuple[str, str] | None:
    server = _find(("mariadbd", "mysqld"))
    install = _find(("mariadb-install-db", "mysql_install_db"))
    return (server, install) if server and install else None


@functools.cache  # only successful lookups are cached; a failure is retried next call
def find_mariadb() -> tuple[str, str]:
    """Paths of ``mariadbd`` and ``mariadb-install-db``; installs ``mariadb-server`` with apt
    as root if missing (Debian then also starts its own service, which we leave alone)."""
    return find_or_install(
        _find_both,
        "mariadb-server",
        "mariadbd/mariadb-install-db not found; install them (Debian/Ubuntu: apt-get install "
        "mariadb-server) or set MYSQL_URL to use an existing server",
    )


@functools.cache
def mariadb_version() -> tuple[int, ...]:
    """The server's version, e.g. ``(10, 11, 19)``, from ``mariadbd --version``."""
    out = subprocess.run(
        [find_mariadb()[0], "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Ver (\d+(?:\.\d+)+)", out)
    if match is None:
        raise RuntimeError(f"cannot parse the output of mariadbd --version: {out!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _driver(name: str | None = None) -> ModuleType:
    """The DB-API module to use: ``name`` if given, else PyMySQL, else mysqlclient."""
    import importlib

    for candidate in (name,) if name else DRIVERS:
        try:
            return importlib.import_module(candidate)
        except ImportError:
            if name:
                raise
    raise RuntimeError("no MySQL driver: pip install pymysql (or mysqlclient)")


def _quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class _MariaDBClient(abc.ABC):
    """Admin helpers shared by throwaway and existing MariaDB servers."""

    host: str  # TCP host
    port: int
    user: str
    password: str | None
    unix_socket: str | None
    dbname: str | None

    def connect_kwargs(self, dbname: str | None = None, *, tcp: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``pymysql.connect`` / ``MySQLdb.connect``."""
        kwargs: dict[str, Any] = {"user": self.user, "port": self.port}
        if tcp or self.unix_socket is None:
            kwargs["host"] = self.host
        else:  # mysqlclient takes the socket only with host "localhost"
            kwargs.update(host="localhost", unix_socket=self.unix_socket)
        if self.password is not None:
            kwargs["password"] = self.password
        if dbname or self.dbname:
            kwargs["database"] = dbname or self.dbname
        return kwargs

    def connect(
        self, dbname: str | None = None, *, tcp: bool = False, driver: str | None = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        """A new DB-API connection (``driver``: "pymysql" or "MySQLdb"; default: either)."""
        params = {"connect_timeout": 10, **self.connect_kwargs(dbname, tcp=tcp), **kwargs}
        return _driver(driver).connect(**params)

    def conn_params(self, dbname: str | None = None, *, tcp: bool = False) -> dict[str, Any]:
        """Connection keys of a Django ``DATABASES`` entry (a HOST starting with "/" is the
        Unix socket, as Django's MySQL backend expects)."""
        use_socket = not tcp and self.unix_socket is not None
        return {
            "NAME": dbname or self.dbname or "",
            "USER": self.user,
            "PASSWORD": self.password or "",
            "HOST": self.unix_socket if use_socket else self.host,
            "PORT": "" if use_socket else str(self.port),
        }

    def url(self, dbname: str | None = None, *, tcp: bool = False) -> str:
        """``mysql://`` URL (the socket as ``?unix_socket=``), as ``ExistingMariaDB`` reads."""
        q = functools.partial(urllib.parse.quote, safe="")
        userinfo = q(self.user) + (f":{q(self.password)}" if self.password else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"mysql://{userinfo}@{host}:{self.port}/{q(dbname or self.dbname or '')}"
        if not tcp and self.unix_socket is not None:
            url += "?" + urllib.parse.urlencode({"unix_socket": self.unix_socket})
        return url

    def execute(
        self, sql: str, params: Any = None, *, dbname: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh autocommit connection; returns the rows (or [])."""
        conn = self.connect(dbname, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description is not None else []
        finally:
            conn.close()

    def _client_threads(self, user: str | None, database: str | None) -> tuple[str, list[Any]]:
        sql = (
            "FROM information_schema.processlist WHERE id <> CONNECTION_ID()"
            " AND command NOT IN ('Daemon', 'Binlog Dump', 'Killed')"
            " AND user NOT IN ('system user', 'event_scheduler', 'unauthenticated user')"
        )
        params: list[Any] = []
        if user is not None:
            sql += " AND user = %s"
            params.append(user)
        if database is not None:
            sql += " AND db = %s"
            params.append(database)
        return sql, params

    def connection_count(self, *, user: str | None = None, database: str | None = None) -> int:
        """Client connections (excluding the querying one), optionally of one user/database."""
        sql, params = self._client_threads(user, database)
        return self.execute(f"SELECT count(*) {sql}", params)[0][0]

    def kill_connections(self, *, user: str | None = None, database: str | None = None) -> int:
        """``KILL CONNECTION`` client connections (optionally of one user/database) and wait up
        to 5 s for them to end. Returns how many were killed."""
        sql, params = self._client_threads(user, database)
        conn = self.connect(autocommit=True)
        killed = 0
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT id {sql}", params)
                for (thread_id,) in cur.fetchall():
                    try:
                        cur.execute(f"KILL CONNECTION {int(thread_id)}")
                        killed += 1
                    except Exception as exc:
                        if exc.args[:1] != (1094,):  # "Unknown thread id": it ended meanwhile
                            raise
                deadline = time.monotonic() + 5.0
                while True:
                    cur.execute(f"SELECT count(*) {sql}", params)
                    if cur.fetchone()[0] == 0 or time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        finally:
            conn.close()
        return killed

    def create_database(self, name: str) -> None:
        self.execute(f"CREATE DATABASE {_quote_ident(name)} CHARACTER SET utf8mb4")


class MariaDBServer(_MariaDBClient, SpawnedServer):
    """A throwaway MariaDB server: temp dir, free port on 127.0.0.1, socket in the temp dir.

    ``wait_timeout`` (seconds, also applied as ``interactive_timeout``) closes idle client
    connections; ``settings`` adds ``mariadbd`` options, e.g. ``{"sql_mode": "ANSI"}``.
    """

    engine = "mariadb"
    os_users = ("mysql",)
    fallback_os_user = "lido-mysql"

    def __init__(
        self,
        *,
        wait_timeout: int | None = None,
        max_connections: int = 200,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.mariadbd, self.install_db = find_mariadb()
        self.version = mariadb_version()
        self.user = "root"
        self.password = None
        self.dbname = None
        self.wait_timeout = wait_timeout
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self._launched = False
        super().__init__()
        self.host = "127.0.0.1"
        self.unix_socket = str(self.tmpdir / "mysqld.sock")
        self.datadir = self.tmpdir / "data"

    @property
    def logfile(self) -> Path:
        return self.tmpdir / "mariadb.log"

    def _initialize(self) -> None:
        # mariadb-install-db costs ~0.4 s; run it once per process and copy the result.
        key = (self.mariadbd, self.os_user)
        template = _templates.get(key)
        if template is None or not template.exists():
            tdir = Path(tempfile.mkdtemp(prefix="lido-mariadb-template-", dir=_base_tempdir()))
            atexit.register(shutil.rmtree, tdir, ignore_errors=True)
            self._chown(tdir)
            (tdir / "init.sql").write_text(_INIT_SQL)
            (tdir / "init.sql").chmod(0o644)
            template = tdir / "data"
            self._run(
                [self.install_db, "--no-defaults", f"--datadir={template}",
                 "--auth-root-authentication-method=normal", "--skip-test-db",
                 "--skip-name-resolve", f"--extra-file={tdir / 'init.sql'}", *INIT_OPTIONS],
                "mariadb-install-db",
            )  # fmt: skip
            _templates[key] = template
        subprocess.run(["cp", "-a", str(template), str(self.datadir)], check=True)

    def _server_argv(self) -> list[str]:
        options: dict[str, Any] = {
            "datadir": self.datadir,
            "tmpdir": self.tmpdir,
            "socket": self.unix_socket,
            "port": self.port,
            "bind_address": "127.0.0.1",
            "pid_file": self.tmpdir / "mariadbd.pid",
            "skip_name_resolve": "ON",
            "max_connect_errors": 4294967295,  # fault tests abort many handshakes; never block
            "max_connections": self.max_connections,
            "character_set_server": "utf8mb4",
            "collation_server": "utf8mb4_general_ci",  # Debian's server default
            # Durability is irrelevant for a throwaway server; speed is not.
            "innodb_flush_log_at_trx_commit": 0,
            "innodb_doublewrite": "OFF",
            "innodb_buffer_pool_size": "32M",
            "innodb_buffer_pool_load_at_startup": "OFF",
            "innodb_buffer_pool_dump_at_shutdown": "OFF",
        }
        if self.wait_timeout is not None:
            options["wait_timeout"] = options["interactive_timeout"] = self.wait_timeout
        options.update(self.settings)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        return [self.mariadbd, "--no-defaults", *INIT_OPTIONS, *flags]

    def _launch(self) -> None:
        first_start = not self._launched
        for attempt in range(5):
            log_start = self.logfile.stat().st_size if self.logfile.exists() else 0
            super()._launch()
            if self._await_started(log_start):
                self._launched = True
                return
            self._shutdown("immediate")
            if not (first_start and attempt < 4):
                raise RuntimeError(f"MariaDB cannot listen on port {self.port}\n{self._log_tail()}")
            self.port = free_port()  # someone took the port in between; pick another

    def _await_started(self, log_start: int) -> bool:
        """Wait until the server is up or has failed; False if the port was taken."""
        deadline = time.monotonic() + 60.0
        while True:
            with self.logfile.open("rb") as f:
                f.seek(log_start)
                text = f.read().decode(errors="replace")
            if "ready for connections" in text:
                return True
            if not self._proc_alive():
                if "Address already in use" in text:
                    return False
                self._check_alive("mariadbd")
            if time.monotonic() > deadline:
                raise RuntimeError(f"MariaDB did not come up\n{self._log_tail()}")
            time.sleep(0.01)

    def _wait_ready(self, timeout: float) -> None:
        # _launch already waited for "ready for connections", logged once mariadbd accepts
        # connections. A probe connection is avoided on purpose: it would be logged as an
        # aborted connection and counted in Aborted_connects.
        self._check_alive("mariadbd")
        if not Path(self.unix_socket).exists():
            raise RuntimeError(f"MariaDB has no socket {self.unix_socket}\n{self._log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """``smart``/``fast``: SIGTERM (a clean shutdown, InnoDB flushed); ``immediate``:
        SIGKILL (the next start runs crash recovery)."""
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {STOP_MODES}, got {mode!r}")
        super().stop(mode)

    def __repr__(self) -> str:
        return f"<MariaDBServer port={self.port} dir={self.tmpdir}>"


class ExistingMariaDB(_MariaDBClient, ExistingServer):
    """An externally managed server from a ``mysql://`` (or ``mariadb://``) URL, such as
    ``MYSQL_URL`` in CI: ``mysql://user:password@host:port/dbname?unix_socket=/path``.

    Offers the admin interface of ``MariaDBServer``; lifecycle operations raise.
    """

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb"):
            raise ValueError(f"url must be a mysql:// or mariadb:// URL, got {url!r}")
        unquote = urllib.parse.unquote
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 3306
        self.user = unquote(parts.username or "root")
        self.password = unquote(parts.password) if parts.password is not None else None
        self.dbname = unquote(parts.path.lstrip("/")) or None
        query = dict(urllib.parse.parse_qsl(parts.query))
        self.unix_socket = query.get("unix_socket") or query.get("socket")

    def __repr__(self) -> str:
        return f"<ExistingMariaDB {self.user}@{self.host}:{self.port}/{self.dbname or ''}>"


def mariadb_for_tests() -> MariaDBServer | ExistingMariaDB:
    """``ExistingMariaDB`` from ``MYSQL_URL`` when set, else a started ``MariaDBServer``."""
    url = os.environ.get("MYSQL_URL")
    if url:
        return ExistingMariaDB(url)
    return MariaDBServer().start()
