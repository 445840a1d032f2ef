"""The one training loop: schedule, learning, clipping, early stop, checkpoints."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from sweeper.tasks import get_task
from sweeper.tasks.base import EvalResult, Task, TaskRun
from sweeper.train import fit, lr_lambda, resolve_device


def small_config(**changes: Any) -> dict[str, Any]:
    config = dict(get_task("ctc_digits").defaults)
    config.update(model_size="tiny", train_strips=128, val_strips=32, epochs=2, batch_size=32)
    config.update(changes)
    return config


def test_lr_schedule_warmup_then_cosine() -> None:
    values = [lr_lambda(s, warmup_steps=4, total_steps=20) for s in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    after_warmup = values[3:]
    assert all(a >= b for a, b in itertools.pairwise(after_warmup))  # non-increasing after warmup
    assert values[-1] < 0.05
    assert lr_lambda(0, warmup_steps=0, total_steps=10) == 1.0


def test_lr_schedule_cosine_warm_restarts() -> None:
    values = [lr_lambda(s, warmup_steps=2, total_steps=40, schedule="cosine_restarts", restart_steps=4,
                        restart_mult=2) for s in range(30)]
    assert values[:2] == [0.5, 1.0]
    # restarts at the peak after periods of 4, 8, 16 steps from the end of warmup
    assert [s for s in range(1, 30) if values[s] > values[s - 1]] == [1, 6, 14]
    assert values[6] == values[14] == 1.0 and min(values[2:6]) < 0.2


class Flat(Task):
    """A task whose metric never improves: what ReduceLROnPlateau reacts to."""

    name, metric, direction = "flat", "score", "maximize"
    defaults: Mapping[str, Any] = {}
    key_types: Mapping[str, Any] = {}

    def setup(self, config: Mapping[str, Any], device: torch.device) -> TaskRun:
        class Run(TaskRun):
            model = torch.nn.Linear(2, 1)
            steps_per_epoch = 3

            def train_batches(self, epoch: int) -> Iterator[torch.Tensor]:
                return iter([torch.ones(4, 2)] * 3)

            def loss(self, batch: torch.Tensor) -> torch.Tensor:
                return self.model(batch).pow(2).mean()

            def evaluate(self) -> EvalResult:
                return EvalResult({"score": 0.5, "loss": 1.0})

        return Run()


def test_plateau_schedule_halves_the_lr_when_the_metric_stalls_after_warmup() -> None:
    config = {"seed": 0, "lr": 0.01, "weight_decay": 0.0, "epochs": 7, "warmup_epochs": 1,
              "schedule": "plateau", "plateau_patience": 1}
    lrs = [row["lr"] for row in fit(config, Flat()).history]
    # warmup reaches the peak in epoch 0; then two evaluations without improvement halve it
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="schedule must be one of cosine, cosine_restarts, plateau"):
        fit({"seed": 0, "lr": 0.01, "weight_decay": 0.0, "epochs": 1, "warmup_epochs": 0, "schedule": "step"},
            Flat())


def test_device_auto() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"


class Recorder:
    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.values: list[float] = []

    def report(self, epoch: int, result: EvalResult) -> None:
        self.epochs.append(epoch)
        self.values.append(result.metrics["wer"])


def test_fit_learns_digit_strips() -> None:
    # real learning on real data: WER falls well below the all-blank 1.0
    rec = Recorder()
    config = small_config(model_size="small", train_strips=600, val_strips=100, epochs=4, lr=1e-2,
                          warmup_epochs=0, batch_size=16)
    result = fit(config, get_task("ctc_digits"), rec)
    assert rec.epochs == [0, 1, 2, 3]
    assert result.best == min(rec.values) and result.best < 0.6
    assert result.epochs_run == 4 and len(result.history) == 4


def test_fit_is_deterministic_for_a_seed() -> None:
    task = get_task("ctc_digits")
    a, b = fit(small_config(seed=3), task), fit(small_config(seed=3), task)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


class NormRecorder:
    def __init__(self) -> None:
        self.norms: list[float] = []
        self.steps: list[int] = []

    def watch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
              scaler: Any = None) -> None:
        pass

    def check_data(self, outputs: Any) -> None:
        pass

    def after_backward(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None, *,
                       step: int | None = None) -> None:
        assert grad_norm is not None and step is not None
        self.norms.append(float(grad_norm))
        self.steps.append(step)

    def after_eval(self, epoch: int, metrics: Any, outputs: Any = None) -> None:
        pass


def test_monitor_sees_the_norm_before_clipping() -> None:
    mon = NormRecorder()
    fit(small_config(clip_norm=1e-3, epochs=1), get_task("ctc_digits"), monitor=mon)
    assert mon.steps == [0, 1, 2, 3]  # 128 strips / 32
    assert max(mon.norms) > 1e-2  # the pre-clip norm, not the clipped one


def test_early_stop_patience() -> None:
    # lr 0 never improves after epoch 0: patience 1 stops after epoch 1
    result = fit(small_config(lr=0.0, epochs=5, patience=1, warmup_epochs=0), get_task("ctc_digits"))
    assert result.stopped_early and result.epochs_run == 2


def test_checkpoint_resume_continues_the_same_run(tmp_path: Path) -> None:
    task = get_task("ctc_digits")
    straight = fit(small_config(epochs=3), task)
    part = small_config(epochs=3)
    # a run that stops after 2 epochs (simulated by a reporter raising), then resumes
    class Stop(Exception):
        pass

    class StopAfter:
        def report(self, epoch: int, result: EvalResult) -> None:
            if epoch == 1:
                raise Stop

    with pytest.raises(Stop):
        fit(part, task, StopAfter(), checkpoint_dir=tmp_path)
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
    resumed = fit(part, task, checkpoint_dir=tmp_path)
    assert resumed.epochs_run == 3
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)
    saved = torch.load(tmp_path / "best.pt", weights_only=False)
    assert saved["config"] == part
