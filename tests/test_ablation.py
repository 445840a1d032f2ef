"""Ablation: the design, the statistics, resume after a kill, crashed runs, bad input."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

import sweeper.sweep as sweep_module
from sweeper.ablation import CELL_ATTR, SEED_ATTR, ablation_table, design
from sweeper.cli import main

from .conftest import REPO, run_cli, tree

BASE = {"lr": 1e-3, "dropout": 0.0, "clip_norm": 1.0, "seed": 0, "epochs": 2}
BEST = {"lr": 5e-3, "dropout": 0.2, "clip_norm": 1.0, "seed": 0, "epochs": 2}


def test_design_has_endpoints_leave_one_out_and_in() -> None:
    cells = {c.id: c for c in design(BASE, BEST)}
    assert list(cells) == ["best", "baseline", "best-lr", "best-dropout", "baseline+lr", "baseline+dropout"]
    # with two factors, leaving one in is leaving the other out: same config, run once
    assert cells["baseline+lr"].same_as == "best-dropout" and cells["baseline+dropout"].same_as == "best-lr"
    assert [c.id for c in cells.values() if c.same_as is None] == ["best", "baseline", "best-lr", "best-dropout"]
    assert cells["best-lr"].config == {**BEST, "lr": 1e-3} and cells["best-lr"].kind == "leave-one-out"
    assert cells["baseline+dropout"].config == {**BASE, "dropout": 0.2}
    assert cells["best-lr"].change == "0.005 -> 0.001"
    assert "clip_norm" not in " ".join(cells)  # equal in both: not a factor (nor is seed)


def test_design_with_one_factor_runs_no_config_twice() -> None:
    cells = {c.id: c for c in design(BASE, {**BASE, "lr": 5e-3})}
    assert cells["best-lr"].same_as == "baseline" and cells["baseline+lr"].same_as == "best"


def test_design_with_three_factors_runs_eight_configs() -> None:
    best3 = {**BEST, "clip_norm": None}
    cells = design(BASE, best3)
    assert len(cells) == 8 and all(c.same_as is None for c in cells)


def _trial(cell: str, seed: int, value: float | None, state: TrialState = TrialState.COMPLETE,
           reason: str | None = None) -> optuna.trial.FrozenTrial:
    attrs: dict[str, Any] = {CELL_ATTR: cell, SEED_ATTR: seed}
    if reason:
        attrs["health.reason"] = reason
    return optuna.trial.create_trial(state=state, value=value, user_attrs=attrs)


def test_table_statistics_paired_by_seed() -> None:
    cells = design(BASE, BEST)
    trials = [_trial("best", s, v) for s, v in enumerate([0.10, 0.12, 0.11])]
    trials += [_trial("baseline", s, v) for s, v in enumerate([0.30, 0.33, 0.30])]
    trials += [_trial("best-lr", s, v) for s, v in enumerate([0.11, 0.12, 0.12])]
    trials += [_trial("best-dropout", 0, None, TrialState.PRUNED, "grad_explosion"), _trial("best-dropout", 1, 0.2)]
    table = ablation_table(trials, cells, 3, "minimize").set_index("cell")
    assert table.loc["baseline+lr", "mean"] == 0.2  # shares the runs of best-dropout
    assert table.loc["baseline+lr", "kind"] == "leave-one-in (runs of best-dropout)"
    assert table.loc["best", "mean"] == pytest.approx(0.11) and table.loc["best", "std"] == pytest.approx(0.01)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t(0.975, 2)
    assert table.loc["best", "ci95 low"] == pytest.approx(0.11 - half)
    assert table.loc["baseline", "diff to best"] == pytest.approx(0.20)
    from scipy import stats

    p = stats.ttest_rel([0.30, 0.33, 0.30], [0.10, 0.12, 0.11]).pvalue
    assert table.loc["baseline", "p (paired by seed)"] == pytest.approx(p)
    assert math.isnan(table.loc["best", "p (paired by seed)"])
    assert table.loc["best-dropout", "runs"] == 2 and table.loc["best-dropout", "health-pruned"] == 1
    assert table.loc["best-dropout", "health reasons"] == "grad_explosion 1"
    assert table.loc["best", "health reasons"] == ""
    assert table.loc["best-dropout", "mean"] == 0.2 and math.isnan(table.loc["best-dropout", "std"])
    assert table.loc["baseline+dropout", "runs"] == 3  # the runs of best-lr


ABLATION = """
ablation:
  seeds: 2
  baseline: {lr: 0.001, dropout: 0.0}
