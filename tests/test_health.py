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
    label_evidence,
)
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
    [({}, False), ({"losses": [1.0] * 19 + [math.nan]}, True),
     ({"grad_norms": [math.inf] + [1.0] * 19}, False),  # one skipped step (a GradScaler calibrating)
     ({"loss_scale": 2.0 ** -20}, False), ({"loss_scale": 2.0 ** -25}, True)],
)
def test_nonfinite_loss(kw: dict[str, Any], fires: bool) -> None:
    v = NonfiniteLoss().on_window(window(**kw))
    assert (v is not None) == fires
    if v:
        assert v.reason == Reason.NONFINITE_LOSS and "step" in v.detail


def test_nonfinite_gradients_with_a_finite_loss_fire_only_when_the_skips_never_end() -> None:
    det = NonfiniteLoss(max_skipped=40)
    assert det.on_window(window(grad_norms=[math.inf] * 20)) is None  # 20 skipped: calibrating
    assert det.on_window(window(grad_norms=[math.inf] * 19 + [1.0])) is None  # a step went through: reset
    assert det.on_window(window(grad_norms=[math.inf] * 20)) is None
    v = det.on_window(window(grad_norms=[None] * 10 + [math.inf] * 10))  # unobserved steps do not count
    assert v is None
    v = det.on_window(window(grad_norms=[math.inf] * 20))
    assert v is not None and "40 steps in a row" in v.detail and "step 9" in v.detail
    assert NonfiniteLoss().on_window(window(skipped_nonfinite=True)) is None  # 20 of 40


def test_nonfinite_validation_loss() -> None:
    assert NonfiniteLoss().on_eval(signals(metrics={"loss": math.nan})) is not None
    assert NonfiniteLoss().on_eval(signals(metrics={"loss": 2.0})) is None


def test_grad_explosion_has_no_absolute_ceiling_unless_set() -> None:
    big = window(grad_norms=[4e4] * 20, previous_norms=[4e4] * 40, start_norm=4e4)  # a summed loss's scale
    assert GradExplosion().on_window(big) is None
    v = GradExplosion(ceiling=1e4).on_window(window(grad_norms=[1.0] * 19 + [1.01e4]))
    assert v is not None and "step 19" in v.detail and "ceiling" in v.detail
    assert GradExplosion(ceiling=1e4).on_window(window(grad_norms=[1.0] * 19 + [9.9e3])) is None


def test_grad_explosion_relative_needs_patience_and_no_new_low() -> None:
    det = GradExplosion(factor=50, patience=2)
    assert det.on_window(window(grad_norms=[49.0] * 20)) is None  # 49x: below the factor
    assert det.on_window(window(grad_norms=[60.0] * 20)) is None  # first strike
    v = det.on_window(window(grad_norms=[60.0] * 20))  # second strike
    assert v is not None and "60x its running median" in v.detail
    det = GradExplosion(factor=50, patience=1)
    assert det.on_window(window(grad_norms=[60.0] * 20, losses=[0.5] * 20, earlier_losses=[1.0])) is None  # learning


@pytest.mark.parametrize(("loss", "fires"), [(1.9, False), (2.1, True)])
def test_grad_explosion_loss_rising_above_its_start(loss: float, fires: bool) -> None:
    det = GradExplosion(patience=2)
    assert det.on_window(window(losses=[loss] * 20, start_loss=1.0)) is None  # one window: noise, perhaps
    v = det.on_window(window(losses=[loss] * 20, start_loss=1.0))
    assert (v is not None) == fires
    if v:
        assert "2.1x its start 1" in v.detail
    assert GradExplosion().on_window(window(losses=[-3.0] * 20, start_loss=-1.0)) is None  # a loss below 0


