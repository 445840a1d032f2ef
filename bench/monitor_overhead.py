"""Cost of health monitoring: monitored / plain training-step time (goal: at most 1.03).

The ctc_digits medium model; each step is forward, backward, the pre-clip norm and
clipping, and the optimizer step, with or without ``HealthMonitor.after_backward``
(and its host read every ``check_every`` steps). Blocks of steps alternate between
the two so drift on a shared machine hits both alike; the ratio is the median
over blocks.

    python bench/monitor_overhead.py [--device cpu|cuda] [--blocks 15] [--steps 40]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--blocks", type=int, default=15, help="alternating blocks of each kind")
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
    monitor = HealthMonitor(model, check_every=20)

    def block(monitored: bool, start: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(args.steps):
            loss = run.loss(batches[(start + i) % len(batches)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            if monitored:
                monitor.after_backward(loss.detach(), norm.detach())
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    block(False, 0)
    block(True, 0)  # warm-up of both paths
    plain, watched = [], []
    for b in range(args.blocks):
        order = (False, True) if b % 2 == 0 else (True, False)
        for monitored in order:
            (watched if monitored else plain).append(block(monitored, b * args.steps))
    ratios = [w / p for w, p in zip(watched, plain, strict=True)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"ctc_digits {args.size} model on {name} ({torch.get_num_threads()} threads), "
          f"{args.blocks} blocks x {args.steps} steps each way")
    print(f"plain step     {statistics.median(plain) * 1e3:8.2f} ms (median)")
    print(f"monitored step {statistics.median(watched) * 1e3:8.2f} ms (median)")
    print(f"monitored / plain: {statistics.median(ratios):.3f} (median of per-block ratios; "
          f"quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f})")


if __name__ == "__main__":
    main()
