"""Throwaway database servers for tests.

Each server lives in a fresh temp directory on a free TCP port, so tests never touch a database
service that happens to run on the machine. ``ThrowawayServer`` holds the engine-neutral parts
(temp dir, port, OS user when running as root, process lifecycle, cleanup); ``PostgresServer``
adds PostgreSQL. MariaDB (``harness.mariadb``) and PgBouncer (``harness.pgbouncer``) build on
it the same way, through ``harness._spawn.SpawnedServer``.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

if TYPE_CHECKING:
    from psycopg.abc import Params, Query

__all__ = [
    "ExistingPostgres",
    "ExistingServer",
    "PostgresServer",
    "ThrowawayServer",
    "find_postgres_bindir",
    "free_port",
    "postgres_for_tests",
]

START_TIMEOUT = 60.0
POSTGRES_AUTH_METHODS = ("trust", "scram-sha-256")
PG_STOP_MODES = ("smart", "fast", "immediate")

_apt_updated = False
_initdb_templates: dict[tuple[Path, str | None], Path] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server binds it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


T = TypeVar("T")


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_install(*packages: str) -> None:
    global _apt_updated
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        _apt_updated = True
    subprocess.run(
        ["apt-get", "install", "-y", *packages], env=env, check=True, capture_output=True
    )


def find_or_install(find: Callable[[], T | None], package: str, missing: str) -> T:
    """What ``find()`` finds; if nothing, Debian's ``package`` is installed with apt-get
    (as root, where apt-get exists) and ``find()`` tried again. ``missing`` is the error
    when it still finds nothing."""
    found = find()
    if found is None and _is_root() and shutil.which("apt-get"):
        try:
            _apt_install(package)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"installing {package} with apt-get failed:\n{exc.stderr.decode(errors='replace')}"
            ) from exc
        found = find()
    if found is None:
        raise RuntimeError(missing)
    return found


def _newest_postgres_bindir() -> Path | None:
    found = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        version = bindir.parent.name
        if version.isdigit() and all(
            os.access(bindir / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")
        ):
            found.append((int(version), bindir))
    return max(found)[1] if found else None


@functools.cache  # only successful lookups are cached; a failure is retried next call
def find_postgres_bindir() -> Path:
    """The newest Debian-style ``/usr/lib/postgresql/<N>/bin``; installs PostgreSQL as root."""
    return find_or_install(
        _newest_postgres_bindir,
        "postgresql",
        "PostgreSQL server binaries not found under /usr/lib/postgresql/<N>/bin; install them "
        "(Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL to use an existing "
        "server",
    )


def _pid_alive(pid: int) -> bool:
    # A killed process may linger as a zombie if nobody reaps it (e.g. a container whose PID 1
    # does not wait for orphans); kill(pid, 0) still succeeds for those, so check /proc too.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} did not exit within {timeout:.0f}s")
        time.sleep(0.02)


def _base_tempdir() -> str | None:
    """Where server temp dirs go: $LIDO_TEST_TMPDIR, else a roomy /dev/shm, else TMPDIR."""
    if override := os.environ.get("LIDO_TEST_TMPDIR"):
        return override
    # On tmpfs initdb and copying a data dir are ~10x faster than on a disk (measured 0.4 s vs
    # 1.3 s for initdb); require room because container /dev/shm is often only 64 MB.
    with contextlib.suppress(OSError):
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 1 << 30 and os.access("/dev/shm", os.W_OK):
            return "/dev/shm"
    # Unix socket paths are limited to ~107 bytes; fall back to /tmp when TMPDIR is long.
    return "/tmp" if len(tempfile.gettempdir()) > 60 else None


class ThrowawayServer(abc.ABC):
    """Engine-neutral lifecycle for a database server owned by the test run.

    Subclasses implement ``_initialize`` (create the data directory), ``_launch`` (start the
    server process), ``_wait_ready``, ``_shutdown`` and ``_server_pid``.
    """

    engine: ClassVar[str]
    # OS accounts the server may run as when we are root (servers refuse to run as root).
    os_users: ClassVar[tuple[str, ...]]
    fallback_os_user: ClassVar[str]

    def __init__(self) -> None:
        self.port = free_port()
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"lido-{self.engine}-", dir=_base_tempdir()))
        self._initialized = False
        self._cleaned = False
        atexit.register(self.cleanup)  # an interrupted run must not leave a server behind
        try:
            self.os_user = self._pick_os_user() if _is_root() else None
            self._chown(self.tmpdir)
        except BaseException:
            self.cleanup()
            raise

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server (initializing it on first use); returns once it accepts connections."""
        if self._cleaned:
            raise RuntimeError(f"{type(self).__name__} was cleaned up; create a new one")
        if self.running:
            return self
        if not self._initialized:
            self._initialize()
            self._initialized = True
        self._launch()
        self._wait_ready(START_TIMEOUT)
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._shutdown(mode)

    def restart(self) -> None:
        """Stop and start again on the same port; existing connections are broken."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the server process (simulates a crash) and wait until it and its children
        are gone, so a later ``start()`` does not trip over leftover processes."""
        pid = self._server_pid()
        if pid is None or not _pid_alive(pid):
            return
        children = _child_pids(pid)
        os.kill(pid, signal.SIGKILL)
        _wait_gone([pid, *children], timeout=30)
        self._after_kill(pid)

    def cleanup(self) -> None:
        """Stop the server if it runs and remove its temp directory. Idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        atexit.unregister(self.cleanup)
        try:
            if self._initialized and self.running:
                try:
                    self._shutdown("immediate")
                except Exception:
                    self.kill()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        pid = self._server_pid()
        return pid is not None and _pid_alive(pid)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} dir={self.tmpdir}>"

    # -- helpers for subclasses ----------------------------------------------------------------

    def _pick_os_user(self) -> str:
        for name in self.os_users:
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                return name
        with contextlib.suppress(KeyError):
            pwd.getpwnam(self.fallback_os_user)
            return self.fallback_os_user
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             self.fallback_os_user],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return self.fallback_os_user

    def _chown(self, path: Path) -> None:
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _command(self, argv: list[str]) -> list[str]:
        if self.os_user is None:
            return argv
        return ["runuser", "-u", self.os_user, "--", *argv]

    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
        # Drop PG*/MYSQL* variables so the developer's client settings cannot redirect tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}
        proc = subprocess.run(
            self._command(argv),
            cwd=self.tmpdir,  # the server user may not be able to read the caller's cwd
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n"
                f"{proc.stdout}{proc.stderr}{self._log_tail()}"
            )
        return proc

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- last lines of {self.logfile} ---\n" + "\n".join(text.splitlines()[-lines:])

    def _after_kill(self, pid: int) -> None:  # noqa: B027 - optional hook
        """Hook run once a killed server and its children are gone."""

    @property
    @abc.abstractmethod
    def logfile(self) -> Path: ...

    @abc.abstractmethod
    def _initialize(self) -> None: ...

    @abc.abstractmethod
    def _launch(self) -> None: ...

    @abc.abstractmethod
    def _wait_ready(self, timeout: float) -> None: ...

    @abc.abstractmethod
    def _shutdown(self, mode: str) -> None: ...

    @abc.abstractmethod
    def _server_pid(self) -> int | None: ...


def _conninfo_quote(value: str) -> str:
    if value and not any(c in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _PostgresClient(abc.ABC):
    """Admin helpers shared by throwaway and existing PostgreSQL servers."""

    host: str
    port: int
    user: str
    password: str | None

    @abc.abstractmethod
    def _conn_params(self, *, dbname: str | None, tcp: bool) -> dict[str, str]: ...

    def conninfo(self, *, dbname: str | None = None, tcp: bool = False, **extra: Any) -> str:
        """libpq ``key=value`` string; ``extra`` adds or overrides keywords."""
        params = self._conn_params(dbname=dbname, tcp=tcp)
        params.update({k: str(v) for k, v in extra.items()})
        return " ".join(f"{k}={_conninfo_quote(v)}" for k, v in params.items())

    def url(self, *, dbname: str | None = None, tcp: bool = False, **extra: Any) -> str:
        """``postgresql://`` URL equivalent to ``conninfo()`` (socket dirs percent-encoded)."""
        params = self._conn_params(dbname=dbname, tcp=tcp)
        params.update({k: str(v) for k, v in extra.items()})
        q = functools.partial(urllib.parse.quote, safe="")
        userinfo = q(params.pop("user"))
        if "password" in params:
            userinfo += ":" + q(params.pop("password"))
        host = params.pop("host")
        host = f"[{host}]" if ":" in host and not host.startswith("/") else q(host)
        netloc = f"{userinfo}@{host}:{params.pop('port')}"
        url = f"postgresql://{netloc}/{q(params.pop('dbname'))}"
        return f"{url}?{urllib.parse.urlencode(params)}" if params else url

    def execute(
        self, sql: Query, params: Params | None = None, *, dbname: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh autocommit connection; returns the rows (or [])."""
        import psycopg  # lazy: the harness itself must not require a driver

        with (
            psycopg.connect(self.conninfo(dbname=dbname), autocommit=True) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    # Client backends other than the querying one that this role may signal (non-superusers
    # can only signal backends of roles they belong to; trying others would raise).
    _CLIENT_BACKENDS = """
        FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
          AND ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
               OR pg_has_role(usesysid, 'MEMBER'))
    """

    def terminate_backends(
        self, *, application_name: str | None = None, exclude_self: bool = True
    ) -> int:
        """``pg_terminate_backend`` client backends (optionally one application_name); waits up
        to 5 s per backend for it to exit. ``exclude_self=False`` also ends the helper's own
        connection. Returns how many were terminated."""
        sql = (
            "SELECT count(*) FILTER (WHERE ok) FROM"
            f" (SELECT pg_terminate_backend(pid, 5000) AS ok {self._CLIENT_BACKENDS}"
        )
        params: list[str] = []
        if application_name is not None:
            sql += " AND application_name = %s"
            params.append(application_name)
        count: int = self.execute(sql + ") AS t", params)[0][0]
        if not exclude_self:
            import psycopg

            with contextlib.suppress(psycopg.OperationalError):
                self.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            count += 1
        return count

    def backend_count(self, application_name: str | None = None) -> int:
        """Client backends in pg_stat_activity, excluding the querying one."""
        sql = f"SELECT count(*) {self._CLIENT_BACKENDS}"
        params: list[str] = []
        if application_name is not None:
            sql += " AND application_name = %s"
            params.append(application_name)
        return self.execute(sql, params)[0][0]

    def create_database(self, name: str) -> None:
        from psycopg import sql

        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


class PostgresServer(_PostgresClient, ThrowawayServer):
    """A throwaway PostgreSQL cluster: temp dir, free port on 127.0.0.1, socket in the temp dir.

    ``auth`` applies to TCP connections ("trust" or "scram-sha-256" with ``password`` for the
    ``postgres`` role); the Unix socket always uses trust so admin helpers need no password.
    """

    engine = "pg"
    os_users = ("postgres",)
    fallback_os_user = "lido-pg"

    def __init__(
        self,
        *,
        auth: str = "trust",
        password: str = "lido",
        settings: dict[str, str] | None = None,
    ) -> None:
        if auth not in POSTGRES_AUTH_METHODS:
            raise ValueError(f"auth must be one of {POSTGRES_AUTH_METHODS}, got {auth!r}")
        self.bindir = find_postgres_bindir()
        self.auth = auth
        self.user = "postgres"
        self.password = password
        self.settings = dict(settings or {})
        self._launched = False
        super().__init__()
        self.host = str(self.tmpdir)
        self.datadir = self.tmpdir / "data"

    @property
    def logfile(self) -> Path:
        return self.tmpdir / "postgres.log"

    def _conn_params(self, *, dbname: str | None, tcp: bool) -> dict[str, str]:
        params = {
            "host": "127.0.0.1" if tcp else self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": dbname or "postgres",
        }
        if tcp and self.auth != "trust":
            params["password"] = self.password
        return params

    def _pg(self, exe: str) -> str:
        return str(self.bindir / exe)

    def _initialize(self) -> None:
        # initdb costs ~1 s; run it once per process and copy the result (cp -a keeps owner and
        # the 0700 mode PostgreSQL insists on).
        key = (self.bindir, self.os_user)
        template = _initdb_templates.get(key)
        if template is None or not template.exists():
            tdir = Path(tempfile.mkdtemp(prefix="lido-pg-template-", dir=_base_tempdir()))
            atexit.register(shutil.rmtree, tdir, ignore_errors=True)
            self._chown(tdir)
            template = tdir / "data"
            self._run(
                [self._pg("initdb"), "-D", str(template), "-N", "-A", "trust", "-U", self.user,
                 "-E", "UTF8", "--locale=C"],
                "initdb",
            )  # fmt: skip
            _initdb_templates[key] = template
        subprocess.run(["cp", "-a", str(template), str(self.datadir)], check=True)
        hba = ["local all all trust", "local replication all trust"]
        for db in ("all", "replication"):
            hba += [f"host {db} all 127.0.0.1/32 {self.auth}", f"host {db} all ::1/128 {self.auth}"]
        self._write(self.datadir / "pg_hba.conf", "\n".join(hba) + "\n")
        # Our settings go in an included file that is rewritten before each launch (the port
        # may change), leaving postgresql.conf and ALTER SYSTEM's auto.conf to PostgreSQL.
        with (self.datadir / "postgresql.conf").open("a") as f:
            f.write("\ninclude 'lido.conf'\n")

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        self._chown(path)

    def _write_settings(self) -> None:
        settings = {
            "fsync": "off",  # durability is irrelevant for a throwaway cluster; speed is not
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "unix_socket_directories": self.host,
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
        }
        if self.auth == "scram-sha-256":
            settings["password_encryption"] = "scram-sha-256"
        settings.update(self.settings)
        lines = [f"{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in settings.items()]
        self._write(self.datadir / "lido.conf", "\n".join(lines) + "\n")

    def _launch(self) -> None:
        first_start = not self._launched
        for attempt in range(5):
            self._write_settings()
            try:
                self._run(
                    [self._pg("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                     "-w", "-t", str(int(START_TIMEOUT)), "-s", "start"],
                    "pg_ctl start",
                )  # fmt: skip
                break
            except RuntimeError as exc:
                msg = str(exc)
                if first_start and "could not bind" in msg and attempt < 4:
                    self.port = free_port()  # someone took the port in between; pick another
                    continue
                if "pre-existing shared memory block" in msg and attempt < 4:
                    time.sleep(0.5)  # backends of a killed postmaster are still exiting
                    continue
                raise
        self._launched = True
        if first_start and self.auth == "scram-sha-256":
            self._wait_ready(START_TIMEOUT)
            from psycopg import sql

            self.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )

    def _wait_ready(self, timeout: float) -> None:
        # pg_ctl -w already waited for "ready" in postmaster.pid; confirm with a real handshake
        # (pg_isready needs no driver) in case the server is still finishing recovery.
        deadline = time.monotonic() + timeout
        argv = [self._pg("pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                "-U", self.user, "-d", "postgres", "-t", "2"]  # fmt: skip
        while subprocess.run(argv, stdin=subprocess.DEVNULL).returncode != 0:
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError(
                    f"PostgreSQL in {self.datadir} is not accepting connections on port "
                    f"{self.port}\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        if mode not in PG_STOP_MODES:
            raise ValueError(f"mode must be one of {PG_STOP_MODES}, got {mode!r}")
        super().stop(mode)

    def _shutdown(self, mode: str) -> None:
        self._run(
            [self._pg("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-s", "stop"],
            "pg_ctl stop",
        )

    def _server_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _after_kill(self, pid: int) -> None:
        # An unreaped (zombie) postmaster still answers kill(pid, 0), which would make the next
        # postmaster think the lock files are live; they are stale now, so remove them.
        for lock in (self.datadir / "postmaster.pid", self.tmpdir / f".s.PGSQL.{self.port}.lock"):
            lock.unlink(missing_ok=True)


class ExistingServer:
    """Lifecycle of a server the test run does not own (from a URL): already started,
    nothing to clean up, and stop/restart/kill refused, since they need a throwaway one."""

    def _unsupported(self, what: str) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__}.{what}() needs a throwaway server")

    def start(self) -> Self:
        return self  # already running, managed elsewhere

    def stop(self, mode: str = "fast") -> None:
        raise self._unsupported("stop")

    def restart(self) -> None:
        raise self._unsupported("restart")

    def kill(self) -> None:
        raise self._unsupported("kill")

    def cleanup(self) -> None:
        """Nothing to clean up: the server is not ours."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class ExistingPostgres(_PostgresClient, ExistingServer):
    """An externally managed server from a ``postgresql://`` URL (e.g. ``DATABASE_URL`` in CI).

    Offers the read/admin interface of ``PostgresServer``; lifecycle operations need a server
    the test run owns and raise ``RuntimeError``.
    """

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError(f"url must be a postgresql:// URL, got {url!r}")
        unquote = urllib.parse.unquote
        # Split host/port by hand: urlsplit().hostname lowercases, which would corrupt a
        # percent-encoded socket directory such as %2Fvar%2Frun%2FPostgreSQL.
        hostport = parts.netloc.rpartition("@")[2]
        host, port = hostport, ""
        if hostport.startswith("["):  # IPv6 literal
            host, _, rest = hostport[1:].partition("]")
            port = rest.removeprefix(":")
        elif ":" in hostport:
            host, _, port = hostport.rpartition(":")
        self.host = unquote(host) or "localhost"
        self.port = int(port) if port else 5432
        self.user = unquote(parts.username or "postgres")
        self.password = unquote(parts.password) if parts.password is not None else None
        self.dbname = unquote(parts.path.lstrip("/")) or "postgres"
        self.options = dict(urllib.parse.parse_qsl(parts.query))

    def _conn_params(self, *, dbname: str | None, tcp: bool) -> dict[str, str]:
        # ``tcp`` is accepted for interface compatibility; the URL decides the transport.
        params = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": dbname or self.dbname,
        }
        if self.password is not None:
            params["password"] = self.password
        params.update(self.options)
        return params

    def __repr__(self) -> str:
        return f"<ExistingPostgres {self.user}@{self.host}:{self.port}/{self.dbname}>"


def postgres_for_tests() -> PostgresServer | ExistingPostgres:
    """``ExistingPostgres`` from ``DATABASE_URL`` when set, else a started ``PostgresServer``."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return ExistingPostgres(url)
    return PostgresServer().start()
