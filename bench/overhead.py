"""Per-trial orchestration overhead of a sweep, as a share of a ctc_baseline trial.

Prints, as medians over --repeats runs:
  - a real ctc_baseline trial's seconds (fit() of the study's base config);
  - sweeper's per-trial cost with training replaced by a function that only
    reports the same number of epochs (storage, sampling, reporting, user
    attributes, progress line);
  - a bare Optuna loop doing the same suggest/report/should_prune on the same
    kind of storage;
  - both on SQLite with the rollback journal (Optuna's default) and with WAL.

    python bench/overhead.py [--trials 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sweeper.storage as storage_module
import sweeper.sweep as sweep_module
from sweeper.space import base_config, suggest
from sweeper.spec import load_spec
from sweeper.sweep import Sweep
from sweeper.tasks import get_task
from sweeper.tasks.base import EvalResult
from sweeper.train import FitResult, fit

REPO = Path(__file__).resolve().parents[1]


def fake_fit(epochs: int):  # type: ignore[no-untyped-def]
    """Stands in for training: reports ``epochs`` evaluations and returns at once."""

    def run(config: Any, task: Any, reporter: Any = None, **kwargs: Any) -> FitResult:
        for epoch in range(epochs):
            if reporter is not None:
                reporter.report(epoch, EvalResult(metrics={"wer": 1.0 / (epoch + 2), "loss": 1.0}))
        return FitResult(metric="wer", best=1.0 / (epochs + 1), best_epoch=epochs - 1, last=1.0 / (epochs + 1),
                         epochs_run=epochs, seconds=0.0)

    return run


def sweeper_per_trial(spec: Any, trials: int, journal: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            url = f"sqlite:///{tmp}/study.db"
            storage_module.SQLITE_JOURNAL_MODE = journal
            sweep = Sweep(spec, storage=url, trials=trials, out=io.StringIO(), progress=False)
            started = time.perf_counter()
            sweep.run()
            return (time.perf_counter() - started) / trials
        finally:
            os.chdir(cwd)


def bare_optuna_per_trial(spec: Any, trials: int, journal: str, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        _prepare(Path(tmp) / "study.db", journal)
        # what an Optuna user builds: Optuna's own TPE and median pruner with the study's options
        study = optuna.create_study(storage=f"sqlite:///{tmp}/study.db",
                                    sampler=optuna.samplers.TPESampler(seed=spec.sampler.seed, **spec.sampler.options),
                                    pruner=optuna.pruners.MedianPruner(**spec.pruner.options),
                                    direction=spec.direction)

        def objective(trial: optuna.Trial) -> float:
            suggest(trial, spec.params)
            for epoch in range(epochs):
                trial.report(1.0 / (epoch + 2), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned
            return 1.0 / (epochs + 1)

        started = time.perf_counter()
        study.optimize(objective, n_trials=trials)
        return (time.perf_counter() - started) / trials


def _prepare(db: Path, journal: str) -> None:
    """Create the database file in the given journal mode (sweeper then keeps or sets WAL)."""
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA journal_mode={journal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-repeats", type=int, default=3, help="real ctc_baseline trials to time")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    spec = load_spec("ctc_baseline", REPO / "studies")
    epochs = spec.budget.epochs or 6
    task = get_task(spec.task)
    config = base_config(spec)
    trial_s = statistics.median(fit(config, task).seconds for _ in range(args.train_repeats))
    print(f"ctc_baseline trial (fit of the base config, {epochs} epochs): {trial_s:.2f} s  "
          f"(median of {args.train_repeats})")

    sweep_module.fit = fake_fit(epochs)  # type: ignore[assignment]
    rows = []
    for journal in ("delete", "wal"):
        ours = statistics.median(sweeper_per_trial(spec, args.trials, journal) for _ in range(args.repeats))
        bare = statistics.median(bare_optuna_per_trial(spec, args.trials, journal, epochs)
                                 for _ in range(args.repeats))
        rows.append((journal, ours, bare))
    print(f"\nper-trial orchestration, {args.trials} trials x {epochs} reports, median of {args.repeats}:")
    print(f"{'sqlite journal':<16}{'sweeper ms':>12}{'bare optuna ms':>16}{'sweeper/bare':>14}{'share of trial':>16}")
    for journal, ours, bare in rows:
        label = journal if journal == "wal" else "delete (default)"
        print(f"{label:<16}{ours * 1e3:>12.1f}{bare * 1e3:>16.1f}{ours / bare:>14.2f}{ours / trial_s:>15.2%}")


if __name__ == "__main__":
    main()
