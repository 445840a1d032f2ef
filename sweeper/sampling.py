"""TPE that never models a health-pruned region as the good one.

Sweeper marks a health-pruned trial infeasible. Optuna's TPE splits the finished trials
into a "below" (good) group of ``gamma(n)`` trials and an "above" group, and when there
are too few feasible trials to fill the good group it fills it with infeasible ones. A
sweep whose first trials all land in a sick region (every startup trial of a wide CTC
space at 16x-32x downsampling, say) then proposes more of the same, each stopped in
seconds, until the budget is gone with nothing completed. Here the sampler stays random
until the feasible trials can fill the good group on their own.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers._tpe.sampler import default_gamma
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def feasible(trial: FrozenTrial) -> bool:
    return not any(v > 0 for v in trial.constraints.values())


class FeasibleTPESampler(optuna.samplers.TPESampler):
    """``TPESampler`` that samples at random while the feasible finished trials are fewer
    than its good group (``gamma(n)`` of the ``n`` finished trials)."""

    def _too_few_feasible(self, study: optuna.Study) -> bool:
        trials = study._get_trials(deepcopy=False, states=FINISHED, use_cache=True)
        gamma = self._gamma or default_gamma
        return sum(feasible(t) for t in trials) < max(1, gamma(len(trials)))

    def _sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                         search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if search_space and self._too_few_feasible(study):
            return {}  # every parameter then comes from sample_independent: random
        return super()._sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if self._too_few_feasible(study):
            return self._random_sampler.sample_independent(study, trial, param_name, param_distribution)
        return super().sample_independent(study, trial, param_name, param_distribution)


__all__ = ["FeasibleTPESampler", "feasible"]
