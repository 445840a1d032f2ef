"""Report table builders on synthetic studies (complete, pruned with reasons, failed), and plots."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweeper.report import factor_table, pruning_table, summary_markdown, trials_frame, write_results
from sweeper.spec import parse_spec

SPEC = parse_spec({
    "name": "synthetic", "task": "ctc_digits", "budget": {"trials": 8, "epochs": 6},
    "params": {
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "warmup_epochs": {"type": "int", "low": 0, "high": 2},
        "clip_norm": {"choices": [None, 1.0]},
    },
}, Path("studies/synthetic.yaml"))
DISTS = {"lr": FloatDistribution(1e-4, 1.0, log=True), "dropout": FloatDistribution(0.0, 0.5),
         "warmup_epochs": IntDistribution(0, 2), "clip_norm": CategoricalDistribution([None, 1.0])}

# (state, value, lr, dropout, warmup, clip, reason, epochs_run)
ROWS = [
    (TrialState.COMPLETE, 0.05, 3e-3, 0.1, 1, 1.0, None, 6),
    (TrialState.COMPLETE, 0.03, 5e-3, 0.2, 1, 1.0, None, 6),
    (TrialState.COMPLETE, 0.09, 2e-4, 0.3, 0, None, None, 6),
    (TrialState.PRUNED, 0.80, 4e-3, 0.4, 2, None, "underperforming", 2),
    (TrialState.PRUNED, None, 0.5, 0.1, 0, None, "grad_explosion", 1),
    (TrialState.PRUNED, None, 0.3, 0.2, 0, None, "grad_explosion", 1),
    (TrialState.PRUNED, None, 3e-4, 0.3, 2, 1.0, "ctc_infeasible", 0),
    (TrialState.FAIL, None, 1e-2, 0.4, 1, 1.0, None, 3),
]


def synthetic_study() -> optuna.Study:
    study = optuna.create_study(study_name="synthetic", direction="minimize")
    for state, value, lr, dropout, warmup, clip, reason, run in ROWS:
        params = {"lr": lr, "dropout": dropout, "warmup_epochs": warmup, "clip_norm": clip}
        attrs: dict[str, object] = {"config": {**params, "epochs": 6}, "epochs_run": run}
        if reason:
            attrs |= {"health.reason": reason, "health.detail": f"evidence for {reason}", "health.step": 10}
        if state == TrialState.FAIL:
            attrs["error"] = "RuntimeError: boom"
        trial = optuna.trial.create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                                          params=params, distributions=DISTS, user_attrs=attrs,
                                          intermediate_values={0: value} if value is not None else None)
        study.add_trial(trial)
    return study


def test_trials_frame_has_every_trial_and_column() -> None:
    frame = trials_frame(synthetic_study().trials, list(SPEC.params))
    assert list(frame["state"]) == [r[0].name for r in ROWS]
    assert frame.loc[7, "error"] == "RuntimeError: boom"
    assert frame.loc[4, "health.reason"] == "grad_explosion" and frame.loc[4, "epochs_run"] == 1


def test_factor_table_for_log_float_bins_by_decade() -> None:
    frame = trials_frame(synthetic_study().trials, list(SPEC.params))
    table = factor_table(frame, "lr", SPEC.params["lr"], "minimize").set_index("lr")
    assert list(table.index) == ["1e-4 to 1e-3", "1e-3 to 1e-2", "1e-2 to 1e-1", "1e-1 to 1e0"]
    assert table.loc["1e-3 to 1e-2", "trials"] == 3 and table.loc["1e-3 to 1e-2", "completed"] == 2
    assert table.loc["1e-3 to 1e-2", "best"] == 0.03
    assert table.loc["1e-3 to 1e-2", "median"] == pytest.approx(0.04)
    assert table.loc["1e-1 to 1e0", "pruned (reason n)"] == "grad_explosion 2"
    assert table.loc["1e-4 to 1e-3", "pruned (reason n)"] == "ctc_infeasible 1"
    assert table.loc["1e-2 to 1e-1", "trials"] == 1 and math.isnan(table.loc["1e-2 to 1e-1", "best"])  # failed only


def test_factor_table_for_categorical_and_small_int() -> None:
    frame = trials_frame(synthetic_study().trials, list(SPEC.params))
    clip = factor_table(frame, "clip_norm", SPEC.params["clip_norm"], "minimize").set_index("clip_norm")
    assert list(clip.index) == ["off", "1.0"]
    assert clip.loc["off", "trials"] == 4 and clip.loc["off", "best"] == 0.09
    warm = factor_table(frame, "warmup_epochs", SPEC.params["warmup_epochs"], "minimize")
    assert list(warm["warmup_epochs"]) == ["0", "1", "2"]
    drop = factor_table(frame, "dropout", SPEC.params["dropout"], "minimize")
    assert drop["trials"].sum() == len(ROWS) and len(drop) <= 4  # quartile bins cover every trial


def test_pruning_table() -> None:
    table = pruning_table(trials_frame(synthetic_study().trials, list(SPEC.params))).set_index("reason")
    assert table.loc["grad_explosion", "trials"] == 2
    assert table.loc["grad_explosion", "median epochs run"] == 1
    assert table.loc["ctc_infeasible", "median epochs run"] == 0
    assert table.loc["underperforming", "example"] == "trial 3: evidence for underperforming"
    assert table.index[0] == "grad_explosion"  # most frequent first


def test_summary_markdown() -> None:
    md = summary_markdown(synthetic_study(), SPEC)
    assert "trials by state: COMPLETE 3, FAIL 1, PRUNED 4" in md
    # pruned trials budgeted 6 epochs each: (6-2) + (6-1) + (6-1) + (6-0) = 20 not run
    assert "25 epochs run; pruning saved 20 epochs" in md  # 6+6+6+2+1+1+0 and the failed trial's 3
    assert "- best: wer = 0.03 (trial 1)" in md
    for section in ("## Top 3 trials", "### lr", "### clip_norm", "## Pruning reasons", "## Parameter importance"):
        assert section in md
    # every table is GitHub markdown: header, rule, rows of the same width
    for block in md.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if lines:
            assert set(lines[1]) <= set("|-")
            assert len({line.count(" | ") for line in lines if line != lines[1]}) == 1


def test_report_on_a_study_without_completed_trials_says_so() -> None:
    study = optuna.create_study(study_name="empty")
    md = summary_markdown(study, SPEC)
    assert "No trial has completed yet" in md


def test_plots_open_and_are_pictures(tmp_path: Path) -> None:
    paths = write_results(synthetic_study(), SPEC, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["curves.csv", "history.png", "importance.png", "learning_curves.png", "metric_vs_lr.png",
                     "summary.md", "trials.csv"]
    from PIL import Image

    for p in paths:
        if p.suffix == ".png":
            with Image.open(p) as img:
                assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 200
    assert len(pd.read_csv(tmp_path / "trials.csv")) == len(ROWS)
