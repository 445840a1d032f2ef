"""Ablation wall time with 2 workers against 1 (goal: 2 workers take well under the time of 1).

Each run is a fresh folder and a fix-list ablation on ctc_digits (3 factors: lr, dropout,
warmup; 8 cells x --seeds seeds, --epochs epochs of --strips training strips), started through
the CLI as a user would: `sweeper ablate b --workers N`, and with --dask also
`sweeper ablate b --dask ADDRESS --workers 2` on a Dask LocalCluster of 2 worker processes
(one thread each) started once beforehand. One worker gets every core as torch threads, two
get half each. The arms are interleaved, so drift on a shared machine hits all alike; the
ratio is the median time of 1 worker over the median time of the other arm.

    python bench/ablation_workers.py [--seeds 2] [--epochs 5] [--strips 1500] [--repeats 3] [--dask]
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

STUDY = """\
name: b
task: ctc_digits
metric: wer
direction: minimize
budget: {{trials: 1, epochs: {epochs}}}
pruner: {{type: none}}
health: {{enabled: false}}  # every run trains all its epochs: the same work in every arm
fixed: {{model_size: small, train_strips: {strips}, val_strips: 200, batch_size: 32}}
params:
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  dropout: {{type: float, low: 0.0, high: 0.5}}
  warmup_epochs: {{type: int, low: 0, high: 2}}
ablation:
  seeds: {seeds}
  baseline: {{lr: 1.0e-3, dropout: 0.3, warmup_epochs: 0}}
  target: {{lr: 5.0e-3, dropout: 0.1, warmup_epochs: 1}}
"""


def run(args: argparse.Namespace, extra: list[str]) -> float:
    """Seconds of `sweeper ablate b EXTRA`, start to end, in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "studies").mkdir()
        (Path(tmp) / "studies" / "b.yaml").write_text(
            STUDY.format(epochs=args.epochs, strips=args.strips, seeds=args.seeds))
        cmd = [sys.executable, "-m", "sweeper", "ablate", "b", "--no-progress", *extra]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
        runs = sum(1 for line in proc.stdout.splitlines() if line.startswith("trial ") and " COMPLETE " in line)
        if runs != 8 * args.seeds:
            raise SystemExit(f"{' '.join(extra) or '1 worker'}: {runs} runs completed, not {8 * args.seeds}")
        return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--strips", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dask", action="store_true", help="also 2 workers on a Dask LocalCluster")
    args = parser.parse_args()
    arms: dict[str, list[str]] = {"1 worker": [], "2 workers": ["--workers", "2"]}
    cluster = None
    if args.dask:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        arms["2 Dask workers"] = ["--dask", cluster.scheduler_address, "--workers", "2"]
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    try:
        for _ in range(args.repeats):
            for arm, extra in arms.items():
                times[arm].append(run(args, extra))
    finally:
        if cluster is not None:
            cluster.close()
    print(f"fix-list ablation: 8 cells x {args.seeds} seeds = {8 * args.seeds} runs of {args.epochs} epochs x "
          f"{args.strips} strips, {os.cpu_count()} cores, median of {args.repeats}")
    one = statistics.median(times["1 worker"])
    for arm, ts in times.items():
        m = statistics.median(ts)
        print(f"{arm:>15}: {m:6.1f} s ({', '.join(f'{t:.1f}' for t in ts)}); 1 worker / this: {one / m:.2f}")


if __name__ == "__main__":
    main()
