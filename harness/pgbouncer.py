"""A throwaway PgBouncer in front of a (throwaway or existing) PostgreSQL server.

PgBouncer runs from Debian's ``pgbouncer`` binary with its own config, temp dir, free port on
127.0.0.1 and Unix socket directory, so a PgBouncer service the machine may run is never used.
Clients authenticate with ``trust``; PgBouncer logs in to the upstream server with the password
of ``upstream`` if it has one. The ``pgbouncer`` admin database is reachable for ``admin_user``.
"""

from __future__ import annotations

import functools
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from ._spawn import SpawnedServer
from .servers import _PostgresClient, find_or_install, free_port

__all__ = ["POOL_MODES", "PgBouncerServer", "find_pgbouncer", "pgbouncer_version"]

POOL_MODES = ("session", "transaction", "statement")
STOP_MODES = ("smart", "fast", "immediate")
# psycopg sends ``options`` (and older drivers ``extra_float_digits``) in the startup packet;
# PgBouncer refuses unknown startup parameters unless told to ignore them.
IGNORE_STARTUP_PARAMETERS = "extra_float_digits,options"


class Upstream(Protocol):
    """What PgBouncer needs of the server behind it (``PostgresServer``, ``ExistingPostgres``)."""

    host: str
    port: int
    user: str
    password: str | None


@functools.cache  # only successful lookups are cached; a failure is retried next call
def find_pgbouncer() -> str:
    """Path of the ``pgbouncer`` binary; installs Debian's package with apt as root if missing."""
    return find_or_install(
        lambda: shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin"),
        "pgbouncer",
        "pgbouncer not found; install it (Debian/Ubuntu: apt-get install pgbouncer)",
    )