def test_grad_explosion_weight_growth_needs_a_spike_or_no_progress() -> None:
    grown = dict(weight_norm=250.0, initial_weight_norm=10.0, start_loss=2.3, start_norm=1.0)
    # a tiny initialisation growing while the loss falls: learning
    assert GradExplosion().on_window(window(**grown, losses=[2.0] * 20, grad_norms=[3.0] * 20)) is None
    v = GradExplosion().on_window(window(**grown, losses=[2.2] * 20, grad_norms=[3.0] * 19 + [80.0]))
    assert v is not None and "grew 25x" in v.detail and "80x its start" in v.detail
    # the same spike while the loss is clearly below its start: learning
    assert GradExplosion().on_window(window(**grown, losses=[2.0] * 20, grad_norms=[3.0] * 19 + [80.0])) is None
    assert GradExplosion().on_window(window(**grown, losses=[2.3] * 20, grad_norms=[3.0] * 20)) is None  # holds
    assert GradExplosion().on_window(window(**grown, losses=[2.6] * 20, grad_norms=[3.0] * 20)) is not None
    assert GradExplosion().on_window(window(**{**grown, "weight_norm": 90.0}, losses=[2.6] * 20)) is None  # 9x
    # exploded within the first window: its median is no reference, the first step's loss is
    assert GradExplosion().on_window(window(**{**grown, "start_loss": 1500.0}, first_loss=25.0,
                                            losses=[1500.0] * 20)) is not None


def test_grad_explosion_updates_that_kill_units() -> None:
    det = GradExplosion(max_update=1.0)
    assert det.on_window(window(update_ratio=5.0, losses=[0.5] * 20, start_loss=2.0, modules=["a", "b"])) is None
    v = det.on_window(window(zero_grad={"a": 2}, losses=[0.5] * 20, start_loss=2.0, modules=["a", "b"]))
    assert v is not None and "5x their norm" in v.detail and "killed" in v.detail and "a" in v.detail
    calm = GradExplosion(max_update=1.0)  # no big update before: all-zero gradients are dead_gradients'
    calm.on_window(window(update_ratio=0.5, modules=["a", "b"]))
    assert calm.on_window(window(zero_grad={"a": 2}, modules=["a", "b"])) is None


def test_zero_loss_is_not_vanishing_gradients() -> None:
    det = VanishingGradients(patience=1, threshold=1e-7)
    assert det.on_window(window(grad_norms=[0.0] * 20, losses=[0.0] * 20)) is None
    assert det.on_window(window(grad_norms=[0.0] * 20)) is not None
    assert VanishingGradients(patience=1).on_window(window(grad_norms=[1e-9] * 20)) is None  # no floor by default


@pytest.mark.parametrize(("ratio", "loss", "fires"), [
    (5e-7, 1.0, True),   # the weights barely move and the loss does not fall
    (2e-6, 1.0, False),  # above the limit
    (0.0, 1.0, False),   # no change at all: stalled_updates
    (5e-7, 0.5, False),  # the loss makes new lows
    (5e-7, 1e-5, False),  # the loss has vanished: converged, nothing left to learn
])
def test_vanishing_updates(ratio: float, loss: float, fires: bool) -> None:
    v = VanishingGradients(patience=1).on_window(window(update_ratio=ratio, losses=[loss] * 20,
                                                        earlier_losses=[1.0], start_loss=1.0))
    assert (v is not None) == fires


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


def test_class_collapse_all_one_class_and_three_of_fifty() -> None:
    det = ClassCollapse(patience=1)
    targets = torch.tensor([0, 1] * 50)
    assert det.on_eval(signals(outputs={"predictions": targets.clone(), "targets": targets})) is None
    v = det.on_eval(signals(outputs={"predictions": torch.zeros(100, dtype=torch.long), "targets": targets}))
    assert v is not None and "use 1 of 2 label classes" in v.detail and "class 0 takes 100%" in v.detail
    assert "50% of samples are of classes it leaves out" in v.detail
    fifty = torch.arange(50).repeat(4)
    three = torch.tensor([0, 21, 38]).repeat(67)[:200]
    v = ClassCollapse(patience=1).on_eval(signals(outputs={"predictions": three, "targets": fifty}))
    assert v is not None and "use 3 of 50 label classes" in v.detail


