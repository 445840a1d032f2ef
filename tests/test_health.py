"""Health monitor: detectors on synthetic signals, real sick trainers, no false alarms, sweeps."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from sweeper.cli import main
from sweeper.health import (
    BlankOutput,
    ChancePlateau,
    ClassCollapse,
    CTCInfeasible,
    DeadGradients,
    EvalSignals,
    GradExplosion,
    HealthMonitor,
    HealthPruned,
    NonfiniteLoss,
    Reason,
    StepWindow,
    TemporalCollapse,
    VanishingGradients,
    build_detectors,
    diagnose,
)
from sweeper.health.detectors import merge_options
from sweeper.tasks import ctc_digits, get_task
from sweeper.train import fit

from .sick_models import GlobalPoolBeforeLSTM, NoGradEncoder


def window(**kw: Any) -> StepWindow:
    base: dict[str, Any] = dict(first_step=0, last_step=19, losses=[1.0] * 20, grad_norms=[1.0] * 20,
                                previous_norms=[1.0] * 40, no_grad={}, zero_grad={}, n_params=10, checks=3,
                                weight_norm=10.0, initial_weight_norm=10.0)
    base.update(kw)
    return StepWindow(**base)


def signals(**kw: Any) -> EvalSignals:
    base: dict[str, Any] = dict(epoch=1, step=100, metrics={"loss": 1.0}, outputs={})
    base.update(kw)
    return EvalSignals(**base)


# ---------------------------------------------------------------- detectors, both sides of each boundary


@pytest.mark.parametrize(
    ("kw", "fires"),
    [({}, False), ({"losses": [1.0] * 19 + [math.nan]}, True), ({"grad_norms": [math.inf] + [1.0] * 19}, True)],
)
def test_nonfinite_loss(kw: dict[str, Any], fires: bool) -> None:
    v = NonfiniteLoss().on_window(window(**kw))
    assert (v is not None) == fires
    if v:
        assert v.reason == Reason.NONFINITE_LOSS and "step" in v.detail


def test_nonfinite_validation_loss() -> None:
    assert NonfiniteLoss().on_eval(signals(metrics={"loss": math.nan})) is not None
    assert NonfiniteLoss().on_eval(signals(metrics={"loss": 2.0})) is None


@pytest.mark.parametrize(("peak", "fires"), [(9.9e3, False), (1.01e4, True)])
def test_grad_explosion_ceiling(peak: float, fires: bool) -> None:
    v = GradExplosion().on_window(window(grad_norms=[1.0] * 19 + [peak]))
    assert (v is not None) == fires
    if v:
        assert "step 19" in v.detail and "ceiling" in v.detail


def test_grad_explosion_relative_needs_patience() -> None:
    det = GradExplosion(factor=50, patience=2)
    assert det.on_window(window(grad_norms=[49.0] * 20)) is None  # 49x: below the factor
    assert det.on_window(window(grad_norms=[60.0] * 20)) is None  # first strike
    v = det.on_window(window(grad_norms=[60.0] * 20))  # second strike
    assert v is not None and "60x its running median" in v.detail


@pytest.mark.parametrize(("growth", "fires"), [(19.5, False), (20.5, True)])
def test_grad_explosion_weight_growth(growth: float, fires: bool) -> None:
    v = GradExplosion().on_window(window(weight_norm=10.0 * growth))
    assert (v is not None) == fires


def test_zero_loss_is_not_vanishing_gradients() -> None:
    det = VanishingGradients(patience=1)
    assert det.on_window(window(grad_norms=[0.0] * 20, losses=[0.0] * 20)) is None
    assert det.on_window(window(grad_norms=[0.0] * 20)) is not None


def test_vanishing_gradients_patience() -> None:
    det = VanishingGradients(threshold=1e-7, patience=2)
    assert det.on_window(window(grad_norms=[1e-8] * 20)) is None
    assert det.on_window(window(grad_norms=[1e-8] * 19 + [1e-6])) is None  # resets the count
    assert det.on_window(window(grad_norms=[1e-8] * 20)) is None
    assert det.on_window(window(grad_norms=[1e-8] * 20)) is not None


def test_dead_gradients_names_modules_and_needs_patience() -> None:
    det = DeadGradients(patience=2)
    assert det.on_window(window(no_grad={"encoder.conv": 2})) is None
    v = det.on_window(window(no_grad={"encoder.conv": 2}))
    assert v is not None and "encoder.conv (2)" in v.detail and "2 of 10" in v.detail


def test_all_zero_gradients_count_as_dead_only_while_the_loss_is_not_zero() -> None:
    det = DeadGradients(patience=1)
    assert det.on_window(window(zero_grad={"head": 2}, losses=[0.0] * 20)) is None
    assert det.on_window(window(zero_grad={"head": 2})) is not None


@pytest.mark.parametrize(("short", "fires"), [(2, False), (3, True)])  # of 100; limit 2%
def test_ctc_infeasible(short: int, fires: bool) -> None:
    frames = torch.tensor([10] * 100)
    needed = torch.tensor([11] * short + [5] * (100 - short))
    v = CTCInfeasible().on_eval(signals(outputs={"output_lengths": frames, "required_lengths": needed}))
    assert (v is not None) == fires


def test_temporal_collapse() -> None:
    lengths = torch.full((8,), 12)
    varied = torch.randn(8, 12, 4)
    constant = torch.randn(8, 1, 4).expand(8, 12, 4)
    assert TemporalCollapse().on_eval(signals(outputs={"sequence": varied, "output_lengths": lengths})) is None
    v = TemporalCollapse().on_eval(signals(outputs={"sequence": constant, "output_lengths": lengths}))
    assert v is not None and v.reason == Reason.TEMPORAL_COLLAPSE


@pytest.mark.parametrize(("epoch", "empty", "fires"), [(2, 1.0, False), (3, 0.95, False), (3, 0.96, True)])
def test_blank_output_waits_for_grace(epoch: int, empty: float, fires: bool) -> None:
    v = BlankOutput().on_eval(signals(epoch=epoch, warmup_epochs=1, metrics={"empty_fraction": empty}))
    assert (v is not None) == fires


def test_class_collapse_all_majority_and_three_of_fifty() -> None:
    det = ClassCollapse(patience=1)
    targets = torch.tensor([0] * 95 + [1] * 5)
    assert det.on_eval(signals(outputs={"predictions": targets.clone(), "targets": targets})) is None
    v = det.on_eval(signals(outputs={"predictions": torch.zeros(100, dtype=torch.long), "targets": targets}))
    assert v is not None and "use 1 of 2 label classes" in v.detail and "class 0 takes 100%" in v.detail
    fifty = torch.arange(50).repeat(4)
    three = torch.tensor([0, 21, 38]).repeat(67)[:200]
    v = ClassCollapse(patience=1).on_eval(signals(outputs={"predictions": three, "targets": fifty}))
    assert v is not None and "use 3 of 50 label classes" in v.detail


def test_class_collapse_patience_and_grace() -> None:
    targets = torch.arange(10).repeat(10)
    collapsed = {"predictions": torch.zeros(100, dtype=torch.long), "targets": targets}
    det = ClassCollapse(patience=2, grace_epochs=1)
    assert det.on_eval(signals(epoch=0, outputs=collapsed)) is None  # grace
    assert det.on_eval(signals(epoch=1, outputs=collapsed)) is None  # first strike
    assert det.on_eval(signals(epoch=2, outputs=collapsed)) is not None


def test_chance_plateau_loss_at_label_entropy() -> None:
    targets = torch.arange(4).repeat(25)  # balanced: chance = ln 4
    logits = torch.zeros(100, 4)
    at_chance = signals(epoch=3, metrics={"loss": math.log(4)}, outputs={"targets": targets, "logits": logits})
    learning = signals(epoch=3, metrics={"loss": 0.9 * math.log(4)}, outputs={"targets": targets, "logits": logits})
    assert ChancePlateau().on_eval(at_chance) is not None
    assert ChancePlateau().on_eval(learning) is None
    assert ChancePlateau().on_eval(signals(epoch=1, metrics={"loss": math.log(4)},
                                           outputs={"targets": targets, "logits": logits})) is None  # grace


def test_chance_plateau_metric() -> None:
    on = signals(epoch=4, metrics={"wer": 0.99}, metric="wer", chance_metric=1.0)
    off = signals(epoch=4, metrics={"wer": 0.97}, metric="wer", chance_metric=1.0)
    assert ChancePlateau().on_eval(on) is not None
    assert ChancePlateau().on_eval(off) is None


def test_detector_options_and_turning_off() -> None:
    names = {type(d).__name__ for d in build_detectors({"blank_output": False, "grad_explosion": {"ceiling": 5.0}})}
    assert "BlankOutput" not in names and "GradExplosion" in names
    (g,) = [d for d in build_detectors({"grad_explosion": {"ceiling": 5.0}}) if isinstance(d, GradExplosion)]
    assert g.ceiling == 5.0
    assert merge_options({"class_collapse": {"grace_epochs": 3}}, {"class_collapse": {"patience": 1}}) == {
        "class_collapse": {"grace_epochs": 3, "patience": 1}}
    assert merge_options({"class_collapse": {"grace_epochs": 3}}, {"class_collapse": False}) == {
        "class_collapse": False}


# ---------------------------------------------------------------- the monitor in a plain loop


def test_monitor_reads_the_device_once_per_window() -> None:
    model = nn.Linear(4, 2)
    mon = HealthMonitor(model, check_every=5)
    for _ in range(12):
        loss = model(torch.randn(3, 4)).pow(2).mean()
        model.zero_grad()
        loss.backward()
        mon.after_backward(loss)  # computes the gradient norm itself
    assert mon.checks == 2 and mon.verdict is None
    mon.after_eval(0, {"loss": 1.0})  # flushes the 2 pending steps
    assert mon.checks == 3


def test_monitor_raises_with_the_verdict() -> None:
    model = nn.Linear(4, 2)
    mon = HealthMonitor(model, check_every=2)
    model(torch.randn(3, 4)).sum().backward()
    mon.after_backward(torch.tensor(1.0))
    with pytest.raises(HealthPruned) as info:
        mon.after_backward(torch.tensor(math.nan))
    assert info.value.verdict.reason == Reason.NONFINITE_LOSS
    assert isinstance(info.value, optuna.TrialPruned)


# ---------------------------------------------------------------- sick trainers, caught within 2 epochs

CTC_SMALL = dict(train_strips=800, val_strips=200, epochs=2, model_size="small", lr=3e-3)


def _ctc_verdict(monkeypatch: pytest.MonkeyPatch, model_cls: type | None = None, **changes: Any) -> Any:
    if model_cls is not None:
        monkeypatch.setattr(ctc_digits, "CTCRecognizer", model_cls)
    task = get_task("ctc_digits")
    config = {**task.defaults, **CTC_SMALL, **changes}
    mon = HealthMonitor(detectors=task.health_defaults, warmup_epochs=config["warmup_epochs"], metric="wer",
                        chance_metric=task.chance_metric)
    with pytest.raises(HealthPruned) as info:
        fit(config, task, monitor=mon)
    v = info.value.verdict
    assert v.step < 2 * 800 // 32  # within the first 2 epochs
    return v


def test_encoder_under_no_grad_is_dead_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    v = _ctc_verdict(monkeypatch, NoGradEncoder)
    assert v.reason == Reason.DEAD_GRADIENTS
    assert "frontend" in v.detail and "encoder" not in v.detail.split(":")[-1]


def test_global_pooling_before_lstm_is_temporal_collapse(monkeypatch: pytest.MonkeyPatch) -> None:
    v = _ctc_verdict(monkeypatch, GlobalPoolBeforeLSTM)
    assert v.reason == Reason.TEMPORAL_COLLAPSE and v.epoch == 0


def test_lr_10_without_clipping_explodes(monkeypatch: pytest.MonkeyPatch) -> None:
    v = _ctc_verdict(monkeypatch, lr=10.0, clip_norm=None, warmup_epochs=0)
    assert v.reason in (Reason.GRAD_EXPLOSION, Reason.NONFINITE_LOSS)


@pytest.mark.parametrize("downsample", [16, 32])
def test_heavy_downsampling_is_ctc_infeasible_before_the_first_step(monkeypatch: pytest.MonkeyPatch,
                                                                     downsample: int) -> None:
    v = _ctc_verdict(monkeypatch, downsample=downsample, max_digits=5)
    assert v.reason == Reason.CTC_INFEASIBLE and v.step == 0 and v.epoch is None
    assert "training sequences" in v.detail


def _imbalanced_digits(ratio: int = 20) -> tuple[torch.Tensor, ...]:
    """Binary task from the real digits: '1' (minority) against the rest, 20:1 in train and val."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor((d.target == 1).astype(np.int64))
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_pos = len(neg) // ratio
    idx = rng.permutation(np.concatenate([neg, rng.choice(pos, n_pos, replace=False)]))
    split = int(0.7 * len(idx))
    return x[idx[:split]], y[idx[:split]], x[idx[split:]], y[idx[split:]]


