"""The search-efficiency bench: a sweeper variant changes the sweeper arm alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench" / "search_efficiency.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("search_efficiency", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_efficiency"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


se = _load()


def test_a_sweeper_variant_changes_the_sweeper_arm_and_no_baseline() -> None:
    variant = (("sampler.n_startup_trials", 5), ("pruner.type", "percentile"), ("pruner.percentile", 33))
    mine = se.load(se.Job("classify_many", "sweeper", 3, 4, 2, (), variant))
    assert mine.sampler.options["n_startup_trials"] == 5 and mine.sampler.seed == 3
    assert mine.pruner.type == "percentile" and mine.pruner.options["percentile"] == 33
    assert mine.pruner.options["n_warmup_steps"] == 5  # the study's own options stay
    plain = se.load(se.Job("classify_many", "optuna", 3, 4, 2, (), variant))
    assert "n_startup_trials" not in plain.sampler.options
    assert plain.pruner.type == "median" and "percentile" not in plain.pruner.options


def test_epochs_to_reach_counts_pruned_epochs_and_never() -> None:
    run = {"direction": "maximize", "trials": [
        {"state": "COMPLETE", "value": 0.5, "epochs": 4},
        {"state": "PRUNED", "value": 0.9, "epochs": 2},  # a pruned trial's value is no result
        {"state": "COMPLETE", "value": 0.8, "epochs": 4}]}
    points = se.curve(run)
    assert se.epochs_to_reach(points, 0.8, minimize=False) == 10
    assert se.epochs_to_reach(points, 0.85, minimize=False) == float("inf")
