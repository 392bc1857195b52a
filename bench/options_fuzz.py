"""Random pool options, as a user might type them, sorted by what the pool does with them:
crashed (the process died, hung, or raised something `except Exception` misses), refused
clearly (TypeError/ValueError naming the option), refused unclearly (another error, or one
that names no option), accepted (every value of a type and range the option table allows)
or accepted wrongly (a value of the wrong type, or out of the table's range, taken anyway).
Each case runs in its own interpreter with 2 GiB of address space and a 20 s limit.

    .venv/bin/python bench/options_fuzz.py [--cases 300] [--seed 1] [--python PY]

The same seed gives the same cases, so two wheels can be compared in one run with --python.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys

# What the table allows, written out here so that an older wheel can be judged by it too.
COUNTS = {"min_size": (0, 10_000), "max_size": (1, 10_000), "max_waiting": (0, 10**6),
          "max_uses": (0, 10**9)}  # fmt: skip
SECONDS = {
    "timeout": (False, 86_400, False),
    "max_lifetime": (False, 2_592_000, True),
    "max_idle": (False, 2_592_000, True),
    "check_after_idle": (True, 86_400, True),
    "turn_length": (True, 1, False),
}  # fmt: skip  (zero allowed, max, None allowed)
NAMES = [*COUNTS, *SECONDS, "lifetime_jitter", "probe"]

CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
opts = json.loads(sys.argv[1], object_hook=lambda d: d)
for k, v in list(opts.items()):
    if isinstance(v, dict) and "float" in v:
        opts[k] = float(v["float"])
from django_lido import Pool
class Conn:
    def rollback(self): pass
    def close(self): pass
try:
    with Pool(Conn, check=lambda c: None, **opts) as pool:
        pool.putconn(pool.getconn())
    print(json.dumps(["ok", ""]))
except Exception as e:
    print(json.dumps([type(e).__name__, str(e)]))
except BaseException as e:
    print(json.dumps(["BASE:" + type(e).__name__, str(e)]))
"""


def value(rng: random.Random) -> object:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randint(-5, 40)
    if kind == 1:
        return rng.choice([-1, 1]) * rng.randint(0, 2**70)
    if kind == 2:
        return rng.choice([float("nan"), float("inf"), -float("inf"), 1e19, 9.3e18, -0.5, 1e-9])
    if kind == 3:
        return round(rng.uniform(0, 5), 3)
    if kind == 4:
        return None
    if kind == 5:
        return rng.choice([True, False])
    if kind == 6:
        return rng.choice(["", "5", "no", "yes", "1.5"])
    return [rng.randint(0, 3)]


def allowed(name: str, v: object) -> bool:
    if name in COUNTS:
        lo, hi = COUNTS[name]
        return type(v) is int and lo <= v <= hi
    if name in SECONDS:
        zero, hi, none = SECONDS[name]
        if v is None:
            return none
        return type(v) in (int, float) and (v >= 0 if zero else v > 0) and v <= hi  # type: ignore[operator]
    if name == "lifetime_jitter":
        return type(v) in (int, float) and 0 <= v <= 0.5  # type: ignore[operator]
    return type(v) is bool  # probe


def classify(python: str, opts: dict[str, object]) -> str:
    enc = {k: {"float": repr(v)} if isinstance(v, float) else v for k, v in opts.items()}
    try:
        p = subprocess.run([python, "-c", CHILD, json.dumps(enc)], capture_output=True,
                           text=True, timeout=20)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "crashed (hung)"
    if p.returncode != 0 or not p.stdout.strip():
        return f"crashed (rc {p.returncode})"
    kind, msg = json.loads(p.stdout.strip().splitlines()[-1])
    if kind.startswith("BASE:"):
        return f"crashed ({kind[5:]})"
    if kind == "ok":
        return "accepted" if all(allowed(k, v) for k, v in opts.items()) else "accepted wrongly"
    if kind in ("TypeError", "ValueError") and any(k in msg for k in opts):
        return "refused clearly"
    return f"refused unclearly ({kind})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cases = [
        {n: value(rng) for n in rng.sample(NAMES, rng.randint(1, 3))} for _ in range(args.cases)
    ]
    tally: collections.Counter[str] = collections.Counter()
    for opts in cases:
        tally[classify(args.python, opts)] += 1
    print(f"{args.python}: {args.cases} cases, seed {args.seed}")
    for outcome, n in sorted(tally.items(), key=lambda kv: -kv[1]):
        print(f"  {n:>4}  {outcome}")


if __name__ == "__main__":
    main()
