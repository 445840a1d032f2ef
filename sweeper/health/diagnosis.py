"""Sweep-level diagnosis: when the first trials all fail the same health check, is a searched
value the cause (a region to steer away from) or none of them (a bug in the code)?"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ..tasks.base import format_value
from .verdict import Reason


@dataclass(frozen=True)
class Diagnosis:
    """``bug``: the same health code whatever the searched values (stop the sweep);
    otherwise a searched value explains it and the sweep goes on. ``message`` gives the evidence."""

    bug: bool
    message: str


def diagnose(trials: Sequence[FrozenTrial], first: int) -> Diagnosis | None:
    """If the finished trials so far (at least ``first`` of them) were all health-pruned with
    one reason, say whether a searched parameter explains it: its values in those trials
    confined to one end of its range (none in its lowest or its highest third; numeric
    choices count as a range), or to at most half of its (unordered) choices. A bug only
    when no parameter does; else None."""
    if first < 1:
        return None
    finished = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                      key=lambda t: t.number)
    if len(finished) < first:
        return None
    reasons = {t.user_attrs.get("health.reason") for t in finished}
    if len(reasons) != 1:
        return None
    reason = reasons.pop()
    if reason is None or reason == Reason.UNDERPERFORMING:
        return None
    n = len(finished)
    distributions = {k: d for t in finished for k, d in t.distributions.items()}
    spreads, explains = [], []
    for name, dist in sorted(distributions.items()):
        values = [t.params[name] for t in finished if name in t.params]
        found = _confinement(dist, values)
        if found is None:
            spreads.append(f"{name} {_span(dist, values)}")
        else:
            explains.append((*found, name))
    evidence = "; ".join(f"trial {t.number}: {t.user_attrs.get('health.detail', '')}" for t in finished[:first])
    if explains:
        shown = "; ".join(f"{name} {where}" for _, where, name in sorted(explains))  # least likely by chance first
        return Diagnosis(False, f"the first {n} trials were all pruned with {reason}, and searched values can "
                                f"explain it ({shown}): the sweep goes on, and the sampler steers away from the "
                                "region (health-pruned trials are infeasible to it)")
    varied = "; ".join(spreads) if spreads else "no searched parameters"
    return Diagnosis(True, f"the first {n} trials were all pruned with {reason} whatever their parameters ({varied}): "
                           f"most likely a bug in the model or data code, not a hyperparameter. Evidence: {evidence}")


def _confinement(dist: BaseDistribution, values: list[object]) -> tuple[float, str] | None:
    """Where ``values`` sit when they leave part of ``dist`` untried, with the chance of that
    under uniform sampling (for picking the tightest), or None when they cover it."""
    if not values:
        return None
    n = len(values)
    if isinstance(dist, CategoricalDistribution):
        seen = [c for c in dist.choices if c in values]
        k = len(dist.choices)
        if k < 2:
            return None
        shown = " or ".join(format_value(c) for c in seen)
        if all(isinstance(c, int | float) and not isinstance(c, bool) for c in dist.choices):
            # numbers: an order, so a region is an end of it (8, 16 and 32 of 2..32: its larger values)
            ordered = sorted(dist.choices)  # type: ignore[type-var]
            low = min(ordered.index(c) for c in seen) / (k - 1)
            high = max(ordered.index(c) for c in seen) / (k - 1)
            if low >= 1 / 3:
                return (sum(c >= min(seen) for c in ordered) / k) ** n, f"at its larger values ({shown}, of {k})"
            if high <= 2 / 3:
                return (sum(c <= max(seen) for c in ordered) / k) ** n, f"at its smaller values ({shown}, of {k})"
            return None
        if len(seen) * 2 > k:
            return None
        return (len(seen) / k) ** n, f"{shown} ({len(seen)} of its {k} choices)"
    if isinstance(dist, FloatDistribution | IntDistribution):
        positions = [_position(dist, float(v)) for v in values]  # type: ignore[arg-type]
        low, high = min(positions), max(positions)
        if low >= 1 / 3:
            return (1 - low) ** n, f"at its larger values ({_range(values)}, of {_bounds(dist)})"
        if high <= 2 / 3:
            return high ** n, f"at its smaller values ({_range(values)}, of {_bounds(dist)})"
    return None


def _position(dist: FloatDistribution | IntDistribution, value: float) -> float:
    """Where ``value`` lies in ``dist``'s range, 0 to 1, on the scale it is sampled on."""
    low, high = float(dist.low), float(dist.high)
    if high <= low:
        return 0.5
    if dist.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _range(values: list[object]) -> str:
    numbers = sorted(float(v) for v in values)  # type: ignore[arg-type]
    return f"{format_value(numbers[0])} to {format_value(numbers[-1])}"


def _bounds(dist: FloatDistribution | IntDistribution) -> str:
    return f"{format_value(dist.low)} to {format_value(dist.high)}"


def _span(dist: BaseDistribution, values: list[object]) -> str:
    if isinstance(dist, CategoricalDistribution):
        seen = [c for c in dist.choices if c in values]
        return f"{', '.join(format_value(c) for c in seen)} ({len(seen)} of {len(dist.choices)} choices)"
    if isinstance(dist, FloatDistribution | IntDistribution):
        return f"from {_range(values)} (range {_bounds(dist)})"
    return "varied"
