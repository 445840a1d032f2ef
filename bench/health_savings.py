"""Compute a sweep saves with health pruning: the same study (same seed, same budget)
with health pruning on and off, over several sampler seeds. Prints epochs run,
trial-seconds and best metric per seed and their medians, and the reasons trials
were pruned.

    python bench/health_savings.py [--study ctc_wide] [--trials 20] [--seeds 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import dataclasses
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import TrialState

from sweeper.spec import HealthSpec, load_spec
from sweeper.sweep import Sweep, trial_seconds

REPO = Path(__file__).resolve().parents[1]


def run(study: str, seed: int, health: bool, trials: int) -> dict:
    import torch

    torch.set_num_threads(1)  # two runs share the two cores
    spec = load_spec(study, REPO / "studies")
    spec = dataclasses.replace(spec, sampler=dataclasses.replace(spec.sampler, seed=seed))
    if not health:
        spec = dataclasses.replace(spec, health=HealthSpec(enabled=False))
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
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    spec = load_spec(args.study, REPO / "studies")
    seeds = list(range(args.seeds))
    with cf.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {(seed, health): pool.submit(run, args.study, seed, health, args.trials)
                   for seed in seeds for health in (True, False)}
        results = {k: f.result() for k, f in futures.items()}
    full = args.trials * (spec.budget.epochs or 0)
    print(f"{spec.name}: {args.trials} trials x {spec.budget.epochs} epochs (= {full} epochs unpruned), "
          f"sampler seeds {seeds}, pruner {spec.pruner.type} in both arms")
    print(f"{'':<20}{'seed':>5}{'epochs':>8}{'trial-s':>10}{'best ' + spec.metric:>12}")
    for health, name in ((True, "health pruning on"), (False, "health pruning off")):
        for seed in seeds:
            r = results[seed, health]
            print(f"{name:<20}{seed:>5}{r['epochs']:>8}{r['trial_s']:>10.0f}{r['best']:>12.4f}")
    med = {h: {k: statistics.median(results[s, h][k] for s in seeds) for k in ("epochs", "trial_s", "best")}
           for h in (True, False)}
    for health, name in ((True, "health on, median"), (False, "health off, median")):
        m = med[health]
        print(f"{name:<20}{'':>5}{m['epochs']:>8g}{m['trial_s']:>10.0f}{m['best']:>12.4f}")
    saved = statistics.median(1 - results[s, True]["epochs"] / results[s, False]["epochs"] for s in seeds)
    saved_s = statistics.median(1 - results[s, True]["trial_s"] / results[s, False]["trial_s"] for s in seeds)
    print(f"epochs saved by health pruning: {saved:.0%} (median over seeds); trial-seconds saved: {saved_s:.0%}")
    for health in (True, False):
        total: collections.Counter[str] = collections.Counter()
        for s in seeds:
            total.update(results[s, health]["reasons"])
        print(f"outcomes with health {'on' if health else 'off'}, all seeds: {dict(total)}")


if __name__ == "__main__":
    main()
