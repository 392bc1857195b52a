"""Aborts per N interpreter exits, and how long exit takes, while threads are busy in the
pool: each mode of harness/exit_child.py (rollback on return, round-trip check, callers
connecting to a silent server, the maintenance thread connecting, a Django request loop),
against one throwaway PostgreSQL. Run from the repository root after ./scripts/setup.sh:

    .venv/bin/python bench/exit_safety.py [--runs 40] [--python .venv313/bin/python]

Exit time is from the child's last line before ``sys.exit`` to the end of its process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root, with harness/, on sys.path)

from harness.exit_child import MODES
from harness.servers import PostgresServer

CHILD = Path(__file__).resolve().parent.parent / "harness" / "exit_child.py"


def exit_once(python: str, mode: str, conninfo: str) -> tuple[int, float]:
    p = subprocess.Popen(
        [python, str(CHILD), mode, conninfo],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd="/",
    )
    assert p.stdout is not None
    p.stdout.readline()  # "exiting N"
    t = time.monotonic()
    rc = p.wait(timeout=60)
    return rc, time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40, help="exits per mode")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the children")
    args = ap.parse_args()
    with PostgresServer() as pg:
        print(f"{args.python}: {args.runs} exits per mode")
        print(f"{'mode':<12} {'aborts':>8} {'other rc':>9} {'exit median':>12} {'exit max':>9}")
        for mode in MODES:
            runs = [exit_once(args.python, mode, pg.conninfo()) for _ in range(args.runs)]
            aborts = sum(rc == -6 for rc, _ in runs)
            other = sum(rc not in (0, -6) for rc, _ in runs)
            times = [t for _, t in runs]
            print(
                f"{mode:<12} {aborts:>5}/{args.runs:<2} {other:>9} "
                f"{statistics.median(times) * 1000:>9.0f} ms {max(times) * 1000:>6.0f} ms"
            )


if __name__ == "__main__":
    main()
