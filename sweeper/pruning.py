"""Performance pruning that judges a trial at equal progress, never inside its warmup.

Optuna's ``MedianPruner`` compares a trial's value at epoch ``e`` with the completed
trials' values at ``e``. In a sweep over ``warmup_epochs`` that compares a trial still
ramping its learning rate up with trials that have trained at full rate for epochs; and
since only completed trials are compared against, and only trials above the median
complete, the bar ratchets up until nearly every later trial is pruned. Here a trial's
progress is counted in epochs past its own learning-rate warmup, and it is compared
with every trial (completed or performance-pruned) at the same progress, best value so
far against best value so far. A trial that ended before that progress (pruned earlier,
or stopped early) stays in the reference with its best value: leaving it out would judge
late epochs against the survivors only, the same ratchet. Health-pruned trials are not in
the reference: they were stopped for being sick, not slow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .health.verdict import Reason


def warmup_of(trial: FrozenTrial) -> int:
    """Epochs of the trial's learning-rate warmup (its config's ``warmup_epochs``,
    rounded up: the first epoch at full rate is the one after)."""
    config = trial.user_attrs.get("config")
    value = config.get("warmup_epochs") if isinstance(config, Mapping) else None
    if value is None:
        value = trial.params.get("warmup_epochs", 0)
    try:
        w = float(value or 0)
    except (TypeError, ValueError):
        return 0
    return max(0, math.ceil(w)) if math.isfinite(w) else 0


def earliest_prune_step(trial: FrozenTrial, n_warmup_steps: int) -> int:
    """The first epoch (0-based) at which ``trial`` may be judged: its own warmup, then
    the pruner's ``n_warmup_steps`` more."""
    return warmup_of(trial) + n_warmup_steps


def in_warmup(trial: FrozenTrial) -> bool:
    """Whether the trial's last report came from inside its learning-rate warmup."""
    return trial.last_step is None or trial.last_step < warmup_of(trial)


def epochs_of(trial: FrozenTrial) -> int | None:
    """The trial's epoch budget (its config's ``epochs``), when it has one."""
    config = trial.user_attrs.get("config")
    value = config.get("epochs") if isinstance(config, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _best_until(trial: FrozenTrial, step: int, direction: StudyDirection) -> float:
    values = [v for s, v in trial.intermediate_values.items() if s <= step and not math.isnan(v)]
    if not values:
        return math.nan
    return max(values) if direction == StudyDirection.MAXIMIZE else min(values)


class ProgressPruner(BasePruner):
    """Prune a trial whose best value so far is worse than the ``percentile`` of the other
    trials' best values at the same progress (epochs past each one's warmup).

    Same options as Optuna's ``PercentilePruner``, with these meanings:
    ``n_startup_trials`` completed trials before anything is pruned; ``n_warmup_steps``
    epochs past a trial's own learning-rate warmup before it can be judged;
    ``interval_steps`` epochs between judgements; ``n_min_trials`` reference trials at
    the same progress needed to judge at all. A trial is never pruned at its last epoch.
    """

    def __init__(self, percentile: float = 50.0, n_startup_trials: int = 5, n_warmup_steps: int = 0,
                 interval_steps: int = 1, *, n_min_trials: int = 1) -> None:
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be within [0, 100], got {percentile}")
        self.percentile = percentile
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.interval_steps = max(1, interval_steps)
        self.n_min_trials = max(1, n_min_trials)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        start = earliest_prune_step(trial, self.n_warmup_steps)
        if step < start or (step - start) % self.interval_steps:
            return False
        total = epochs_of(trial)
        if total is not None and step >= total - 1:
            return False  # its epochs are spent: a completed trial tells the sampler more
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if sum(t.state == TrialState.COMPLETE for t in finished) < self.n_startup_trials:
            return False
        direction = study.direction
        mine = _best_until(trial, step, direction)
        if math.isnan(mine):
            return True
        progress = step - warmup_of(trial)
        refs = reference_values(finished, progress, direction)
        if len(refs) < self.n_min_trials:
            return False
        q = self.percentile if direction == StudyDirection.MINIMIZE else 100.0 - self.percentile
        bar = float(np.percentile(np.asarray(refs, dtype=float), q))
        return mine > bar if direction == StudyDirection.MINIMIZE else mine < bar


def reference_values(trials: Sequence[FrozenTrial], progress: int, direction: StudyDirection) -> list[float]:
    """Each judged trial's best value up to ``progress`` epochs past its warmup (its best of
    all, if it ended sooner): completed trials and those the performance pruner stopped."""
    out = []
    for t in trials:
        if t.state == TrialState.PRUNED and t.user_attrs.get("health.reason") not in (None, Reason.UNDERPERFORMING):
            continue
        at = warmup_of(t) + progress
        if at not in t.intermediate_values and (t.last_step is None or t.last_step > at):
            continue
        v = _best_until(t, at, direction)
        if not math.isnan(v):
            out.append(v)
    return out


class WarmupGuard(BasePruner):
    """Any Optuna pruner, held off until the trial's learning-rate warmup is over."""

    def __init__(self, inner: BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return not in_warmup(trial) and self.inner.prune(study, trial)


class GuardedHyperband(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband, held off until the trial's learning-rate warmup is over (a
    subclass, not a wrapper: TPE reads the brackets of a ``HyperbandPruner`` it finds)."""

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return not in_warmup(trial) and super().prune(study, trial)


__all__ = ["GuardedHyperband", "ProgressPruner", "WarmupGuard", "earliest_prune_step", "in_warmup", "reference_values",
           "warmup_of"]
