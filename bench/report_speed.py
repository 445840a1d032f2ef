"""Seconds to read a 2,000-trial study from SQLite and write its whole report
(trials.csv, summary.md with every table and importance, four plots).

    python bench/report_speed.py [--trials 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeper.report import write_results
from sweeper.space import suggest
from sweeper.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
REASONS = ["underperforming", "grad_explosion", "ctc_infeasible", "blank_output", "dead_gradients"]


def build(url: str, spec, n: int) -> None:  # type: ignore[no-untyped-def]
    """A study shaped like a ctc_baseline sweep: 6 epochs, about a third pruned with reasons."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(storage=url, study_name=spec.name, sampler=optuna.samplers.RandomSampler(seed=0))
    epochs = spec.budget.epochs or 6
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial, spec.params)
        trial.set_user_attr("config", {**params, "epochs": epochs})
        curve = np.minimum(1.0, np.exp(-rng.uniform(0.1, 1.0) * np.arange(epochs)) + rng.uniform(0, 0.05))
        pruned = rng.random() < 0.35
        run = int(rng.integers(1, 3)) if pruned else epochs
        for e in range(run):
            trial.report(float(curve[e]), e)
        trial.set_user_attr("epochs_run", run)
        if pruned:
            reason = REASONS[int(rng.integers(len(REASONS)))]
            trial.set_user_attr("health.reason", reason)
            trial.set_user_attr("health.detail", f"synthetic evidence for {reason}")
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, float(curve[:run].min()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec("ctc_baseline", REPO / "studies")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/study.db"
        t0 = time.perf_counter()
        build(url, spec, args.trials)
        print(f"built a {args.trials}-trial study in {time.perf_counter() - t0:.0f} s")
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            study = optuna.load_study(study_name=spec.name, storage=url)
            write_results(study, spec, Path(tmp) / "results")
            times.append(time.perf_counter() - t0)
    print(f"read + full report of {args.trials} trials: {statistics.median(times):.2f} s "
          f"(median of {args.repeats}: {', '.join(f'{t:.2f}' for t in times)}; goal: at most 10 s)")


if __name__ == "__main__":
    main()
