"""Fuzz the command line: N generated inputs (study files, arguments, `sweeper train` configs),
each run through `sweeper.cli.main` in a fresh folder; counts the inputs tried, how each ended,
and every broken promise (a traceback, exit 2 with more than one line or with files written,
exit 1 without a reason, any other exit code).

    python bench/fuzz.py --examples 2000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.fuzzing import Case, broken_promise, cases, run_case


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--show", type=int, default=20, help="broken promises to print")
    ap.add_argument("--reasons", action="store_true", help="also count the exit-2 messages")
    args = ap.parse_args()

    codes: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    failed_runs: list[tuple[str, Case]] = []
    broken: list[tuple[str, Case]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "case"

        @seed(args.seed)
        @settings(max_examples=args.examples, deadline=None, database=None, phases=(Phase.generate,),
                  suppress_health_check=list(HealthCheck))
        @given(case=cases())
        def one(case: Case) -> None:
            out = run_case(case, folder)
            codes[f"{case.argv[0]} exit {out.code}"] += 1
            if args.reasons and out.code == 2:
                reasons[out.stderr.strip().split(": ")[-1][:50]] += 1
            if out.code == 1:
                failed_runs.append((out.stderr.strip().splitlines()[-1][:300], case))
            why = broken_promise(case, out)
            if why is not None:
                broken.append((why, case))

        one()
    tried = sum(codes.values())
    print(f"{tried} inputs in {time.monotonic() - started:.0f} s; broken promises: {len(broken)}")
    for key, n in sorted(codes.items()):
        print(f"  {key:<18} {n}")
    for reason, n in reasons.most_common(40):
        print(f"  exit 2: {n:>4} {reason}")
    kinds = collections.Counter(why.split(":")[0] for why, _ in broken)
    for kind, n in kinds.most_common():
        print(f"  broken: {kind} x{n}")
    for line, case in failed_runs[: args.show]:
        print(f"- exit 1: {line}\n    {case.argv}")
    for why, case in broken[: args.show]:
        print(f"- {why}\n    {case.show()[:600]}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