def test_all_majority_on_skewed_labels_is_collapse_only_when_the_outputs_rank_nothing() -> None:
    # 5% positives: an uncertain but sound model's argmax is the majority class everywhere;
    # its outputs still rank the positives. Constant outputs rank nothing.
    targets = torch.tensor([0] * 95 + [1] * 5)
    all_negative = torch.zeros(100, dtype=torch.long)
    assert ClassCollapse(patience=1).on_eval(signals(outputs={"predictions": all_negative, "targets": targets})) is None
    positive_logit = targets.float() * 2 - 3 + 0.1 * torch.randn(100)  # ranks them, all below 0: no positive
    ranking = torch.stack([torch.zeros(100), positive_logit], 1)
    ev = label_evidence(ranking, targets)
    assert ev is not None and ev.informative
    assert ClassCollapse(patience=1).on_eval(
        signals(outputs={"logits": ranking, "targets": targets}, evidence=ev)) is None
    constant = torch.tensor([[0.0, -3.0]]).repeat(100, 1)
    ev = label_evidence(constant, targets)
    assert ev is not None and not ev.informative
    v = ClassCollapse(patience=1).on_eval(signals(outputs={"logits": constant, "targets": targets}, evidence=ev))
    assert v is not None and "class 0 takes 100%" in v.detail and "no better than chance" in v.detail


def test_one_class_argmax_is_no_collapse_when_the_outputs_separate_the_labels() -> None:
    # a plateau: logits differ by 1e-4, every argmax is class 0, yet they order the labels
    # almost perfectly (balanced labels: half the samples are of the class left out)
    gen = torch.Generator().manual_seed(0)
    targets = torch.tensor([0, 1] * 100)
    margin = 1e-4 * (targets.float() + 0.05 * torch.randn(200, generator=gen)) - 1e-3
    plateau = torch.stack([torch.zeros(200), margin], 1)
    ev = label_evidence(plateau, targets)
    assert ev is not None and ev.auc > 0.95
    assert ClassCollapse(patience=1).on_eval(signals(outputs={"logits": plateau, "targets": targets}, evidence=ev)) \
        is None
    # the same argmax from outputs that only weakly depend on the input is a collapse
    weak = torch.stack([torch.zeros(200), 1e-4 * (0.3 * targets.float() + torch.randn(200, generator=gen)) - 1e-3], 1)
    ev = label_evidence(weak, targets)
    assert ev is not None and ev.auc < 0.9
    v = ClassCollapse(patience=1).on_eval(signals(outputs={"logits": weak, "targets": targets}, evidence=ev))
    assert v is not None and "50% of samples are of classes it leaves out" in v.detail


def test_class_collapse_patience_and_grace() -> None:
    targets = torch.arange(10).repeat(10)
    collapsed = {"predictions": torch.zeros(100, dtype=torch.long), "targets": targets}
    det = ClassCollapse(patience=2, grace_epochs=1)
    assert det.on_eval(signals(epoch=0, outputs=collapsed)) is None  # grace
    assert det.on_eval(signals(epoch=1, outputs=collapsed)) is None  # first strike
    assert det.on_eval(signals(epoch=2, outputs=collapsed)) is not None