@functools.cache
def pgbouncer_version() -> tuple[int, ...]:
    """PgBouncer's version, e.g. ``(1, 18, 0)``, from ``pgbouncer --version``."""
    out = subprocess.run(
        [find_pgbouncer(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"PgBouncer (\d+(?:\.\d+)+)", out)
    if match is None:
        raise RuntimeError(f"cannot parse the output of pgbouncer --version: {out!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _ini_value(value: object) -> str:
    text = str(value)
    if "\n" in text:
        raise ValueError(f"PgBouncer setting values cannot contain newlines: {text!r}")
    return text


def _userlist_quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _connstr_quote(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgBouncerServer(_PostgresClient, SpawnedServer):
    """A throwaway PgBouncer fronting ``upstream`` (anything with host, port, user, password).

    Every database name is passed through to the upstream server (a ``*`` fallback entry).
    ``conninfo()``/``url()``/``execute()`` work as for ``PostgresServer`` but go through
    PgBouncer; ``admin()``/``show()`` talk to its admin console. ``max_prepared_statements``
    needs PgBouncer 1.21+ (see ``supports_max_prepared_statements``); 0 leaves it off.
    ``upstream_tcp`` reaches an upstream given by its socket directory over 127.0.0.1 instead;
    ``users`` adds login names (with the password PgBouncer uses upstream); ``settings`` adds
    or overrides ``[pgbouncer]`` settings.
    """

    engine = "pgbouncer"
    os_users = ("postgres",)
    fallback_os_user = "lido-pg"

    def __init__(
        self,
        upstream: Upstream,
        *,
        pool_mode: str = "transaction",
        max_client_conn: int = 200,
        default_pool_size: int = 20,
        max_prepared_statements: int = 0,
        upstream_tcp: bool = False,
        users: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
        self.binary = find_pgbouncer()
        self.version = pgbouncer_version()
        if max_prepared_statements < 0:
            raise ValueError(f"max_prepared_statements must be >= 0, got {max_prepared_statements}")
        if max_prepared_statements and not self.supports_max_prepared_statements:
            raise ValueError(
                f"max_prepared_statements needs PgBouncer 1.21+, this is "
                f"{'.'.join(map(str, self.version))}"
            )
        self.upstream = upstream
        self.pool_mode = pool_mode
        self.max_client_conn = max_client_conn
        self.default_pool_size = default_pool_size
        self.max_prepared_statements = max_prepared_statements
        self.upstream_tcp = upstream_tcp
        self.user = upstream.user
        self.admin_user = upstream.user
        self.password: str | None = None  # clients use trust
        self.users = {upstream.user: upstream.password or "", **(users or {})}
        self.settings = dict(settings or {})
        self._launched = False
        super().__init__()
        self.host = str(self.tmpdir)
        self.configfile = self.tmpdir / "pgbouncer.ini"

    @property
    def supports_max_prepared_statements(self) -> bool:
        """PgBouncer 1.21+ can track protocol-level prepared statements in transaction mode."""
        return self.version >= (1, 21)

    @property
    def logfile(self) -> Path:
        return self.tmpdir / "pgbouncer.log"

    @property
    def dbname(self) -> str:
        return getattr(self.upstream, "dbname", "postgres")

    # -- client side ---------------------------------------------------------------------------

    def _conn_params(self, *, dbname: str | None, tcp: bool) -> dict[str, str]:
        return {
            "host": "127.0.0.1" if tcp else self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": dbname or self.dbname,
        }

    def conn_params(self, dbname: str | None = None, *, tcp: bool = False) -> dict[str, Any]:
        """Connection keys of a Django ``DATABASES`` entry (NAME, USER, PASSWORD, HOST, PORT)."""
        params = self._conn_params(dbname=dbname, tcp=tcp)
        return {
            "NAME": params["dbname"],
            "USER": params["user"],
            "PASSWORD": "",
            "HOST": params["host"],
            "PORT": params["port"],
        }

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run an admin console command (``SHOW POOLS``, ``RELOAD``, ...) as ``admin_user``;
        returns the rows as dicts. The console speaks only the simple query protocol, which
        psycopg uses for a statement without parameters."""
        import psycopg
        from psycopg.rows import dict_row

        conninfo = self.conninfo(dbname="pgbouncer", user=self.admin_user)
        with psycopg.connect(
            conninfo, autocommit=True, prepare_threshold=None, row_factory=dict_row
        ) as conn:
            cur = conn.execute(command)
            return cur.fetchall() if cur.description is not None else []

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console, e.g. ``show("pools")``."""
        if not what.replace("_", "").isalpha():
            raise ValueError(f"not a SHOW target: {what!r}")
        return self.admin(f"SHOW {what.upper()}")

    def pools(self, dbname: str | None = None) -> list[dict[str, Any]]:
        """``SHOW POOLS`` rows, optionally of one database (the admin console's own excluded)."""
        rows = [r for r in self.show("pools") if r["database"] != "pgbouncer"]
        return [r for r in rows if dbname is None or r["database"] == dbname]

    def servers(self, dbname: str | None = None) -> list[dict[str, Any]]:
        """``SHOW SERVERS`` rows (upstream connections), optionally of one database."""
        return [r for r in self.show("servers") if dbname is None or r["database"] == dbname]

    # -- server side ---------------------------------------------------------------------------

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        self._chown(path)

    def _write_config(self) -> None:
        up = self.upstream
        up_host = "127.0.0.1" if self.upstream_tcp and up.host.startswith("/") else up.host
        settings: dict[str, Any] = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": self.host,
            "auth_type": "trust",
            "auth_file": self.tmpdir / "userlist.txt",
            "admin_users": self.admin_user,
            "stats_users": self.admin_user,
            "pool_mode": self.pool_mode,
            "max_client_conn": self.max_client_conn,
            "default_pool_size": self.default_pool_size,
            "ignore_startup_parameters": IGNORE_STARTUP_PARAMETERS,
            "syslog": 0,  # no logfile either: PgBouncer logs to stderr, which goes to logfile
            # Tests restart the upstream server; the default 15 s pause after a failed server
            # login would stall every client that long.
            "server_login_retry": 1,
        }
        if self.supports_max_prepared_statements:
            settings["max_prepared_statements"] = self.max_prepared_statements
        settings.update(self.settings)
        lines = [
            "[databases]",
            f"* = host={_connstr_quote(up_host)} port={up.port}",
            "",
            "[pgbouncer]",
            *(f"{k} = {_ini_value(v)}" for k, v in settings.items()),
        ]
        self._write(self.configfile, "\n".join(lines) + "\n")
        users = "".join(
            f"{_userlist_quote(n)} {_userlist_quote(p)}\n" for n, p in self.users.items()
        )
        self._write(self.tmpdir / "userlist.txt", users)
        (self.tmpdir / "userlist.txt").chmod(0o600)

    def _initialize(self) -> None:
        """Nothing to initialize: the config is rewritten at each launch."""

    def _server_argv(self) -> list[str]:
        return [self.binary, str(self.configfile)]

    def _launch(self) -> None:
        first_start = not self._launched
        for attempt in range(5):
            self._write_config()
            log_start = self.logfile.stat().st_size if self.logfile.exists() else 0
            super()._launch()
            # PgBouncer only warns when it cannot bind its TCP port and keeps running on the
            # socket; treat that as a failed start and, on the first start, take another port.
            if self._await_listening(log_start):
                self._launched = True
                return
            self._shutdown("immediate")
            if not (first_start and attempt < 4):
                raise RuntimeError(
                    f"PgBouncer cannot listen on port {self.port}\n{self._log_tail()}"
                )
            self.port = free_port()

    def _await_listening(self, log_start: int) -> bool:
        """Wait for the "process up" log line; False if binding the TCP port failed."""
        deadline = time.monotonic() + 30.0
        while True:
            self._check_alive("pgbouncer")
            with self.logfile.open("rb") as f:
                f.seek(log_start)
                text = f.read().decode(errors="replace")
            if f"cannot listen on 127.0.0.1:{self.port}" in text:
                return False
            if "process up" in text:
                return True
            if time.monotonic() > deadline:
                raise RuntimeError(f"PgBouncer did not come up\n{self._log_tail()}")
            time.sleep(0.01)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("pgbouncer")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PgBouncer is not accepting connections on port {self.port}\n"
                        f"{self._log_tail()}"
                    ) from None
                time.sleep(0.02)

    def stop(self, mode: str = "fast") -> None:
        """``smart`` waits for clients to finish (SIGINT: PAUSE then SHUTDOWN); ``fast`` and
        ``immediate`` close all connections at once."""
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {STOP_MODES}, got {mode!r}")
        super().stop(mode)

    def _stop_signal(self, mode: str) -> signal.Signals:
        if mode == "smart":
            return signal.SIGINT
        # SIGTERM meant immediate shutdown until 1.23, which made it a "super safe" shutdown
        # and moved immediate shutdown to SIGQUIT.
        return signal.SIGQUIT if self.version >= (1, 23) else signal.SIGTERM

    def __repr__(self) -> str:
        up = self.upstream
        return (
            f"<PgBouncerServer port={self.port} pool_mode={self.pool_mode} "
            f"upstream={up.host}:{up.port} dir={self.tmpdir}>"
        )