"""


def _ablation_trials(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny-ablation", storage="sqlite:///results/tiny/study.db").get_trials()


def test_ablation_killed_midway_resumes_with_only_the_missing_runs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text() + ABLATION)
    assert main(["run", "tiny", "--trials", "2", "--set", "epochs=1", "--no-progress"]) == 0
    real_fit = sweep_module.fit
    calls: list[dict[str, Any]] = []
    interrupted: list[bool] = []

    def fit(config: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(dict(config))
        if len(calls) == 5 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # Ctrl-C in the fifth run, once
        return real_fit(config, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "fit", fit)
    assert main(["ablate", "tiny", "--no-progress"]) == 130
    assert "resume with: sweeper ablate tiny --no-progress" in capsys.readouterr().err
    done_before = {(t.user_attrs[CELL_ATTR], t.user_attrs[SEED_ATTR]) for t in _ablation_trials(workdir)
                   if t.state == TrialState.COMPLETE}
    assert len(done_before) == 4

    calls.clear()
    assert main(["ablate", "tiny", "--no-progress"]) == 0
    trials = _ablation_trials(workdir)
    done = [(t.user_attrs[CELL_ATTR], t.user_attrs[SEED_ATTR]) for t in trials if t.state == TrialState.COMPLETE]
    table = pd.read_csv(workdir / "results/tiny/ablation.csv").set_index("cell")
    n_cells = int((~table["kind"].str.contains("runs of")).sum())  # distinct configs
    assert len(done) == len(set(done)) == n_cells * 2  # every (cell, seed) run exactly once
    assert len(calls) == n_cells * 2 - 4  # the second call ran only the missing runs
    assert (table["runs"] == 2).all()
    assert {"best", "baseline", "best-lr", "best-dropout", "baseline+lr", "baseline+dropout"} <= set(table.index)
    md = (workdir / "results/tiny/ablation.md").read_text()
    assert "| cell | kind | change | runs | health-pruned | health reasons | mean | std | ci95 low |" in md
    # the runs really used their cell's config and seed
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["config"]["seed"] == t.user_attrs[SEED_ATTR]
            if t.user_attrs[CELL_ATTR] == "baseline":
                assert t.user_attrs["config"]["lr"] == 0.001 and t.user_attrs["config"]["dropout"] == 0.0


def test_a_crashed_run_is_run_again(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text() + ABLATION.replace("seeds: 2", "seeds: 1"))
    assert main(["run", "tiny", "--trials", "2", "--set", "epochs=1", "--no-progress"]) == 0
    real_fit = sweep_module.fit
    calls: list[int] = []

    def fit(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "fit", fit)
    assert main(["ablate", "tiny", "--no-progress"]) == 0
    trials = _ablation_trials(workdir)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    again = [t for t in trials if t.state == TrialState.COMPLETE
             and t.user_attrs[CELL_ATTR] == failed[0].user_attrs[CELL_ATTR]]
    assert len(again) == 1


def test_baseline_key_not_in_the_study_exits_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text() + "ablation:\n  baseline: {momentum: 0.9}\n")
    before = tree(workdir)
    assert main(["ablate", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`ablation.baseline.momentum` is not in the study" in err[0]
    assert tree(workdir) == before


def test_ablation_without_a_completed_trial_exits_2(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("nope")

    monkeypatch.setattr(sweep_module, "fit", broken)
    main(["run", "tiny", "--trials", "5", "--no-progress"])
    capsys.readouterr()
    assert main(["ablate", "tiny"]) == 2
    assert "has no completed trial: there is no best config to ablate" in capsys.readouterr().err


FIX_LIST = """
ablation:
  seeds: 1
  baseline: {lr: 0.001, dropout: 0.0}
  target: {lr: 0.005, dropout: 0.2}
