"""The host's pools: every live process's published record, put together.

A record whose process is gone (``os.kill(pid, 0)`` fails, the process is a zombie, or the
pid now belongs to a process started later) or that has not been rewritten for ``STALE``
seconds is dropped and its file deleted. The calling process's own pools are read live.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from django_lido.observe import publish

# Per-pool sums over processes: snapshot key -> stats() key.
_SUMMED = {
    "size": "pool_size",
    "idle": "idle",
    "in_use": "in_use",
    "opening": "opening",
    "waiting": "requests_waiting",
    "max_size": "pool_max",
    "min_size": "pool_min",
    "requests": "requests_num",
    "timeouts": "requests_timeouts",
    "rejected": "requests_rejected",
    "connections_opened": "connections_num",
    "connection_errors": "connections_errors",
    "leaked": "connections_leaked",
}
# The histograms of stats(), by the prefix of their sums in the snapshot.
HISTOGRAMS = {"wait": "acquire_wait", "use": "usage", "create": "connection_open"}


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    state = publish.proc_start(pid)
    if state is None:
        return True  # no /proc to ask: os.kill said it exists
    if state[0] in ("Z", "X"):
        return False
    return started is None or state[1] == started


def read_records(directory: Path, now: float | None = None) -> list[dict[str, Any]]:
    """Every live, fresh record in ``directory``; dead and stale ones are deleted."""
    now = time.time() if now is None else now
    records = []
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for path in paths:
        try:
            pid = int(path.stem)
        except ValueError:
            continue
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            record = None
        if not _alive(pid, None if record is None else record.get("proc_start")):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if record is None or record.get("version") != publish.RECORD_VERSION:
            continue
        if now - float(record.get("written_at", 0)) > publish.STALE:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        records.append(record)
    return records


def _age_connections(record: dict[str, Any], now: float) -> None:
    """Brings the clock-driven fields of a record's connections up to ``now`` (a quiet
    process rewrites its record only every few seconds)."""
    age = max(0.0, now - float(record["written_at"]))
    if age == 0.0:
        return
    for pool in record["pools"]:
        for c in pool["connections"]:
            if c.get("held_for") is not None:
                c["held_for"] += age
            if c.get("transaction_for") is not None:
                c["transaction_for"] += age
            if c.get("statement_running") and c.get("last_statement_seconds") is not None:
                c["last_statement_seconds"] += age


def _pool_totals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = {}
    for record in records:
        for pool in record["pools"]:
            s = pool["stats"]
            t = totals.get(pool["name"])
            if t is None:
                t = totals[pool["name"]] = {
                    "name": pool["name"],
                    "alias": pool.get("alias"),
                    "vendor": pool.get("vendor"),
                    "database": pool.get("database"),
                    "processes": 0,
                    **dict.fromkeys(_SUMMED, 0),
                    **{f"{p}_{k}": 0 for p in HISTOGRAMS for k in ("count", "sum_ms")},
                    **{f"{p}_p99_ms_max": 0.0 for p in HISTOGRAMS},
                    **{f"{p}_buckets": [] for p in HISTOGRAMS},
                }
            t["processes"] += 1
            for key, stat in _SUMMED.items():
                t[key] += s.get(stat, 0)
            for prefix, hist in HISTOGRAMS.items():
                h = s.get(hist) or {}
                t[f"{prefix}_count"] += h.get("count", 0)
                t[f"{prefix}_sum_ms"] += h.get("sum_ms", 0.0)
                t[f"{prefix}_buckets"] = _add_buckets(t[f"{prefix}_buckets"], h.get("buckets"))
                # Quantiles do not add up across processes: the highest one is shown.
                t[f"{prefix}_p99_ms_max"] = max(t[f"{prefix}_p99_ms_max"], h.get("p99_ms", 0.0))
    return list(totals.values())


def _add_buckets(total: list[list[float]], more: list[list[float]] | None) -> list[list[float]]:
    """Cumulative counts below each bound, summed bound by bound. A process that gives no
    buckets (an older engine) adds nothing here: its durations count in ``+Inf`` only."""
    if not more:
        return total
    summed = {bound: n for bound, n in total}
    for bound, n in more:
        summed[bound] = summed.get(bound, 0) + n
    return [[bound, summed[bound]] for bound in sorted(summed)]


def _merged_queries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (pool, shape) over all processes, by total time. Counts and times add
    up; p50/p99 are the highest of the processes' (an upper bound), max the highest."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        for pool in record["pools"]:
            for q in pool["queries"]:
                key = (pool["name"], q["shape"])
                m = rows.get(key)
                if m is None:
                    rows[key] = {**q, "pool": pool["name"], "processes": 1}
                    continue
                m["processes"] += 1
                for k in ("count", "errors", "total_s"):
                    m[k] += q[k]
                for k in ("p50_s", "p99_s", "max_s"):
                    m[k] = max(m[k], q[k])
                if q.get("rows") is not None:
                    m["rows"] = (m.get("rows") or 0) + q["rows"]
                m["mean_s"] = m["total_s"] / m["count"] if m["count"] else 0.0
    return sorted(rows.values(), key=lambda r: r["total_s"], reverse=True)


def host_snapshot(runtime_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Every live process's pools on this host, with per-pool totals, all connections lent
    out, the merged top queries and the recent reports (long holds, leaks, idle
    transactions), newest last. JSON-serializable."""
    directory = Path(runtime_dir) if runtime_dir is not None else publish.runtime_dir(False)
    now = time.time()
    me = os.getpid()
    records = [r for r in read_records(directory, now) if r["pid"] != me]
    for record in records:
        _age_connections(record, now)
    if publish.open_pools():
        records.append(publish.process_record())
    records.sort(key=lambda r: r["pid"])
    connections = [
        {**c, "pid": r["pid"], "pool": p["name"]}
        for r in records
        for p in r["pools"]
        for c in p["connections"]
    ]
    leaks = sorted(
        (
            {**e, "pid": r["pid"], "pool": p["name"]}
            for r in records
            for p in r["pools"]
            for e in p["reports"]
        ),
        key=lambda e: e.get("at", 0.0),
    )
    return {
        "host": publish._HOST,
        "taken_at": now,
        "runtime_dir": str(directory),
        "processes": records,
        "pools": _pool_totals(records),
        "connections": connections,
        "queries": _merged_queries(records),
        "leaks": leaks,
    }
