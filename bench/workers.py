"""Throughput of 2 worker processes against 1 on short ctc_digits trials (goal: at least 1.7).

Each run is a fresh SQLite study of --trials trials of the ctc_baseline base config
(small model, --epochs epochs, --strips training strips), started through the CLI
as a user would (`sweeper run --workers N`); the ratio is trials per second with 2
workers over trials per second with 1, medians over --repeats runs. One worker gets
every core as torch threads; two workers get half each.

    python bench/workers.py [--trials 8] [--epochs 2] [--repeats 3]
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


def run(workers: int, args: argparse.Namespace) -> float:
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
        return args.trials / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--strips", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    one, two = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        one.append(run(1, args))
        two.append(run(2, args))
    r1, r2 = statistics.median(one), statistics.median(two)
    print(f"{args.trials} trials x {args.epochs} epochs x {args.strips} strips, {os.cpu_count()} cores, "
          f"median of {args.repeats} (process start included)")
    print(f"1 worker : {r1 * 60:6.1f} trials/min  ({', '.join(f'{x * 60:.1f}' for x in one)})")
    print(f"2 workers: {r2 * 60:6.1f} trials/min  ({', '.join(f'{x * 60:.1f}' for x in two)})")
    print(f"2 workers / 1 worker: {r2 / r1:.2f}")


if __name__ == "__main__":
    main()
