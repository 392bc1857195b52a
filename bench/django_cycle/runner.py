"""The parent's side of a run: spawning a child, retrying, recording its result."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django_cycle.machine import CpuLedger, Monitor, wait_quiet
from django_cycle.variants import label

# What the children run: the package directory, whose __main__.py dispatches --child.
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class Runs:
    rate: list[float] = field(default_factory=list)
    fairness: list[float] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def child_argv(args: argparse.Namespace, key: str, scenario: str, db: dict[str, str]) -> list[str]:
    return [
        args.python,
        str(PACKAGE_DIR),
        "--child",
        key,
        scenario,
        "--db",
        json.dumps(db),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--size",
        str(args.size),
        *vendor_argv(args),
    ]


def vendor_argv(args: argparse.Namespace) -> list[str]:
    return ["--vendor", args.vendor, "--driver", args.driver]


def run_child(
    args: argparse.Namespace,
    key: str,
    scenario: str,
    db: dict[str, str],
    monitor: Monitor | None,
    ledger: CpuLedger | None = None,
) -> dict[str, Any]:
    argv = child_argv(args, key, scenario, db)
    busy_before = wait_quiet(args)
    before = ledger.snapshot() if ledger is not None else None
    if monitor is not None:
        monitor.start()
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=args.seconds * 10 + args.warmup + 120
        )
    except subprocess.TimeoutExpired as exc:
        return {"error": f"child timed out: {' '.join(argv)}\nstderr:\n{exc.stderr}"}
    finally:
        peak = monitor.stop() if monitor is not None else None
    foreign = ledger.foreign(before, ledger.snapshot()) if ledger and before else None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {
            "error": f"child exited {proc.returncode} without a result\nstdout:\n{proc.stdout}"
            f"\nstderr:\n{proc.stderr}"
        }
    result = json.loads(lines[-1])
    if proc.stderr.strip():
        result["stderr"] = proc.stderr.strip()
    if peak is not None:
        result["peak"] = peak
    result["busy_before"] = busy_before
    if foreign is not None:
        result["foreign"] = foreign
    return result


def run_measured(
    args: argparse.Namespace,
    key: str,
    scn: str,
    params: dict[str, str],
    monitor: Monitor,
    ledger: CpuLedger,
) -> dict[str, Any]:
    """One run; with --max-foreign, run again (up to --retries times) while other work on
    the machine took more than that fraction of it."""
    tries = 0
    while True:
        left = monitor.wait_idle()
        if left:
            print(f"  note: {left} backend(s) left before {key}", file=sys.stderr)
        res = run_child(args, key, scn, params, monitor if scn == "b" else None, ledger)
        res["tries"] = tries + 1
        foreign = res.get("foreign")
        if (
            args.max_foreign is None
            or foreign is None
            or foreign <= args.max_foreign
            or tries >= args.retries
            or "error" in res
        ):
            return res
        tries += 1
        print(
            f"  ({scn}) {key}: other work took {foreign:.0%} of the machine; again",
            file=sys.stderr,
        )


def record(runs: Runs, res: dict[str, Any]) -> None:
    if "error" in res:
        runs.errors.append(res["error"])
        if "rate" not in res:
            return
    runs.rate.append(res["rate"])
    if "fairness" in res:
        runs.fairness.append(res["fairness"])
    if "peak" in res:
        runs.peak.append(res["peak"])
    runs.extra.append(res)


def progress_line(res: dict[str, Any], args: argparse.Namespace) -> str:
    head = f"rep {res['rep'] + 1}/{args.repeat} ({res['scenario']}) "
    head += label(res["variant"], args.threads)
    line = head + (f": {res['rate']:,.0f}/s" if "rate" in res else ": no result")
    if "fairness" in res:
        line += f", fairness {res['fairness']:.2f}, peak {res.get('peak')}"
    if "prepared" in res:
        line += f", prepared {res['prepared']} ({res['cursor_class']})"
    line += f" [other load: {res.get('busy_before', float('nan')):.0%} before"
    if "foreign" in res:
        line += f", {res['foreign']:.0%} during"
    line += f", try {res['tries']}]" if res.get("tries", 1) > 1 else "]"
    if "error" in res:
        line += "\n    ERROR: " + res["error"].replace("\n", "\n    ")
    if args.verbose:
        shown = {k: v for k, v in res.items() if k not in ("stderr", "error")}
        line += f"\n    {json.dumps(shown)}"
    if res.get("stderr"):
        line += "\n    stderr: " + res["stderr"].replace("\n", "\n    ")
    return line
