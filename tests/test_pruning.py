"""Performance pruning: never inside a trial's learning-rate warmup, judged at equal progress."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from sweeper.pruning import (
    GuardedHyperband,
    ProgressPruner,
    WarmupGuard,
    earliest_prune_step,
    reference_values,
    warmup_of,
)
from sweeper.spec import PrunerSpec, load_spec
from sweeper.sweep import Sweep, make_pruner

# A trial's score stays at 0 while its learning rate warms up, then climbs towards its
# quality q: the shape of a real run with warmup. Nothing is trained, so a study is fast.
CURVES = '''\
def train(config, run):
    best = 0.0
    for epoch in range(config["epochs"]):
        progress = epoch - config["warmup_epochs"]
        score = 0.0 if progress < 0 else config["q"] * (1 - 0.5 ** (progress + 1))
        best = max(best, score)
        run.report(epoch, {"score": score})
    return best
'''

STUDY = """\
name: warm
task: curves:train
metric: score
direction: maximize
budget: {{trials: 12, epochs: 6}}
sampler: {{type: random, seed: 3}}
pruner: {pruner}
health: false
params:
  warmup_epochs: {{type: int, low: 0, high: 3}}
  q: {{type: float, low: 0.5, high: 1.0}}
"""

PRUNERS = {
    "median": "{type: median, n_startup_trials: 2, n_warmup_steps: 1}",
    "percentile": "{type: percentile, percentile: 75, n_startup_trials: 2}",
    "hyperband": "{type: hyperband, min_resource: 1, reduction_factor: 2}",
    "successive_halving": "{type: successive_halving, min_resource: 1, reduction_factor: 2}",
    "threshold": "{type: threshold, lower: 0.3}",
}


@pytest.mark.parametrize("kind", list(PRUNERS))
def test_no_trial_is_performance_pruned_inside_its_warmup(kind: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "curves.py").write_text(CURVES)
    (tmp_path / "warm.yaml").write_text(STUDY.format(pruner=PRUNERS[kind]))
    monkeypatch.chdir(tmp_path)
    spec = load_spec(str(tmp_path / "warm.yaml"))
    study = Sweep(spec, out=io.StringIO(), progress=False).run().study
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    # the study must put trials in the position to be wrongly pruned: some with a long
    # warmup, and a pruner that does prune
    assert any(t.params["warmup_epochs"] >= 2 for t in trials)
    assert pruned, f"the {kind} pruner pruned nothing: the test shows nothing"
    for t in pruned:
        assert t.user_attrs["health.reason"] == "underperforming"
        assert t.last_step >= t.params["warmup_epochs"], (
            f"trial {t.number} was pruned at epoch {t.last_step}, inside its {t.params['warmup_epochs']}-epoch warmup")
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert len(t.intermediate_values) == 6


OPTUNA_PRUNERS = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    "percentile": lambda: optuna.pruners.PercentilePruner(75, n_startup_trials=2),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=6, reduction_factor=2),
    "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    "threshold": lambda: optuna.pruners.ThresholdPruner(lower=0.3),
}


@pytest.mark.parametrize("kind", list(PRUNERS))
def test_optunas_own_pruners_prune_inside_the_warmup(kind: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the guard is for: the same study under Optuna's own pruner, with the same
    options, prunes trials at an epoch where their learning rate was still warming up."""
    (tmp_path / "curves.py").write_text(CURVES)
    (tmp_path / "warm.yaml").write_text(STUDY.format(pruner=PRUNERS[kind]))
    monkeypatch.chdir(tmp_path)
    spec = load_spec(str(tmp_path / "warm.yaml"))

    class PlainOptuna(Sweep):
        def make_pruner(self) -> optuna.pruners.BasePruner:
            return OPTUNA_PRUNERS[kind]()

    study = PlainOptuna(spec, out=io.StringIO(), progress=False).run().study
    inside = [t for t in study.get_trials(deepcopy=False)
              if t.state == TrialState.PRUNED and t.last_step < t.params["warmup_epochs"]]
    assert inside


def _trial(warmup: int, values: list[float], state: TrialState = TrialState.COMPLETE,
           reason: str | None = None) -> optuna.trial.FrozenTrial:
    attrs = {"config": {"warmup_epochs": warmup}}
    if reason:
        attrs["health.reason"] = reason
    return create_trial(state=state, value=max(values) if state == TrialState.COMPLETE else None,
                        params={"warmup_epochs": warmup}, distributions={"warmup_epochs": IntDistribution(0, 5)},
                        user_attrs=attrs, intermediate_values=dict(enumerate(values)))


