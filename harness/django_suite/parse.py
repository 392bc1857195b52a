"""Per-test outcomes from the ``-v 2`` output of ``runtests.py``, cross-checked against the
runner's own totals."""

from __future__ import annotations

import collections
import dataclasses
import re

# Outcomes as unittest prints them at -v 2 ("skipped 'reason'" is shortened to "skipped").
OUTCOMES = ("ok", "FAIL", "ERROR", "skipped", "expected failure", "unexpected success")
PASSED = frozenset({"ok", "expected failure"})
UNKNOWN = "unknown"  # a test was started but no outcome line was found
# unittest reports errors in class/module fixtures under these pseudo test names.
FIXTURE_NAMES = frozenset({"setUpClass", "tearDownClass", "setUpModule", "tearDownModule"})


# -v 2 lines: "test_x (mod.Class.test_x) ... <outcome>", with the first docstring line, if any,
# on a line of its own before " ... <outcome>"; a failed subtest adds "  test_x (mod.Class.test_x)
# [msg] (i=1) ... FAIL", an error in a class fixture "setUpClass (mod.Class) ... ERROR". What a
# test prints may end up before a line (--parallel) or before the outcome (--parallel 1).
_STATUS_WORDS = r"ok|FAIL|ERROR|skipped(?: .*)?|expected failure|unexpected success"
_HEAD = re.compile(r"(?P<sub>^  )?(?P<name>\w+) \((?P<paren>\w+(?:\.\w+)+)\)(?P<rest>.*)$")
_STATUS = re.compile(rf" \.\.\. .*?(?P<status>{_STATUS_WORDS})$")
_BARE_STATUS = re.compile(rf"^(?P<status>{_STATUS_WORDS})$")
_ERRORS_SECTION = re.compile(r"^={70}$", re.M)
_RAN = re.compile(r"^Ran (\d+) tests? in [\d.]+s$", re.M)
_FINAL = re.compile(r"^(OK|FAILED)(?: \((.*)\))?$", re.M)
_FINAL_KEYS = {
    "failures": "FAIL",
    "errors": "ERROR",
    "skipped": "skipped",
    "expected failures": "expected failure",
    "unexpected successes": "unexpected success",
}
_SEVERITY = {
    UNKNOWN: 0,
    "ok": 1,
    "skipped": 1,
    "expected failure": 1,
    "unexpected success": 2,
    "FAIL": 3,
    "ERROR": 4,
}


@dataclasses.dataclass
class ParsedOutput:
    """What ``parse_output`` found: outcome per test id and the runner's own totals."""

    outcomes: dict[str, str]  # "mod.Class.test_x" -> one of OUTCOMES or UNKNOWN
    fixture_errors: dict[str, str]  # "mod.Class.setUpClass" -> "ERROR"
    ran: int | None  # from "Ran N tests"
    final: str | None  # "OK (skipped=3)" / "FAILED (errors=1)"
    totals: dict[str, int]  # the numbers in the final line, keyed like OUTCOMES
    problems: list[str]  # inconsistencies: a non-empty list means the parse cannot be trusted


def _test_id(name: str, paren: str) -> tuple[str, bool] | None:
    """(id, is_fixture) for the ``name (paren)`` of a -v 2 line (``name`` may carry printed
    noise in front), or None if it is no test line."""
    if name.endswith(paren.rpartition(".")[2]):
        return paren, False
    fixture = next((f for f in FIXTURE_NAMES if name.endswith(f)), None)
    return (f"{paren}.{fixture}", True) if fixture else None


def parse_output(text: str) -> ParsedOutput:
    """Parse the ``-v 2`` output of ``runtests.py`` (``--parallel`` or not)."""
    outcomes: dict[str, str] = {}
    fixtures: dict[str, str] = {}
    problems: list[str] = []
    pending: str | None = None  # a test whose docstring line (and outcome) comes next
    seen: collections.Counter[str] = collections.Counter()  # outcome lines, not per test

    def record(test_id: str, status: str, fixture: bool, subtest: bool = False) -> None:
        status = "skipped" if status.startswith("skipped") else status
        if not subtest:
            seen[status] += 1
        target = fixtures if fixture else outcomes
        # The worst outcome wins: failed subtests follow their test's line, and under
        # --parallel an error in tearDownClass is reported against the class's last test.
        if _SEVERITY[status] > _SEVERITY[target.get(test_id, UNKNOWN)]:
            target[test_id] = status

    ran_matches = list(_RAN.finditer(text))
    end = ran_matches[-1].start() if ran_matches else len(text)
    errors_section = _ERRORS_SECTION.search(text, 0, end)  # tracebacks of failures from here on
    # split("\n"), not splitlines(): docstrings may hold \r or \f (files.tests has both)
    for line in text[: errors_section.start() if errors_section else end].split("\n"):
        head = _HEAD.search(line)
        found = _test_id(head["name"], head["paren"]) if head else None
        if found is None:
            if pending is not None:
                status = _STATUS.search(line) or _BARE_STATUS.match(line)
                if status:
                    record(pending, status["status"], False)
                pending = None
            continue
        pending = None
        test_id, fixture = found
        rest = head["rest"]
        if status := _STATUS.search(rest):
            record(test_id, status["status"], fixture, subtest=bool(head["sub"]))
        elif not head["sub"] and not fixture and (rest == "" or rest.startswith(" ... ")):
            outcomes.setdefault(test_id, UNKNOWN)
            pending = test_id  # the outcome follows a docstring line or printed output

    ran = int(ran_matches[-1][1]) if ran_matches else None
    finals = list(_FINAL.finditer(text))
    final = finals[-1].group(0) if finals else None
    totals = dict.fromkeys(OUTCOMES[1:], 0)
    if finals and finals[-1][2]:
        for part in finals[-1][2].split(", "):
            key, _, value = part.partition("=")
            if key in _FINAL_KEYS and value.isdigit():
                totals[_FINAL_KEYS[key]] = int(value)

    counts = collections.Counter(outcomes.values())
    if ran is None or final is None:
        problems.append("no 'Ran N tests' and OK/FAILED lines: the run did not finish")
    elif ran != len(outcomes):
        problems.append(f"parsed {len(outcomes)} tests but the runner ran {ran}")
    if counts[UNKNOWN]:
        unknown = sorted(t for t, o in outcomes.items() if o == UNKNOWN)
        problems.append(f"{len(unknown)} tests without an outcome line, e.g. {unknown[:3]}")
    if final is not None:
        for outcome in ("skipped", "expected failure", "unexpected success"):
            if seen[outcome] != totals[outcome]:
                problems.append(
                    f"parsed {seen[outcome]} {outcome!r} but the runner reports {totals[outcome]}"
                )
        # Failed subtests each count as a failure, so only check these loosely.
        bad = counts["FAIL"] + counts["ERROR"] + len(fixtures)
        reported = totals["FAIL"] + totals["ERROR"]
        if (bad == 0) != (reported == 0) or bad > reported:
            problems.append(f"parsed {bad} failed/errored tests but the runner reports {reported}")
    return ParsedOutput(outcomes, fixtures, ran, final, totals, problems)