def _train_classifier(lr: float, epochs: int, monitor: HealthMonitor) -> float:
    """A plain user loop: MLP, cross-entropy, Adam; the monitor hooked in with two calls."""
    torch.manual_seed(0)
    xt, yt, xv, yv = _imbalanced_digits()
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    monitor.watch(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        for i in range(0, len(xt), 32):
            loss = nn.functional.cross_entropy(model(xt[i:i + 32]), yt[i:i + 32])
            opt.zero_grad()
            loss.backward()
            monitor.after_backward(loss)
            opt.step()
        with torch.no_grad():
            logits = model(xv)
            val_loss = float(nn.functional.cross_entropy(logits, yv))
        monitor.after_eval(epoch, {"loss": val_loss}, {"logits": logits, "targets": yv})
    return val_loss


def test_imbalanced_high_lr_classifier_is_class_collapse() -> None:
    with pytest.raises(HealthPruned) as info:
        _train_classifier(lr=0.1, epochs=2, monitor=HealthMonitor())
    v = info.value.verdict
    assert v.reason == Reason.CLASS_COLLAPSE and v.epoch == 1
    assert "class 0 takes 100%" in v.detail


def test_imbalanced_sane_lr_classifier_is_healthy() -> None:
    mon = HealthMonitor()
    _train_classifier(lr=1e-2, epochs=4, monitor=mon)
    assert mon.verdict is None


# ---------------------------------------------------------------- no false alarms


@pytest.mark.parametrize(
    "changes",
    [
        dict(seed=0, lr=3e-3, clip_norm=1.0, model_size="small", downsample=4, warmup_epochs=1),
        dict(seed=1, lr=1e-2, clip_norm=0.5, model_size="medium", downsample=2, warmup_epochs=1),
        dict(seed=2, lr=5e-3, clip_norm=1.0, model_size="small", downsample=4, warmup_epochs=0,
             loss="ctc_label_smoothing"),
    ],
)
def test_healthy_ctc_runs_from_the_good_region_are_never_pruned(changes: dict[str, Any]) -> None:
    task = get_task("ctc_digits")
    config = {**task.defaults, "train_strips": 1000, "val_strips": 200, "epochs": 5, **changes}
    mon = HealthMonitor(detectors=task.health_defaults, warmup_epochs=config["warmup_epochs"], metric="wer",
                        chance_metric=task.chance_metric)
    result = fit(config, task, monitor=mon)  # raises HealthPruned on a false alarm
    assert mon.verdict is None and result.epochs_run == 5
    assert result.history[0]["wer"] >= 0.9  # it did start at the all-blank WER the detectors must tolerate


# ---------------------------------------------------------------- in a sweep

SICK_STUDY = """\
name: sick
task: ctc_digits
budget: {trials: 6, epochs: 3}
sampler: {type: random, seed: 3}
pruner: {type: none}
heartbeat: {interval: 1, grace: 3}
fixed: {train_strips: 400, val_strips: 100, model_size: small, max_digits: 5}
params:
  lr: {type: float, low: 1.0e-3, high: 10.0, log: true}
  clip_norm: {choices: [null]}
  downsample: {choices: [4, 32]}
"""


def test_sweep_prunes_sick_trials_with_reasons(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "studies" / "sick.yaml").write_text(SICK_STUDY)
    assert main(["run", "sick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="sick", storage="sqlite:///results/sick/study.db")
    sick = [t for t in study.trials if t.user_attrs.get("health.reason") not in (None, "underperforming")]
    assert sick, "the space reaches lr 10 and 32x downsampling: some trials must be sick"
    for t in sick:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["epochs_run"] <= 2
        assert t.constraints == {"health": 1.0}  # infeasible to the sampler
        assert f"[{t.user_attrs['health.reason']}: " in out
        if t.params["downsample"] == 32:
            assert t.user_attrs["health.reason"] == "ctc_infeasible"
            assert t.user_attrs["epochs_run"] == 0  # judged on the data, before the first step
    healthy = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(t.constraints == {} for t in healthy)
    rows = {int(r["number"]): r for r in csv.DictReader((workdir / "results/sick/trials.csv").open())}
    for t in sick:
        assert rows[t.number]["health.reason"] == t.user_attrs["health.reason"]
        assert rows[t.number]["health.detail"] == t.user_attrs["health.detail"]


def test_same_code_in_the_first_trials_stops_the_sweep_as_a_bug(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ctc_digits, "CTCRecognizer", NoGradEncoder)
    assert main(["run", "tiny", "--trials", "20", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "the first 3 trials were all pruned with dead_gradients" in err
    assert "most likely a bug in the model or data code, not a hyperparameter" in err
    assert "lr" in err.split("although")[1].split(":")[0]  # what varied
    study = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db")
    assert len(study.trials) == 3


def test_dead_gradients_can_be_turned_off(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text() + "health:\n  dead_gradients: false\n")
    monkeypatch.setattr(ctc_digits, "CTCRecognizer", NoGradEncoder)
    assert main(["run", "tiny", "--trials", "3", "--set", "epochs=1", "--no-progress"]) == 0
    study = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db")
    assert all(t.user_attrs.get("health.reason") != "dead_gradients" for t in study.trials)


def test_diagnosis_needs_one_code_in_all_first_trials() -> None:
    def trial(n: int, reason: str | None, lr: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            state=TrialState.PRUNED if reason else TrialState.COMPLETE, value=None if reason else 0.5,
            params={"lr": lr}, distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)},
            user_attrs={"health.reason": reason, "health.detail": "x"} if reason else {},
        )

    same = [trial(0, "dead_gradients", 1e-3), trial(1, "dead_gradients", 1e-2), trial(2, "dead_gradients", 1e-4)]
    for i, t in enumerate(same):
        t.number = i
    assert diagnose(same[:2], 3) is None  # not enough trials yet
    assert "all pruned with dead_gradients although lr varied" in (diagnose(same, 3) or "")
    mixed = [*same[:2], trial(2, None, 1e-4)]
    mixed[2].number = 2
    assert diagnose(mixed, 3) is None
    assert diagnose(same, 0) is None  # turned off
    perf = [trial(i, "underperforming", 1e-3) for i in range(3)]
    for i, t in enumerate(perf):
        t.number = i
    assert diagnose(perf, 3) is None  # the performance pruner says nothing about bugs