def test_reference_is_taken_at_equal_progress_past_each_warmup() -> None:
    fast = _trial(0, [0.5, 0.6, 0.7, 0.8])
    slow = _trial(2, [0.0, 0.0, 0.5, 0.55])
    stopped = _trial(1, [0.0, 0.2], TrialState.PRUNED, reason="underperforming")
    sick = _trial(0, [0.0], TrialState.PRUNED, reason="grad_explosion")
    # one epoch past warmup: fast at epoch 1, slow at epoch 3; stopped ended at progress 1 (its
    # epoch 2 never ran): it stays in the reference with its best, or only survivors would be
    assert sorted(reference_values([fast, slow, stopped, sick], 1, StudyDirection.MAXIMIZE)) == [0.2, 0.55, 0.6]
    # and at every later progress: the bar is the median of all judged trials, not of the survivors
    assert sorted(reference_values([fast, slow, stopped, sick], 3, StudyDirection.MAXIMIZE)) == [0.2, 0.55, 0.8]
    gap = create_trial(state=TrialState.COMPLETE, value=0.3, intermediate_values={1: 0.3},
                       user_attrs={"config": {"warmup_epochs": 0}})
    # no report at epoch 0, but it ran past it: not carried back
    assert reference_values([gap], 0, StudyDirection.MAXIMIZE) == []
    # at progress 0 the performance-pruned trial counts, the health-pruned one does not
    assert sorted(reference_values([fast, slow, stopped, sick], 0, StudyDirection.MAXIMIZE)) == [0.2, 0.5, 0.5]
    # best so far, not the value at that epoch
    dip = _trial(0, [0.9, 0.1])
    assert reference_values([dip], 1, StudyDirection.MAXIMIZE) == [0.9]
    assert reference_values([dip], 1, StudyDirection.MINIMIZE) == [0.1]


def test_warmup_of_reads_the_config_and_rounds_up() -> None:
    assert warmup_of(_trial(2, [0.0])) == 2
    t = create_trial(state=TrialState.COMPLETE, value=1.0, params={"warmup_epochs": 1.2},
                     distributions={"warmup_epochs": FloatDistribution(0.0, 5.0)}, user_attrs={})
    assert warmup_of(t) == 2
    assert earliest_prune_step(t, 1) == 3
    bare = create_trial(state=TrialState.COMPLETE, value=1.0)
    assert warmup_of(bare) == 0


def test_progress_pruner_judges_a_late_starter_by_its_progress() -> None:
    study = optuna.create_study(direction="maximize", pruner=ProgressPruner(n_startup_trials=2))
    for q in (0.6, 0.7, 0.8):
        study.add_trial(_trial(0, [q * 0.5, q * 0.75, q * 0.875, q]))
    # warmup 2, then the curve of a q=0.9 trial: better than the median at equal progress
    trial = study.ask({"warmup_epochs": IntDistribution(0, 5)})
    trial.set_user_attr("config", {"warmup_epochs": 2})
    for epoch, value in enumerate([0.0, 0.0, 0.45]):
        trial.report(value, epoch)
        assert not trial.should_prune(), f"pruned at epoch {epoch}"
    # a q=0.5 trial with the same warmup is below the median at equal progress
    weak = study.ask({"warmup_epochs": IntDistribution(0, 5)})
    weak.set_user_attr("config", {"warmup_epochs": 2})
    weak.report(0.0, 0)
    weak.report(0.0, 1)
    assert not weak.should_prune()
    weak.report(0.25, 2)
    assert weak.should_prune()


def test_make_pruner_maps_each_kind() -> None:
    spec = load_spec("ctc_baseline")
    assert isinstance(make_pruner(spec), ProgressPruner)
    kinds = {"percentile": ({"percentile": 25.0}, ProgressPruner), "hyperband": ({}, GuardedHyperband),
             "successive_halving": ({}, WarmupGuard), "threshold": ({"lower": 0.1}, WarmupGuard),
             "none": ({}, optuna.pruners.NopPruner)}
    for kind, (options, cls) in kinds.items():
        pruner = make_pruner(dataclasses.replace(spec, pruner=PrunerSpec(type=kind, options=options)))
        assert isinstance(pruner, cls), kind


def test_progress_pruner_never_prunes_the_last_epoch() -> None:
    study = optuna.create_study(direction="maximize", pruner=ProgressPruner(n_startup_trials=1))
    for q in (0.6, 0.7, 0.8):
        study.add_trial(_trial(0, [q * 0.5, q * 0.75, q * 0.875, q]))
    trial = study.ask()
    trial.set_user_attr("config", {"warmup_epochs": 0, "epochs": 4})
    trial.report(0.5, 0)  # above the median 0.35 of epoch 0: kept
    assert not trial.should_prune()
    trial.report(0.1, 1)  # best so far 0.5, below the median 0.525 of epoch 1
    assert trial.should_prune()
    last = study.ask()
    last.set_user_attr("config", {"warmup_epochs": 0, "epochs": 4})
    for epoch in range(4):
        last.report(0.0, epoch)
    assert last.should_prune() is False  # epoch 3 of 4: its epochs are spent
