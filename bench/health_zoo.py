"""The health zoo: every sick and healthy trainer of ``tests/zoo`` under a default
``HealthMonitor``, over seeds. Prints recall (sick runs caught with an accepted code
within 2 epochs) and false alarms (healthy runs pruned at all), per code, with each
miss and false alarm named.

    python bench/health_zoo.py [--seeds 3] [--first-seed 0] [--jobs 2] [--cases NAME ...] [--quick]
    python bench/health_zoo.py --unmonitored     # the sick cases without the monitor: are they sick?

Runs are spread over ``--jobs`` processes of one torch thread each.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.zoo import CASES, CaseResult, get_case, run_case, summarize


def _one(job: tuple[str, int, bool]) -> CaseResult:
    import torch

    torch.set_num_threads(1)
    name, seed, monitored = job
    case = get_case(name)
    return run_case(case, seed, monitored=monitored, epochs=None if monitored else 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cases", nargs="*", help="only these cases")
    parser.add_argument("--quick", action="store_true", help="only the subset the default tests run")
    parser.add_argument("--unmonitored", action="store_true",
                        help="train the sick cases for 6 epochs without the monitor and print their metrics")
    args = parser.parse_args()
    cases = [c for c in CASES if (not args.cases or c.name in args.cases) and (not args.quick or c.quick)]
    if args.unmonitored:
        cases = [c for c in cases if c.sick]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(c.name, seed, not args.unmonitored) for c in cases for seed in seeds]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_one, jobs))
    if args.unmonitored:
        for r in results:
            shown = ", ".join(f"{k} {v:.3g}" for k, v in r.last if k != "epoch")
            print(f"{r.case:40s} seed {r.seed}: after 6 epochs {shown or 'no evaluation'}")
    else:
        print(summarize(results))
    slowest = sorted(results, key=lambda r: -r.seconds)[:3]
    print(f"\n{len(results)} runs in {time.perf_counter() - started:.0f} s on {args.jobs} processes "
          f"(slowest: {', '.join(f'{r.case} {r.seconds:.1f} s' for r in slowest)})")


if __name__ == "__main__":
    main()
