"""A network path that can be cut silently, for tests of what a dead network does.

``BlackHole(unix_socket)`` makes a network namespace and a veth pair (host side
10.231.N.1/30, namespace side 10.231.N.2/30, addresses inside that pair only), and runs a
TCP forwarder in the namespace (socat, else a small Python one) from 10.231.N.2:PORT to a
server's Unix socket; clients connect to ``host``/``port``. ``drop()`` puts a ``blackhole``
qdisc on both ends: every packet is discarded, with no RST and no ICMP, as when a network
dies; ``restore()`` takes it away. Needs root, ``ip`` and ``tc``; ``unavailable()`` says
why not when one is missing, for a test's skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

PORT = 5999

# A forwarder in Python for where socat is missing: accept, connect to the Unix socket,
# copy both ways.
_PY_FORWARDER = r"""
import socket, sys, threading
bind, port, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
srv = socket.create_server((bind, port), reuse_port=False)
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    u = socket.socket(socket.AF_UNIX)
    try:
        u.connect(target)
    except OSError:
        c.close()
        continue
    for a, b in ((c, u), (u, c)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
"""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why a BlackHole cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) is not installed"
    name = f"lido-nsprobe-{os.getpid()}"
    made = _run("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    _run("ip", "netns", "del", name, check=False)
    return None


def _free_subnet() -> int:
    used = _run("ip", "-o", "addr").stdout
    for n in range(1 + os.getpid() % 200, 255):
        if f"10.231.{n}." not in used:
            return n
    raise RuntimeError("no free 10.231.N.0/30 subnet")


class BlackHole:
    """A forwarder to ``unix_socket`` behind a veth pair that ``drop()`` silences."""

    def __init__(self, unix_socket: str | Path) -> None:
        self.target = str(unix_socket)
        tag = f"{os.getpid() % 100000}"
        self.ns = f"lido-bh-{tag}"
        self.outer = f"lbh{tag}a"
        self.inner = f"lbh{tag}b"
        self.subnet = 0
        self.host = ""
        self.port = PORT
        self._forwarder: subprocess.Popen[bytes] | None = None
        self._made: list[tuple[str, ...]] = []
        self.dropped = False

    def __enter__(self) -> BlackHole:
        try:
            self._make()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def _make(self) -> None:
        self.subnet = _free_subnet()
        outer_ip, inner_ip = f"10.231.{self.subnet}.1", f"10.231.{self.subnet}.2"
        _run("ip", "netns", "add", self.ns)
        self._made.append(("ip", "netns", "del", self.ns))
        _run("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        self._made.append(("ip", "link", "del", self.outer))
        _run("ip", "link", "set", self.inner, "netns", self.ns)
        _run("ip", "addr", "add", f"{outer_ip}/30", "dev", self.outer)
        _run("ip", "link", "set", self.outer, "up")
        inside = ("ip", "netns", "exec", self.ns)
        _run(*inside, "ip", "addr", "add", f"{inner_ip}/30", "dev", self.inner)
        _run(*inside, "ip", "link", "set", self.inner, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        if shutil.which("socat"):
            argv = [
                "socat",
                f"TCP-LISTEN:{self.port},bind={inner_ip},fork,reuseaddr",
                f"UNIX-CONNECT:{self.target}",
            ]
        else:
            argv = [sys.executable, "-c", _PY_FORWARDER, inner_ip, str(self.port), self.target]
        self._forwarder = subprocess.Popen(
            [*inside, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        self.host = inner_ip
        self._wait_listening()

    def _wait_listening(self) -> None:
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the forwarder in {self.ns} is not listening") from None
                time.sleep(0.05)

    def drop(self) -> None:
        """Every packet between the client and the forwarder is discarded from now on."""
        _run("tc", "qdisc", "add", "dev", self.outer, "root", "blackhole")
        _run("ip", "netns", "exec", self.ns, "tc", "qdisc", "add", "dev", self.inner, "root",
             "blackhole")  # fmt: skip
        self.dropped = True

    def restore(self) -> None:
        if self.dropped:
            _run("tc", "qdisc", "del", "dev", self.outer, "root", check=False)
            _run("ip", "netns", "exec", self.ns, "tc", "qdisc", "del", "dev", self.inner, "root",
                 check=False)  # fmt: skip
            self.dropped = False

    def cleanup(self) -> None:
        """Stops the forwarder, removes the veth pair and the namespace. Idempotent."""
        if self._forwarder is not None:
            self._forwarder.kill()
            self._forwarder.wait()
            self._forwarder = None
        # socat's forked children live in the namespace: end them with it.
        pids = _run("ip", "netns", "pids", self.ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        while self._made:
            _run(*self._made.pop(), check=False)