"""


def test_a_fix_list_is_ablated_without_a_search(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text().replace("epochs: 2", "epochs: 1") + FIX_LIST)
    assert main(["ablate", "tiny", "--no-progress"]) == 0  # no `sweeper run` before: the target is given
    assert "target = `ablation.target` in the study file (lr=0.005, dropout=0.2)" in capsys.readouterr().out
    table = pd.read_csv(workdir / "results/tiny/ablation.csv").set_index("cell")
    assert list(table.index) == ["target", "baseline", "target-lr", "target-dropout", "baseline+lr",
                                 "baseline+dropout"]
    assert table.loc["target-lr", "change"] == "0.005 -> 0.001" and "diff to target" in table.columns
    assert table.loc["target", "diff to target"] == 0 and (table["runs"] == 1).all()
    configs = {t.user_attrs[CELL_ATTR]: t.user_attrs["config"] for t in _ablation_trials(workdir)}
    assert len(configs) == 4  # two factors: the leave-one-in cells are the leave-one-out ones
    assert (configs["target"]["lr"], configs["target"]["dropout"]) == (0.005, 0.2)
    assert configs["target"]["clip_norm"] == configs["baseline"]["clip_norm"] == 1.0  # the task default
    assert "Target: `ablation.target` in the study file" in (workdir / "results/tiny/ablation.md").read_text()


@pytest.mark.parametrize(("section", "message"), [
    ("target: {lr: 0.001}", "`ablation.target` changes nothing: every key it sets has the baseline's value"),
    ("target: {}", "`ablation.target` must be the keys a fix list changes, with their new values, got {}"),
    ("target: {momentum: 0.9}", "`ablation.target.momentum` is not in the study"),
    ("target: {lr: fast}", "`ablation.target.lr` must be a number > 0, got 'fast'"),
])
def test_a_bad_target_exits_2_and_writes_nothing(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                 section: str, message: str) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text() + f"ablation:\n  baseline: {{lr: 0.001, dropout: 0.0}}\n  {section}\n")
    before = tree(workdir)
    assert main(["ablate", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "tiny.yaml" in err[0]
    assert tree(workdir) == before


@pytest.mark.slow  # two CLI runs, 38 short runs: CI runs it (make test-all)
def test_the_ctc_fix_list_study_searches_and_ablates_on_a_small_budget(tmp_path: Path) -> None:
    text = (REPO / "studies" / "ctc_fixlist.yaml").read_text()
    small = (text.replace("\n  epochs: 20", "\n  epochs: 2").replace("seeds: 3", "seeds: 1")
             .replace("  batch_size: 32\n", "  batch_size: 32\n  train_strips: 256\n  val_strips: 64\n"))
    assert small.count("train_strips") == 1 and "\n  epochs: 2\n" in small and "grace_epochs: 20" in small
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "ctc_fixlist.yaml").write_text(small)
    proc = run_cli("run", "ctc_fixlist", "--trials", "2", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # 12 cells x 3 seeds: more runs than the study's grid has points, which only its search is held to
    proc = run_cli("ablate", "ctc_fixlist", "--seeds", "3", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "results/ctc_fixlist/ablation.csv").set_index("cell")
    fixes = ["lr", "warmup_epochs", "weight_decay", "dropout", "downsample"]
    assert set(table.index) == {"target", "baseline", *(f"target-{f}" for f in fixes),
                                *(f"baseline+{f}" for f in fixes)}
    assert table.loc["baseline+lr", "change"] == "1.0e-04 -> 3.0e-04"
    # 32x downsampling leaves fewer frames than digits: every cell that keeps it is stopped before training
    at_32x = {"baseline", "target-downsample", *(f"baseline+{f}" for f in fixes if f != "downsample")}
    for cell in table.index:
        assert table.loc[cell, "health-pruned"] == (3 if cell in at_32x else 0), cell
        assert (table.loc[cell, "health reasons"] == "ctc_infeasible 3") == (cell in at_32x), cell
    trials = optuna.load_study(study_name="ctc_fixlist-ablation",
                               storage=f"sqlite:///{tmp_path}/results/ctc_fixlist/study.db").get_trials()
    assert {t.user_attrs["health.reason"] for t in trials if t.state == TrialState.PRUNED} == {"ctc_infeasible"}


def _ablation_runs(workdir: Path) -> list[tuple[str, int]]:
    return [(t.user_attrs[CELL_ATTR], t.user_attrs[SEED_ATTR]) for t in _ablation_trials(workdir)
            if t.state == TrialState.COMPLETE]


def test_two_workers_run_every_cell_and_seed_once(workdir: Path) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text().replace("epochs: 2", "epochs: 1") + FIX_LIST.replace("seeds: 1", "seeds: 3"))
    proc = run_cli("ablate", "tiny", "--workers", "2", "--no-progress", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "; 2 workers" in proc.stdout
    runs = _ablation_runs(workdir)
    assert sorted(runs) == sorted({(c, s) for c in ("target", "baseline", "target-lr", "target-dropout")
                                   for s in range(3)})  # 4 distinct configs x 3 seeds, each once
    trials = _ablation_trials(workdir)
    assert not [t for t in trials if t.state != TrialState.COMPLETE]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both worker processes ran cells
    table = pd.read_csv(workdir / "results/tiny/ablation.csv").set_index("cell")
    assert (table["runs"] == 3).all()


@pytest.mark.slow  # real processes, each run 30 epochs: CI runs it (make test-all)
def test_ctrl_c_stops_two_ablation_workers_and_the_same_command_runs_only_the_missing_runs(workdir: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    from .conftest import sweeper_cmd

    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text().replace("epochs: 2", "epochs: 30") + "health:\n  enabled: false\n"
                    + FIX_LIST.replace("seeds: 1", "seeds: 2"))
    args = ["ablate", "tiny", "--workers", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(sweeper_cmd(*args), cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, process_group=0,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # both workers mid-run, after at least one run finished
        assert proc.poll() is None, proc.communicate()
        try:
            trials = _ablation_trials(workdir)
        except Exception:  # the study is still being created
            trials = []
        running = [t for t in trials if t.state == TrialState.RUNNING and 0 < len(t.intermediate_values) < 25]
        if len(running) == 2 and any(t.state == TrialState.COMPLETE for t in trials):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the workers never were both mid-run")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with: sweeper ablate tiny --workers 2 --no-progress" in err and "Traceback" not in err
    done_before = set(_ablation_runs(workdir))
    assert (workdir / "results/tiny/ablation.csv").exists()  # the table of what finished, written on the way out

    again = subprocess.run(sweeper_cmd(*args), cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    runs = _ablation_runs(workdir)
    assert len(runs) == len(set(runs)) == 8  # 4 distinct configs x 2 seeds, each once
    assert done_before < set(runs)
    interrupted = [t for t in _ablation_trials(workdir) if t.state == TrialState.FAIL]
    assert len(interrupted) == 2 and {t.user_attrs["error"] for t in interrupted} == {"interrupted"}
    table = pd.read_csv(workdir / "results/tiny/ablation.csv").set_index("cell")
    assert (table["runs"] == 2).all()
