"""Compute a sweep saves with health pruning: the same study (same seed, same budget)
with health pruning on and off. Prints epochs run, trial-seconds, best metric, and
the reasons trials were pruned.

    python bench/health_savings.py [--study ctc_wide] [--trials 20]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import TrialState

from sweeper.spec import HealthSpec, load_spec
from sweeper.sweep import Sweep, trial_seconds

REPO = Path(__file__).resolve().parents[1]


def run(spec, trials: int) -> dict:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            started = time.perf_counter()
            outcome = Sweep(spec, trials=trials, out=io.StringIO(), progress=False).run()
            wall = time.perf_counter() - started
        finally:
            os.chdir(cwd)
    done = outcome.study.get_trials(deepcopy=False)
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    reasons = collections.Counter(t.user_attrs.get("health.reason") or "completed" for t in done)
    return {
        "epochs": sum(int(t.user_attrs.get("epochs_run") or 0) for t in done),
        "trial_s": sum(trial_seconds(t) or 0.0 for t in done),
        "wall_s": wall,
        "best": min(t.value for t in complete) if complete else float("nan"),
        "reasons": dict(reasons),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="ctc_wide")
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    spec = load_spec(args.study, REPO / "studies")
    with_health = run(spec, args.trials)
    without = run(dataclasses.replace(spec, health=HealthSpec(enabled=False)), args.trials)
    full = args.trials * (spec.budget.epochs or 0)
    print(f"{spec.name}: {args.trials} trials x {spec.budget.epochs} epochs (= {full} epochs unpruned), "
          f"sampler seed {spec.sampler.seed}, pruner {spec.pruner.type} in both runs")
    print(f"{'':<22}{'epochs':>8}{'trial-s':>10}{'best ' + spec.metric:>12}")
    for name, r in (("health pruning on", with_health), ("health pruning off", without)):
        print(f"{name:<22}{r['epochs']:>8}{r['trial_s']:>10.0f}{r['best']:>12.4f}")
    print(f"epochs saved by health pruning: {1 - with_health['epochs'] / without['epochs']:.0%}; "
          f"trial-seconds saved: {1 - with_health['trial_s'] / without['trial_s']:.0%}")
    print(f"outcomes with health on:  {with_health['reasons']}")
    print(f"outcomes with health off: {without['reasons']}")


if __name__ == "__main__":
    main()
