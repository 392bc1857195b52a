"""A throwaway Redis (Debian's ``redis-server``) on a Unix socket in its temp dir, for Celery
brokers in tests and benchmarks: no TCP port, no persistence."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from ._spawn import SpawnedServer
from .servers import find_or_install


def find_redis_server() -> str:
    return find_or_install(
        lambda: shutil.which("redis-server") or shutil.which("/usr/bin/redis-server"),
        "redis-server",
        "redis-server not found",
    )


class RedisServer(SpawnedServer):
    """``with RedisServer() as redis:``; ``broker_url()`` and ``backend_url()`` are the URLs
    Celery's broker (kombu) and result backend want for the socket."""

    engine = "redis"
    os_users = ("redis", "postgres")
    fallback_os_user = "lido-pg"

    def __init__(self) -> None:
        self.executable = find_redis_server()
        super().__init__()
        self.socket_path = self.tmpdir / "redis.sock"

    @property
    def logfile(self) -> Path:
        return self.tmpdir / "redis.log"

    def broker_url(self, db: int = 0) -> str:
        return f"redis+socket://{self.socket_path}?virtual_host={db}"

    def backend_url(self, db: int = 1) -> str:
        return f"redis+socket://{self.socket_path}?virtual_host={db}"

    def _initialize(self) -> None:
        pass

    def _server_argv(self) -> list[str]:
        return [
            self.executable,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "777",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.tmpdir),
        ]  # fmt: skip

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("redis-server")
            if self._ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server not ready after {timeout:.0f} s\n{self._log_tail()}")
