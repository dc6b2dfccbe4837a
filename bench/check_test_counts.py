"""Fail unless a pytest run of the `cuda` tests really ran them (bench/gpu_session.sh).

    python bench/check_test_counts.py RUN.xml --collected N [--expect-skipped]

RUN.xml is the run's --junitxml report, N the number of tests `pytest -m cuda --collect-only`
found. On a GPU every one of the N must have run and passed: a skip counts as not run, so a
build without CUDA kernels or a torch that sees no GPU (everything skipped, pytest's exit code
0) fails here. --expect-skipped (the CPU dry run) asserts the opposite: all N skipped. Either
way N must be at least --min-collected, so a test file that stopped being collected shows.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import Counter

# the cuda tests collected when this was written (703) less some slack for merged or removed
# cases: far fewer means a file stopped being collected
MIN_COLLECTED = 600


def outcomes(xml_path: str) -> tuple[Counter, Counter]:
    """(outcome counts, skip reasons) of a junit xml report."""
    counts, reasons = Counter(), Counter()
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        tags = {child.tag: child for child in case}
        if "failure" in tags or "error" in tags:
            counts["failed"] += 1
        elif "skipped" in tags and tags["skipped"].get("message") == "collection skipped":
            # a whole module skipped while collecting (e.g. an optional import): not a test
            # that --collect-only counted, so not one of the N
            counts["modules skipped"] += 1
            reasons[f"module {case.get('name')}: collection skipped"] += 1
        elif "skipped" in tags:
            counts["skipped"] += 1
            reasons[tags["skipped"].get("message", "")[:120]] += 1
        else:
            counts["passed"] += 1
    return counts, reasons


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("xml")
    ap.add_argument("--collected", type=int, required=True)
    ap.add_argument("--min-collected", type=int, default=MIN_COLLECTED)
    ap.add_argument("--expect-skipped", action="store_true")
    args = ap.parse_args(argv)
    counts, reasons = outcomes(args.xml)
    total = sum(n for k, n in counts.items() if k != "modules skipped")
    print(f"cuda tests: {args.collected} collected, {total} in the report: {dict(counts)}")
    for reason, n in reasons.most_common(10):
        print(f"  skipped {n}: {reason}")
    problems = []
    if args.collected < args.min_collected:
        problems.append(
            f"only {args.collected} cuda tests collected (at least {args.min_collected} expected)"
        )
    if total != args.collected:
        problems.append(
            f"{total} tests in the report, {args.collected} collected (the run stopped early?)"
        )
    if args.expect_skipped:
        if counts["skipped"] != args.collected:
            problems.append("dry run: every cuda test should have been skipped")
    elif counts["passed"] != args.collected:
        problems.append(
            f"{counts['passed']} of {args.collected} cuda tests passed "
            f"({counts['failed']} failed, {counts['skipped']} skipped)"
        )
    for p in problems:
        print("FAIL: " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