def test_label_evidence() -> None:
    targets = torch.arange(4).repeat(50)
    perfect = torch.nn.functional.one_hot(targets, 4).float() * 5
    ev = label_evidence(perfect, targets)
    assert ev is not None and ev.auc == pytest.approx(1.0) and ev.informative and 0 < ev.auc_sd < 0.05
    assert ev.excess < 0 and not ev.uninformed  # far better than the prior in log-loss
    constant = label_evidence(torch.zeros(200, 4), targets)  # ties: chance, exactly the prior
    assert constant is not None and constant.auc == pytest.approx(0.5) and abs(constant.excess) < 1e-6
    assert not constant.informative and not constant.uninformed
    noise = label_evidence(3 * torch.randn(200, 4, generator=torch.Generator().manual_seed(0)), targets)
    assert noise is not None and not noise.informative and noise.uninformed  # varies, costs log-loss
    binary = targets % 2
    single = label_evidence(binary.float() * 3 - 1.5 + 0.1 * torch.randn(200), binary)
    assert single is not None and single.auc > 0.99  # one logit column: the positive class's score
    assert label_evidence(torch.zeros(200, 4), torch.zeros(200, dtype=torch.long)) is None  # one class


def test_chance_plateau_needs_outputs_without_information_twice() -> None:
    targets = torch.arange(4).repeat(50)
    informative = torch.nn.functional.one_hot(targets, 4).float() + torch.randn(200, 4)
    noise = 3 * torch.randn(200, 4, generator=torch.Generator().manual_seed(0))

    def at(logits: torch.Tensor, epoch: int, loss: float = 1.5, best: float | None = None,
           warmup: float = 0.0) -> EvalSignals:
        return signals(epoch=epoch, metrics={"loss": loss}, outputs={"targets": targets, "logits": logits},
                       evidence=label_evidence(logits, targets), best_loss=best, warmup_epochs=warmup)

    det = ChancePlateau()
    assert det.on_eval(at(noise, 0)) is None  # one evaluation
    v = det.on_eval(at(noise, 1, best=1.5))
    assert v is not None and "no information" in v.detail and "macro AUC" in v.detail
    det = ChancePlateau()
    assert det.on_eval(at(noise, 0)) is None
    assert det.on_eval(at(informative, 1, best=1.5)) is None  # ranks the labels
    det = ChancePlateau()
    assert det.on_eval(at(noise, 0)) is None
    assert det.on_eval(at(noise, 1, loss=1.2, best=1.3)) is None  # validation loss at a new low: learning
    det = ChancePlateau()
    assert det.on_eval(at(torch.zeros(200, 4), 0)) is None  # exactly the prior: class_collapse's to judge
    assert det.on_eval(at(torch.zeros(200, 4), 1)) is None
    det = ChancePlateau()
    assert det.on_eval(at(noise, 1, warmup=2)) is None and det.on_eval(at(noise, 1, warmup=2)) is None  # warmup


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


# ---------------------------------------------------------------- the monitor in a plain loop


def test_monitor_reads_the_device_once_per_window() -> None:
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = HealthMonitor(model, check_every=5)
    for _ in range(12):
        loss = model(torch.randn(3, 4)).pow(2).mean()
        model.zero_grad()
        loss.backward()
        mon.after_backward(loss)  # computes the gradient norm itself
        opt.step()
    # a full window is judged at the next step, once its last optimizer step has run
    assert mon.checks == 2 and mon.verdict is None
    mon.after_eval(0, {"loss": 1.0})  # flushes the 2 pending steps
    assert mon.checks == 3


def test_monitor_raises_with_the_verdict() -> None:
    model = nn.Linear(4, 2)
    mon = HealthMonitor(model, check_every=2)
    model(torch.randn(3, 4)).sum().backward()
    mon.after_backward(torch.tensor(1.0))
    mon.after_backward(torch.tensor(math.nan))
    with pytest.raises(HealthPruned) as info:
        mon.after_backward(torch.tensor(1.0))  # the window of the first two steps is judged
    assert info.value.verdict.reason == Reason.NONFINITE_LOSS and "step 1" in info.value.verdict.detail
    assert isinstance(info.value, optuna.TrialPruned)


# ---------------------------------------------------------------- sick trainers, caught within 2 epochs

