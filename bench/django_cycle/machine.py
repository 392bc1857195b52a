"""CPU accounting on the machine and the server-connections monitor."""

from __future__ import annotations

import argparse
import os
import threading
import time

import _common

from django_cycle.server import BenchServer
from django_cycle.variants import DBNAME


class Monitor:
    """Polls the server for connections to the bench database (pg_stat_activity or the
    MariaDB processlist), from an admin connection, in a thread of the parent process."""

    def __init__(self, server: BenchServer, interval: float) -> None:
        self.conn = server.admin()
        self.count_sql = server.count_sql
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute(self.count_sql, [DBNAME])
            return cur.fetchone()[0]

    def wait_idle(self, timeout: float = 5.0) -> int:
        """Waits until no backend is connected to the bench database (the last child's
        backends exit asynchronously); returns how many are left."""
        deadline = time.monotonic() + timeout
        while (n := self.count()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return n

    def start(self) -> None:
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.count())

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak

    def close(self) -> None:
        self.conn.close()


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float:
    """CPU-seconds spent not idle since boot, over all CPUs (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / CLK_TCK


def tree_seconds(pid: int) -> float:
    """CPU-seconds of a process (all its threads: mariadbd's connections), its reaped children
    and its live direct children (a postmaster: its backends)."""

    def stat(path: str) -> list[str] | None:
        try:
            with open(path, encoding="ascii") as f:
                return f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None

    total = 0
    mine = stat(f"/proc/{pid}/stat")
    if mine is None:
        return float("nan")
    total += sum(int(x) for x in mine[11:15])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat(f"/proc/{entry}/stat")
            if fields is not None and fields[1] == str(pid):
                total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


class CpuLedger:
    """What else ran on the machine during a run: all the CPU time the machine spent, less
    this process's (monitor thread), the child's (reaped children) and the benchmark
    server's. Reported as a fraction of the machine (all CPUs) over the run's wall time."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.ncpu = _common.nproc()

    def snapshot(self) -> tuple[float, float, float, float]:
        t = os.times()
        server = tree_seconds(self.server_pid) if self.server_pid else 0.0
        try:
            busy = machine_busy_seconds()
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        return (
            time.monotonic(),
            busy,
            t.user + t.system + t.children_user + t.children_system,
            server,
        )

    def foreign(self, a: tuple[float, ...], b: tuple[float, ...]) -> float:
        wall = b[0] - a[0]
        ours = (b[2] - a[2]) + (b[3] - a[3])
        return max(0.0, (b[1] - a[1]) - ours) / max(1e-9, wall * self.ncpu)


def cpu_busy(interval: float = 0.25) -> float:
    """Fraction of all CPUs busy over `interval` (from /proc/stat). Taken between two runs,
    when this benchmark is idle, it is the load of whatever else runs on the machine."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError):
        return float("nan")
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(args: argparse.Namespace) -> float:
    """Samples the machine's load before a run; with --quiet-below, waits (up to
    --quiet-wait seconds) until it is under that. Returns the last sample."""
    busy = cpu_busy()
    if args.quiet_below is None:
        return busy
    deadline = time.monotonic() + args.quiet_wait
    while busy > args.quiet_below and time.monotonic() < deadline:
        busy = cpu_busy(0.5)
    return busy
