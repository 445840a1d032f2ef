"""Throughput of 2 worker processes against 1 on ctc_digits trials (goal: at least 1.7).

Each run is a fresh SQLite study of --trials trials of the ctc_digits base config
(small model, --epochs epochs, --strips training strips), started through the CLI
as a user would (`sweeper run --workers N`). One worker gets every core as torch
threads; two workers get half each. Two ratios, medians over --repeats runs:

- trials: finished trials per second from the first trial's start to the last one's
  end (what the workers do once they run);
- end to end: per second of the whole command, process start, imports and the
  results folder (tables, plots) included: fixed costs that a short sweep does not
  amortize.

    python bench/workers.py [--trials 12] [--epochs 2] [--strips 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(trials/s while trials run, trials/s end to end)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "studies").mkdir()
        (Path(tmp) / "studies" / "b.yaml").write_text(
            "name: b\ntask: ctc_digits\nbudget: {trials: 1, epochs: 1}\npruner: {type: none}\n"
            "sampler: {type: random, seed: 0}\n"
            "params:\n  lr: {type: float, low: 2.0e-3, high: 5.0e-3, log: true}\n")
        cmd = [sys.executable, "-m", "sweeper", "run", "b", "--trials", str(args.trials), "--workers", str(workers),
               "--set", f"epochs={args.epochs}", "--set", f"train_strips={args.strips}", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        import optuna

        trials = optuna.load_study(study_name="b", storage=f"sqlite:///{tmp}/results/b/study.db").get_trials()
        span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
        return args.trials / span, args.trials / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--strips", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    one, two = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        one.append(run(1, args))
        two.append(run(2, args))
    print(f"{args.trials} trials x {args.epochs} epochs x {args.strips} strips, {os.cpu_count()} cores, "
          f"median of {args.repeats}")
    for i, what in enumerate(("trials", "end to end")):
        a, b = [x[i] for x in one], [x[i] for x in two]
        r1, r2 = statistics.median(a), statistics.median(b)
        print(f"{what:>10}: 1 worker {r1 * 60:5.1f} trials/min ({', '.join(f'{x * 60:.1f}' for x in a)}); "
              f"2 workers {r2 * 60:5.1f} ({', '.join(f'{x * 60:.1f}' for x in b)}); ratio {r2 / r1:.2f}")


if __name__ == "__main__":
    main()
