"""``manage.py lido status|connections|queries|leaks|top``: the host's pools, from every live
process's published record (see ``django_lido.observe``). ``lido drain``, ``lido resize``
and ``lido queries --reset`` ask the publishing processes to act on their pools."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_lido.observe import host_snapshot, publish, runtime_dir

VIEWS = ("status", "connections", "queries", "leaks", "top")
ORDERS: dict[str, Callable[[dict[str, Any]], float]] = {
    "total": lambda q: q["total_s"],
    "count": lambda q: q["count"],
    "mean": lambda q: q["mean_s"],
    "p99": lambda q: q["p99_s"],
}
# ANSI: cursor home, clear the screen.
CLEAR = "\x1b[H\x1b[2J"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: numbers right-aligned, text left-aligned, the last column not
    padded (it holds the long text: statement shapes, labels)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, v in enumerate(values):
            if i == len(values) - 1:
                parts.append(v.rjust(widths[i]) if numeric[i] else v)
            else:
                parts.append(v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _process(title: str | None) -> str:
    """A process title without the directories of its program."""
    program, _, rest = (title or "").partition(" ")
    return _short(f"{program.rsplit('/', 1)[-1]} {rest}", 32)


def _who(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "?"
    name = (
        holder.get("greenlet")
        or holder.get("task")
        or holder.get("thread")
        or f"thread {holder.get('thread_id')}"
    )
    label = holder.get("label")
    return f"{name} ({label})" if label else str(name)


def _db(pool: dict[str, Any]) -> str:
    return " ".join(x for x in (pool.get("vendor"), pool.get("database")) if x) or "-"


def status_text(snap: dict[str, Any]) -> str:
    headers = ["PID", "PROCESS", "POOL", "DB", "SIZE", "IDLE", "USED", "OPENING", "WAITING",
               "MAX", "REQUESTS", "TIMEOUTS", "WAIT_P99_MS", "USE_P99_MS"]  # fmt: skip
    rows: list[list[object]] = []
    for r in snap["processes"]:
        for p in r["pools"]:
            s = p["stats"]
            rows.append([
                r["pid"], _process(r.get("title")), p["name"], _db(p), s["pool_size"],
                s["idle"], s["in_use"], s["opening"], s["requests_waiting"], s["pool_max"],
                s["requests_num"], s["requests_timeouts"], s["acquire_wait"]["p99_ms"],
                s["usage"]["p99_ms"],
            ])  # fmt: skip
    for t in snap["pools"]:
        rows.append([
            "total", f"{t['processes']} process" + ("es" if t["processes"] != 1 else ""),
            t["name"], _db(t), t["size"], t["idle"], t["in_use"], t["opening"], t["waiting"],
            t["max_size"], t["requests"], t["timeouts"], t["wait_p99_ms_max"],
            t["use_p99_ms_max"],
        ])  # fmt: skip
    head = (
        f"host {snap['host']}: {len(snap['processes'])} process(es) with pools, "
        f"{time.strftime('%H:%M:%S', time.localtime(snap['taken_at']))}"
    )
    if not rows:
        return f"{head}\nno pools (records in {snap['runtime_dir']})"
    return f"{head}\n{table(headers, rows)}"


def connections_text(snap: dict[str, Any], stacks: bool, limit: int | None = None) -> str:
    conns = sorted(snap["connections"], key=lambda c: c.get("held_for") or 0.0, reverse=True)
    if limit is not None:
        conns = conns[:limit]
    if not conns:
        return "no connections lent out"
    headers = ["PID", "POOL", "ID", "HELD_S", "STATE", "TXN_S", "HOLDER", "LAST_STATEMENT"]
    rows = []
    for c in conns:
        if c.get("statement_running"):
            state = "active"
        elif c.get("in_transaction"):
            state = "idle in transaction"
        else:
            state = "idle"
        rows.append([
            c["pid"], c["pool"], c["id"], c.get("held_for"), state, c.get("transaction_for"),
            _who(c.get("holder")), _short(c.get("last_statement"), 60),
        ])  # fmt: skip
    out = [table(headers, rows)]
    if stacks:
        for c in conns:
            out.append(_stack_text(f"#{c['id']} (pid {c['pid']}) taken at", c.get("stack")))
            out.append(_stack_text(f"#{c['id']} transaction began at", c.get("transaction_stack")))
    return "\n".join(x for x in out if x)


def _stack_text(title: str, stack: list[str] | None) -> str:
    if not stack:
        return ""
    return "\n".join([f"  {title}:", *(f"    {frame}" for frame in stack)])


def queries_text(snap: dict[str, Any], order: str, limit: int) -> str:
    rows_in = sorted(snap["queries"], key=ORDERS[order], reverse=True)[:limit]
    if not rows_in:
        return "no statements recorded"
    headers = ["POOL", "COUNT", "ERRORS", "TOTAL_S", "MEAN_MS", "P50_MS", "P99_MS", "MAX_MS",
               "ROWS", "SHAPE"]  # fmt: skip
    rows: list[list[object]] = []
    for q in rows_in:
        ms = [q[k] * 1000 for k in ("mean_s", "p50_s", "p99_s", "max_s")]
        shape = _short(q["shape"], 100)
        rows.append([q["pool"], q["count"], q["errors"], q["total_s"], *ms, q.get("rows"), shape])
    return table(headers, rows)


def leaks_text(snap: dict[str, Any], limit: int) -> str:
    events = snap["leaks"][-limit:]
    if not events:
        return "no long holds, leaks or idle transactions reported"
    out = []
    for e in events:
        at = time.strftime("%H:%M:%S", time.localtime(e.get("at", 0.0)))
        out.append(
            f"{at}  {e.get('kind')}  pid {e['pid']}  pool {e['pool']}  "
            f"connection #{e.get('connection_id')}  {e.get('seconds', 0.0):.1f} s  "
            f"holder {_who(e.get('holder'))}"
        )
        if e.get("last_statement"):
            out.append(f"  last statement: {_short(e['last_statement'], 200)}")
        out.append(_stack_text("taken at", e.get("stack")))
        out.append(_stack_text("transaction began at", e.get("transaction_stack")))
    return "\n".join(x for x in out if x)


class Command(BaseCommand):
    help = (
        "The connection pools of every process on this host: status (a table per process "
        "and host totals), connections (who holds what), queries (top statements), leaks "
        "(long holds, leaks, idle transactions, with stacks), top (status refreshed live); "
        "drain: every process (or --pid) replaces the connections of its pools (of --pool, or "
        "all); "
        "resize: the pools named --pool get --min-size and --max-size (in process --pid, or "
        "in every process)."
    )
    requires_system_checks: list[str] = []  # noqa: RUF012 - Django's own attribute

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("view", choices=(*VIEWS, "drain", "resize"))
        parser.add_argument("--runtime-dir", help="where the records are (default: runtime_dir())")
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
        parser.add_argument("--pool", help="only the pools with this name")
        parser.add_argument("--limit", type=int, default=20, help="rows of queries/leaks/top")
        parser.add_argument("--order", choices=sorted(ORDERS), default="total")
        parser.add_argument("--stacks", action="store_true", help="connections: with stacks")
        parser.add_argument(
            "--reset",
            action="store_true",
            help="queries: every process resets its query statistics (of --pool, or all)",
        )
        parser.add_argument("--min-size", type=int, help="resize: the new min_size")
        parser.add_argument("--max-size", type=int, help="resize: the new max_size")
        parser.add_argument(
            "--pid", type=int, help="drain, resize, queries --reset: only this process"
        )
        parser.add_argument("--interval", type=float, default=1.0, help="top: seconds")
        parser.add_argument(
            "--iterations", type=int, default=0, help="top: refreshes, then exit (0: until ^C)"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        view: str = opts["view"]
        if view == "resize":
            self._resize(opts)
            return
        if view == "drain" or (view == "queries" and opts["reset"]):
            self._request("drain" if view == "drain" else "reset_queries", opts)
            return
        if view == "top":
            self._top(opts)
            return
        snap = self._snapshot(opts)
        if opts["json"]:
            self.stdout.write(json.dumps(self._data(view, snap, opts), indent=2, default=str))
            return
        self.stdout.write(self._render(view, snap, opts))

    def _request(self, action: str, opts: dict[str, Any]) -> None:
        directory = Path(opts["runtime_dir"]) if opts["runtime_dir"] else runtime_dir()
        publish.request_action(action, directory, opts["pool"], pid=opts["pid"])
        pools = f"the pools named {opts['pool']!r}" if opts["pool"] else "all pools"
        who = f"process {opts['pid']}" if opts["pid"] else "every process"
        self.stdout.write(
            f"asked {who} publishing in {directory} to {publish.ACTIONS[action].does} "
            f"({pools}); each does within a second"
        )

    def _resize(self, opts: dict[str, Any]) -> None:
        needed = ("pool", "min_size", "max_size")
        missing = [f"--{k.replace('_', '-')}" for k in needed if opts[k] is None]
        if missing:
            raise CommandError(f"resize needs {', '.join(missing)}")
        directory = Path(opts["runtime_dir"]) if opts["runtime_dir"] else runtime_dir()
        try:
            publish.request_resize(
                opts["pool"], opts["min_size"], opts["max_size"], directory, opts["pid"]
            )
        except ValueError as e:
            raise CommandError(str(e)) from e
        who = f"process {opts['pid']}" if opts["pid"] else "every process"
        self.stdout.write(
            f"asked {who} publishing in {directory} to resize the pools named {opts['pool']!r} "
            f"to min_size {opts['min_size']}, max_size {opts['max_size']}; each does within a "
            "second"
        )

    def _data(self, view: str, snap: dict[str, Any], opts: dict[str, Any]) -> Any:
        if view == "status":
            return {k: snap[k] for k in ("host", "taken_at", "processes", "pools")}
        if view == "connections":
            return snap["connections"]
        if view == "queries":
            return sorted(snap["queries"], key=ORDERS[opts["order"]], reverse=True)[: opts["limit"]]
        return snap["leaks"][-opts["limit"] :]

    def _snapshot(self, opts: dict[str, Any]) -> dict[str, Any]:
        snap = host_snapshot(opts["runtime_dir"])
        name = opts["pool"]
        if name is not None:
            for r in snap["processes"]:
                r["pools"] = [p for p in r["pools"] if p["name"] == name]
            snap["processes"] = [r for r in snap["processes"] if r["pools"]]
            snap["pools"] = [p for p in snap["pools"] if p["name"] == name]
            for key in ("connections", "queries", "leaks"):
                snap[key] = [x for x in snap[key] if x["pool"] == name]
        return snap

    def _render(self, view: str, snap: dict[str, Any], opts: dict[str, Any]) -> str:
        if view == "status":
            return status_text(snap)
        if view == "connections":
            return connections_text(snap, opts["stacks"])
        if view == "queries":
            return queries_text(snap, opts["order"], opts["limit"])
        return leaks_text(snap, opts["limit"])

    def _top(self, opts: dict[str, Any]) -> None:
        interactive = sys.stdout.isatty() and not opts["json"]
        n = 0
        try:
            while True:
                snap = self._snapshot(opts)
                if opts["json"]:
                    text = json.dumps({k: snap[k] for k in ("taken_at", "pools")}, default=str)
                else:
                    text = "\n\n".join([
                        status_text(snap),
                        connections_text(snap, False, limit=opts["limit"]),
                        queries_text(snap, opts["order"], min(opts["limit"], 10)),
                    ])  # fmt: skip
                self.stdout.write((CLEAR if interactive else "") + text)
                self.stdout.flush()
                n += 1
                if opts["iterations"] and n >= opts["iterations"]:
                    return
                time.sleep(max(0.1, opts["interval"]))
        except KeyboardInterrupt:
            return
