"""Run zoo cases under the monitor and summarize: recall on the sick, false alarms on the healthy."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sweeper.health import HealthMonitor

from .cases import Case
from .loop import final

MINIMIZED = ("wer", "mse", "loss")


@dataclass(frozen=True)
class CaseResult:
    """One run of one case: its verdict (code None when not pruned), whether that was right,
    and for a healthy case the metric it reached (its evidence of health)."""

    case: str
    seed: int
    sick: bool
    accepted: tuple[str, ...]
    code: str | None
    detail: str
    epoch: int | None
    metric: str | None
    value: float
    learned: bool | None
    seconds: float
    last: tuple[tuple[str, float], ...] = ()  # the last evaluation's metrics

    @property
    def right(self) -> bool:
        return self.code in self.accepted if self.sick else self.code is None


def run_case(case: Case, seed: int, *, monitored: bool = True, epochs: int | None = None) -> CaseResult:
    """Train ``case`` once with ``seed`` (a fresh default ``HealthMonitor`` unless ``monitored`` is False)."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    monitor = HealthMonitor() if monitored else None
    try:
        out = case.trainer(monitor, epochs or case.epochs)
    except Exception as e:  # a monitor that crashes the run is a wrong answer, never a pass
        return CaseResult(case.name, seed, case.sick, case.accepted, "error", f"{type(e).__name__}: {e}", None,
                          None, math.nan, None, time.perf_counter() - started)
    metric = case.learns[0] if case.learns else None
    value = final(out.history, metric) if metric else math.nan
    learned = None
    if case.learns is not None and out.verdict is None:
        threshold = case.learns[1]
        learned = value <= threshold if case.learns[0] in MINIMIZED else value >= threshold
    v = out.verdict
    return CaseResult(case.name, seed, case.sick, case.accepted, v.reason.value if v else None, v.detail if v else "",
                      out.verdict_epoch, metric, value, learned, time.perf_counter() - started,
                      tuple(out.history[-1].items()) if out.history else ())


def summarize(results: Sequence[CaseResult]) -> str:
    """The zoo's report: overall recall and false alarms, per code, and every miss and false alarm named."""
    sick = [r for r in results if r.sick]
    healthy = [r for r in results if not r.sick]
    caught = sum(r.right for r in sick)
    alarms = [r for r in healthy if r.code is not None]
    seeds = sorted({r.seed for r in results})
    lines = [
        f"{len({r.case for r in sick})} sick and {len({r.case for r in healthy})} healthy trainers, "
        f"seeds {', '.join(map(str, seeds))}",
        f"recall: {caught}/{len(sick)} sick runs caught with an accepted code within 2 epochs "
        f"({caught / max(len(sick), 1):.1%})",
        f"false alarms: {len(alarms)}/{len(healthy)} healthy runs pruned",
        "",
        "| expected code | sick runs | caught | false alarms with this code |",
        "|---|---|---|---|",
    ]
    by_code: dict[str, list[CaseResult]] = defaultdict(list)
    for r in sick:
        by_code[r.accepted[0]].append(r)
    fired: dict[str, int] = defaultdict(int)
    for r in alarms:
        fired[str(r.code)] += 1
    for code in sorted({*by_code, *fired}):
        runs = by_code.get(code, [])
        lines.append(f"| {code} | {len(runs)} | {sum(r.right for r in runs)} | {fired.get(code, 0)} |")
    misses = [r for r in sick if not r.right]
    if misses:
        lines += ["", "misses:"]
        lines += [f"  {r.case} (seed {r.seed}): expected {'/'.join(r.accepted)}, got "
                  + (f"{r.code} at epoch {r.epoch}: {r.detail}" if r.code else "no verdict") for r in misses]
    if alarms:
        lines += ["", "false alarms:"]
        lines += [f"  {r.case} (seed {r.seed}): {r.code} at epoch {r.epoch}: {r.detail}" for r in alarms]
    weak = [r for r in healthy if r.learned is False]
    if weak:
        lines += ["", "healthy runs that did not reach their reference metric (not evidence of health):"]
        lines += [f"  {r.case} (seed {r.seed}): {r.metric} {r.value:.3f}" for r in weak]
    return "\n".join(lines)
