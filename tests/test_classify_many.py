"""classify_many: the data, learning, class collapse under a high lr, and its study file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sweeper.health import HealthMonitor, HealthPruned
from sweeper.tasks import get_task
from sweeper.tasks.classify_many import build_numbers, macro_f1
from sweeper.train import fit

from .conftest import run_study_file


def test_sixty_numbers_from_few_uneven_samples_deterministic() -> None:
    x, y, vx, vy = build_numbers(0, 60, 3, 13, 8)
    counts = torch.bincount(y, minlength=60)
    assert x.shape[1] == vx.shape[1] == 128 and len(x) == len(y) and len(vx) == len(vy) == 60 * 8
    assert counts.min() >= 3 and counts.max() <= 13 and 6 <= counts.float().mean() <= 10
    assert counts.max() > counts.min()  # uneven: what a class-weighted loss is for
    assert torch.equal(torch.bincount(vy), torch.full((60,), 8))
    again = build_numbers.__wrapped__(0, 60, 3, 13, 8)  # not the cached copy
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(build_numbers.__wrapped__(1, 60, 3, 13, 8)[0][:10], x[:10])


def test_macro_f1() -> None:
    target = torch.tensor([0, 0, 1, 1])
    assert macro_f1(target, target, 2) == 1.0
    assert macro_f1(torch.tensor([0, 0, 0, 0]), target, 2) == pytest.approx((2 / 3 + 0) / 2)


@pytest.mark.parametrize("loss", ["ce", "focal", "class_weighted"])
def test_it_learns_well_above_chance(loss: str) -> None:
    task = get_task("classify_many")
    result = fit({**task.defaults, "epochs": 12, "loss": loss}, task)
    assert result.best > 0.4  # chance is 1/60
    assert result.history[-1]["classes_predicted"] > 40


def test_a_high_learning_rate_collapses_the_classes_and_the_monitor_says_so() -> None:
    task = get_task("classify_many")
    config = {**task.defaults, "epochs": 12, "lr": 0.1}  # clipped, so it collapses rather than explodes
    monitor = HealthMonitor(metric="accuracy", chance_metric=task.chance_metric,
                            warmup_epochs=config["warmup_epochs"])
    with pytest.raises(HealthPruned) as caught:
        fit(config, task, monitor=monitor)
    assert caught.value.verdict.reason.value == "class_collapse"


@pytest.mark.slow  # the shipped study file end to end (CI runs it); tiny studies of the task run by default
def test_the_study_file_runs_on_a_small_budget(tmp_path: Path) -> None:
    study = run_study_file("classify_many", tmp_path, trials=3, epochs=4)
    assert {"lr", "loss", "width", "depth"} <= set(study.trials[0].params)