CTC_SMALL = dict(train_strips=800, val_strips=200, epochs=2, model_size="small", lr=3e-3)


def _ctc_verdict(monkeypatch: pytest.MonkeyPatch, model_cls: type | None = None, **changes: Any) -> Any:
    if model_cls is not None:
        monkeypatch.setattr(ctc_digits, "CTCRecognizer", model_cls)
    task = get_task("ctc_digits")
    config = {**task.defaults, **CTC_SMALL, **changes}
    mon = HealthMonitor(warmup_epochs=config["warmup_epochs"], metric="wer",
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


def _train_classifier(lr: float, epochs: int, monitor: HealthMonitor, *, blind: bool = False) -> float:
    """A plain user loop: MLP, cross-entropy, Adam; the monitor hooked in with two calls.
    ``blind``: every input is the same image (a preprocessing bug), so nothing can be learned."""
    torch.manual_seed(0)
    xt, yt, xv, yv = _imbalanced_digits()
    if blind:
        xt, xv = torch.ones_like(xt), torch.ones_like(xv)
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


def test_imbalanced_classifier_whose_outputs_carry_nothing_is_class_collapse() -> None:
    with pytest.raises(HealthPruned) as info:
        _train_classifier(lr=1e-2, epochs=2, monitor=HealthMonitor(), blind=True)
    v = info.value.verdict
    assert v.reason == Reason.CLASS_COLLAPSE and v.epoch == 1
    assert "class 0 takes 100%" in v.detail and "no better than before" in v.detail


@pytest.mark.parametrize("lr", [1e-2, 0.1])
def test_imbalanced_classifier_all_negative_at_first_is_not_collapse(lr: float) -> None:
    # at lr 0.1 this model predicts no positive for 2 epochs while its outputs already rank them
    # (AUC 0.93-0.97) and its validation loss falls; it then finds them all (24 predicted of 23)
    mon = HealthMonitor()
    _train_classifier(lr=lr, epochs=5, monitor=mon)
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
    mon = HealthMonitor(warmup_epochs=config["warmup_epochs"], metric="wer",
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


def test_same_code_whatever_the_parameters_stops_the_sweep_as_a_bug(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ctc_digits, "CTCRecognizer", NoGradEncoder)
    assert main(["run", "tiny", "--trials", "20", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "were all pruned with dead_gradients whatever their parameters" in err
    assert "most likely a bug in the model or data code, not a hyperparameter" in err
    # the evidence: every searched parameter was tried across its range
    assert "lr from" in err and "dropout from" in err and "clip_norm off, 1 (2 of 2 choices)" in err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db")
    assert 3 <= len(study.trials) < 20
    assert all(t.user_attrs["health.reason"] == "dead_gradients" for t in study.trials)


def test_dead_gradients_can_be_turned_off(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text() + "health:\n  dead_gradients: false\n")
    monkeypatch.setattr(ctc_digits, "CTCRecognizer", NoGradEncoder)
    assert main(["run", "tiny", "--trials", "3", "--set", "epochs=1", "--no-progress"]) == 0
    study = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db")
    assert all(t.user_attrs.get("health.reason") != "dead_gradients" for t in study.trials)


def _frozen(n: int, reason: str | None, **params: Any) -> optuna.trial.FrozenTrial:
    distributions = {
        "lr": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True),
        "downsample": optuna.distributions.CategoricalDistribution([2, 4, 8, 16, 32]),
        "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
    }
    t = optuna.trial.create_trial(
        state=TrialState.PRUNED if reason else TrialState.COMPLETE, value=None if reason else 0.5, params=params,
        distributions={k: distributions[k] for k in params},
        user_attrs={"health.reason": reason, "health.detail": "x"} if reason else {})
    t.number = n
    return t


def test_diagnosis_is_a_bug_only_when_no_searched_value_explains_the_code() -> None:
    spread = [_frozen(0, "dead_gradients", lr=1e-5, dropout=0.05), _frozen(1, "dead_gradients", lr=1e-2, dropout=0.4),
              _frozen(2, "dead_gradients", lr=0.9, dropout=0.2)]
    assert diagnose(spread[:2], 3) is None  # not enough trials yet
    bug = diagnose(spread, 3)
    assert bug is not None and bug.bug and "whatever their parameters" in bug.message
    assert "lr from 1.0e-05 to 0.9" in bug.message and "dropout from 0.05 to 0.4" in bug.message
    # ctc_wide with sampler seed 2: three draws at 16x and 32x downsampling, 2 of the 5 choices
    region = [_frozen(0, "ctc_infeasible", lr=1e-4, downsample=32), _frozen(1, "ctc_infeasible", lr=0.3, downsample=16),
              _frozen(2, "ctc_infeasible", lr=0.01, downsample=16)]
    found = diagnose(region, 3)
    assert found is not None and not found.bug
    assert "downsample at its larger values (16 or 32, of 5)" in found.message and "goes on" in found.message
    high = [_frozen(i, "grad_explosion", lr=lr, dropout=d) for i, (lr, d) in enumerate([(0.1, 0.0), (0.5, 0.5),
                                                                                        (0.02, 0.25)])]
    found = diagnose(high, 3)
    assert found is not None and not found.bug and "lr at its larger values (0.02 to 0.5" in found.message
    models = optuna.distributions.CategoricalDistribution(["mlp", "cnn", "rnn", "transformer"])
    unordered = [_frozen(i, "dead_gradients", lr=lr, dropout=d) for i, (lr, d) in enumerate(
        [(1e-5, 0.0), (1e-2, 0.5), (0.9, 0.25)])]
    for t, m in zip(unordered, ["cnn", "cnn", "rnn"], strict=True):
        t.params["model"], t.distributions["model"] = m, models
    found = diagnose(unordered, 3)
    assert found is not None and not found.bug and "model cnn or rnn (2 of its 4 choices)" in found.message
    unordered[0].params["model"] = "mlp"
    assert diagnose(unordered, 3) is not None and diagnose(unordered, 3).bug  # type: ignore[union-attr]
    assert diagnose([*spread[:2], _frozen(2, None, lr=1e-4, dropout=0.1)], 3) is None  # one completed
    assert diagnose([*spread[:2], _frozen(2, "grad_explosion", lr=1e-4, dropout=0.1)], 3) is None  # two codes
    assert diagnose(spread, 0) is None  # turned off
    perf = [_frozen(i, "underperforming", lr=lr, dropout=0.1) for i, lr in enumerate([1e-5, 1e-2, 0.9])]
    assert diagnose(perf, 3) is None  # the performance pruner says nothing about bugs


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_ctc_wide_runs_to_its_budget_for_every_sampler_seed(tmp_path: Path, seed: int) -> None:
    # studies/ctc_wide.yaml with its sampler seed set (seed 2 draws 32x, 16x and 16x downsampling
    # first: three ctc_infeasible trials that a searched value explains), on a smaller budget
    import yaml

    from .conftest import REPO, run_cli

    doc = yaml.safe_load((REPO / "studies" / "ctc_wide.yaml").read_text())
    doc["sampler"]["seed"] = seed
    doc["budget"] = {"trials": 8, "epochs": 1}
    doc["fixed"].update(train_strips=300, val_strips=60)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "ctc_wide.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))  # the draw order
    proc = run_cli("run", "ctc_wide", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="ctc_wide", storage=f"sqlite:///{tmp_path}/results/ctc_wide/study.db")
    finished = sorted((t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                      key=lambda t: t.number)
    assert len(finished) == 8
    first = [t.user_attrs.get("health.reason") for t in finished[:3]]
    if first == ["ctc_infeasible"] * 3:
        assert "searched values can explain it" in proc.stdout and "downsample at its larger values" in proc.stdout
