"""TPE with health-pruned (infeasible) trials: a sick region is never modelled as the good one."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.sampling import FeasibleTPESampler
from sweeper.spec import load_spec
from sweeper.sweep import make_sampler

X = {"x": FloatDistribution(0.0, 1.0)}


def _sick(x: float) -> optuna.trial.FrozenTrial:
    t = create_trial(state=TrialState.PRUNED, params={"x": x}, distributions=X)
    t.system_attrs["constraints:health"] = 1.0
    return t


def _proposals(sampler: optuna.samplers.BaseSampler, trials: list[optuna.trial.FrozenTrial], n: int) -> list[float]:
    study = optuna.create_study(sampler=sampler)
    for t in trials:
        study.add_trial(t)
    out = []
    for _ in range(n):
        trial = study.ask(X)
        out.append(trial.params["x"])
        study.tell(trial, state=TrialState.FAIL)  # not finished: the history stays as it was
    return out


def test_an_all_sick_history_is_sampled_at_random_not_modelled() -> None:
    sick = [_sick(0.9 + 0.01 * i) for i in range(10)]
    assert all(t.constraints == {"health": 1.0} for t in sick)
    random = _proposals(optuna.samplers.RandomSampler(seed=0), sick, 12)
    plain = _proposals(optuna.samplers.TPESampler(n_startup_trials=4, seed=0), sick, 12)
    ours = _proposals(FeasibleTPESampler(n_startup_trials=4, seed=0), sick, 12)
    # past its startup, Optuna's TPE models the sick trials (one of them its "good" group)
    assert plain != random
    # ours has no feasible trial to call good: it samples as at startup
    assert ours == random


def test_random_until_the_feasible_trials_fill_the_good_group() -> None:
    one = create_trial(state=TrialState.COMPLETE, value=0.1, params={"x": 0.2}, distributions=X)
    # 21 finished trials: gamma = ceil(0.1 * 21) = 3 good ones needed, 1 feasible
    history = [one] + [_sick(0.5 + 0.02 * i) for i in range(20)]
    random = _proposals(optuna.samplers.RandomSampler(seed=0), history, 5)
    assert _proposals(FeasibleTPESampler(n_startup_trials=4, seed=0), history, 5) == random
    more = [create_trial(state=TrialState.COMPLETE, value=v, params={"x": x}, distributions=X)
            for x, v in ((0.25, 0.2), (0.3, 0.3))]
    assert _proposals(FeasibleTPESampler(n_startup_trials=4, seed=0), history + more, 5) != random


def test_with_feasible_trials_it_is_tpe() -> None:
    good = [create_trial(state=TrialState.COMPLETE, value=abs(x - 0.2), params={"x": x}, distributions=X)
            for x in (0.05, 0.18, 0.22, 0.5, 0.7, 0.95)]
    history = [*good, _sick(0.9), _sick(0.92)]
    ours = _proposals(FeasibleTPESampler(n_startup_trials=4, seed=0), history, 10)
    plain = _proposals(optuna.samplers.TPESampler(n_startup_trials=4, seed=0), history, 10)
    assert ours == plain  # enough feasible trials: the same proposals as Optuna's TPE


def test_studies_use_it() -> None:
    assert isinstance(make_sampler(load_spec("ctc_wide")), FeasibleTPESampler)
