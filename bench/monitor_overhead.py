"""Cost of health monitoring: monitored / plain training-step time (goal: at most 1.03).

The ctc_digits medium model (1-d convolutions and an LSTM, so the monitor's sequence
probes are on it too); each step is forward, backward, the pre-clip norm and clipping,
and the AdamW step, with or without the monitor. Two monitored ways, as the README
shows them: the optimizer handed and the pre-clip norm passed to ``after_backward``
("norm passed"), and the optimizer handed with no norm, so its step pre-hook reads the
gradient norm ("norm read by the hook"). Each adds its host read every ``check_every``
steps. Blocks of steps rotate between the three so drift on a shared machine hits all
alike; each ratio is the median over rounds.

    python bench/monitor_overhead.py [--device cpu|cuda] [--rounds 15] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeper.health import HealthMonitor
from sweeper.tasks import get_task

MODES = ("plain", "norm passed", "norm read by the hook")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of one block of each mode")
    parser.add_argument("--steps", type=int, default=40, help="steps per block")
    parser.add_argument("--size", default="medium")
    args = parser.parse_args()
    device = torch.device(args.device)
    task = get_task("ctc_digits")
    config = {**task.defaults, "model_size": args.size, "train_strips": 2000}
    run = task.setup(config, device)
    model = run.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    batches = list(run.train_batches(0))
    monitors = {mode: HealthMonitor(check_every=20) for mode in MODES[1:]}

    def block(mode: str, start: int) -> float:
        monitor = monitors.get(mode)
        if monitor is not None:
            monitor.watch(model, opt)  # the hooks of one monitor at a time
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(args.steps):
            loss = run.loss(batches[(start + i) % len(batches)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            if monitor is not None:
                monitor.after_backward(loss.detach(), norm.detach() if mode == "norm passed" else None)
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = (time.perf_counter() - t0) / args.steps
        if monitor is not None:
            monitor.close()
        return elapsed

    for mode in MODES:
        block(mode, 0)  # warm-up of every path
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        order = MODES[r % 3:] + MODES[:r % 3]
        for mode in order:
            times[mode].append(block(mode, r * args.steps))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"ctc_digits {args.size} model on {name} ({torch.get_num_threads()} threads), "
          f"{args.rounds} rounds x {args.steps} steps of each mode")
    for mode in MODES:
        line = f"{mode:22s} {statistics.median(times[mode]) * 1e3:8.2f} ms a step (median)"
        if mode != "plain":
            ratios = [m / p for m, p in zip(times[mode], times["plain"], strict=True)]
            q = statistics.quantiles(ratios, n=4)
            line += f"   / plain: {statistics.median(ratios):.3f} (median of per-round ratios; quartiles " \
                    f"{q[0]:.3f}-{q[2]:.3f})"
        print(line)


if __name__ == "__main__":
    main()
