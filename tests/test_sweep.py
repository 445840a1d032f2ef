"""Sweeps in-process: end to end, budget across invocations, interrupts, failures, results."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import weakref
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

import sweeper.sweep as sweep_module
from sweeper.cli import main
from sweeper.spec import load_spec
from sweeper.sweep import Sweep, error_summary

STORAGE = "sqlite:///results/tiny/study.db"


def load(name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=STORAGE)


def test_tiny_sweep_end_to_end(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tiny", "--no-progress"]) == 0
    out = capsys.readouterr().out
    study = load()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert [t.number for t in trials] == [0, 1, 2, 3]
    for t in trials:
        assert len(t.intermediate_values) == 2  # the epoch metric, reported every epoch
        assert t.user_attrs["config"]["model_size"] == "tiny"
        assert t.user_attrs["epochs_run"] == 2
    # one progress line per finished trial, with number, state, metric and params
    lines = [line for line in out.splitlines() if line.startswith("trial")]
    assert len(lines) == 4 and "COMPLETE" in lines[0] and "wer=" in lines[0] and "lr=" in lines[0]

    folder = workdir / "results" / "tiny"
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert len(rows) == 4
    assert {"number", "state", "value", "lr", "dropout", "clip_norm", "epochs_run", "seconds",
            "health.reason"} <= set(rows[0])
    best = min(trials, key=lambda t: t.value)
    summary = (folder / "summary.md").read_text()
    assert f"best: wer = {best.value:.4g} (trial {best.number})" in summary
    assert "| number | value |" in summary
    exported = yaml.safe_load((folder / "best.yaml").read_text())
    assert exported["task"] == "ctc_digits"
    assert exported["config"] == best.user_attrs["config"]
    assert exported["provenance"]["trial"] == best.number
    assert exported["provenance"]["value"] == best.value
    assert exported["provenance"]["code"].startswith("sweeper ")


def test_budget_is_the_study_total_across_invocations(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tiny", "--trials", "3", "--set", "epochs=1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["run", "tiny", "--trials", "5", "--set", "epochs=1", "--no-progress"]) == 0
    second = capsys.readouterr().out
    assert len([line for line in second.splitlines() if line.startswith("trial")]) == 2  # ran only 2
    trials = load().get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # the same budget again runs nothing
    assert main(["run", "tiny", "--trials", "5", "--set", "epochs=1", "--no-progress"]) == 0
    assert len(load().get_trials()) == 5


def test_resumed_sampler_does_not_replay_first_proposals(workdir: Path) -> None:
    assert main(["run", "tiny", "--trials", "2", "--set", "epochs=1", "--no-progress"]) == 0
    assert main(["run", "tiny", "--trials", "4", "--set", "epochs=1", "--no-progress"]) == 0
    params = [json.dumps(t.params, sort_keys=True) for t in load().get_trials()]
    assert len(set(params)) == 4


def test_pinned_parameters_are_not_sampled(workdir: Path) -> None:
    assert main(["run", "tiny", "--trials", "2", "--set", "epochs=1", "--set", "lr=0.005", "--no-progress"]) == 0
    for t in load().get_trials():
        assert "lr" not in t.params and t.user_attrs["config"]["lr"] == 0.005


def _interrupt_on_call(n: int, monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> list[int]:
    real_fit = sweep_module.fit
    calls: list[int] = []

    def fit(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "fit", fit)
    return calls


def test_ctrl_c_fails_the_running_trial_and_the_next_run_retries_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _interrupt_on_call(2, monkeypatch, KeyboardInterrupt())
    assert main(["run", "tiny", "--set", "epochs=1", "--no-progress"]) == 130
    captured = capsys.readouterr()
    assert "resume with: sweeper run" in captured.err
    trials = load().get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["error"] == "interrupted"
    assert (workdir / "results" / "tiny" / "trials.csv").exists()  # results are written on interrupt too

    monkeypatch.undo()
    monkeypatch.chdir(workdir)
    assert main(["run", "tiny", "--set", "epochs=1", "--no-progress"]) == 0
    trials = load().get_trials()
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 4 and [t.number for t in trials] == list(range(len(trials)))
    retry = trials[2]
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == trials[1].params
    assert retry.user_attrs.get("error") is None


def test_a_raising_trainer_fails_its_trial_and_the_sweep_goes_on(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _interrupt_on_call(2, monkeypatch, RuntimeError("CUDA error: device-side assert"))
    assert main(["run", "tiny", "--set", "epochs=1", "--no-progress"]) == 0
    trials = load().get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 4
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["error"] == "RuntimeError: CUDA error: device-side assert"
    assert "[error: RuntimeError" in capsys.readouterr().out


def test_failure_rate_stops_the_sweep(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("shapes do not match")

    monkeypatch.setattr(sweep_module, "fit", broken)
    assert main(["run", "tiny", "--trials", "50", "--no-progress"]) == 1
    # the stop names the errors, grouped, with the trials that raised them
    assert "5 of 5 trials failed: ValueError: shapes do not match (trials 0, 1, 2, 3, 4)" in capsys.readouterr().err
    assert len(load().get_trials()) == 5


def test_error_summary_groups_by_error_most_frequent_first() -> None:
    def failed(number: int, error: str) -> optuna.trial.FrozenTrial:
        t = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"error": error})
        t.number = number
        return t

    trials = [failed(0, "KeyError: 'x'"), failed(1, "OSError: disk full"), failed(2, "OSError: disk full"),
              failed(3, "A: 1"), failed(4, "B: 2"), failed(5, "C: 3")]
    assert error_summary(trials) == ("OSError: disk full (trials 1, 2); KeyError: 'x' (trial 0); A: 1 (trial 3); "
                                     "and 2 other errors")


def test_out_of_memory_fails_with_reason_oom_frees_the_model_and_the_next_trial_runs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_fit = sweep_module.fit
    models: list[weakref.ref[torch.nn.Module]] = []
    freed_before_next: list[bool] = []

    def fit(*args: Any, **kwargs: Any) -> Any:
        if not models:
            model = torch.nn.Linear(512, 512)  # what a trial holds when the allocator gives up
            models.append(weakref.ref(model))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 1.50 GiB free)")
        if not freed_before_next:
            freed_before_next.append(models[0]() is None)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "fit", fit)
    assert main(["run", "tiny", "--set", "epochs=1", "--no-progress"]) == 0
    trials = load().get_trials()
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["health.reason"] == "oom"
    assert trials[0].user_attrs["error"].startswith("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert freed_before_next == [True]  # the failed trial's model was gone before the next trial began
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 4  # the sweep went on to its budget
    assert "[oom: out of memory in epoch 0: CUDA out of memory" in capsys.readouterr().out


def test_pruned_trials_count_in_budget_with_a_reason(workdir: Path) -> None:
    spec_path = workdir / "studies" / "tiny.yaml"
    spec_path.write_text(spec_path.read_text().replace("type: none", "type: threshold\n  upper: 0.0"))
    assert main(["run", "tiny", "--no-progress"]) == 0
    trials = load().get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 4
    for t in trials:
        assert t.user_attrs["health.reason"] == "underperforming"
        # ctc_digits warms its lr up over 1 epoch by default: the first judgement is after it
        assert t.user_attrs["config"]["warmup_epochs"] == 1
        assert "threshold pruner stopped it after epoch 1" in t.user_attrs["health.detail"]
        assert t.user_attrs["epochs_run"] == 2
    rows = list(csv.DictReader((workdir / "results" / "tiny" / "trials.csv").open()))
    assert {r["health.reason"] for r in rows} == {"underperforming"}


def test_storage_is_plain_optuna_for_the_cli_and_dashboard(workdir: Path) -> None:
    import subprocess

    assert main(["run", "tiny", "--trials", "2", "--set", "epochs=1", "--no-progress"]) == 0
    optuna_cli = Path(sys.executable).with_name("optuna")
    out = subprocess.run([str(optuna_cli), "trials", "--study-name", "tiny", "--storage", STORAGE, "-f", "json"],
                         capture_output=True, text=True, check=True).stdout
    assert [t["number"] for t in json.loads(out)] == [0, 1]

    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    app = wsgi(STORAGE)
    environ: dict[str, Any] = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    assert status[0].startswith("200")
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["tiny"]


def test_direction_mismatch_with_existing_study_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tiny", "--trials", "1", "--set", "epochs=1", "--no-progress"]) == 0
    spec_path = workdir / "studies" / "tiny.yaml"
    spec_path.write_text(spec_path.read_text() + "direction: maximize\n")
    assert main(["run", "tiny", "--trials", "2", "--no-progress"]) == 2
    assert "was created to minimize its metric" in capsys.readouterr().err
    assert len(load().get_trials()) == 1


def test_study_name_runs_two_studies_in_one_storage(workdir: Path) -> None:
    for name in ("a", "b"):
        assert main(["run", "tiny", "--study-name", name, "--trials", "1", "--set", "epochs=1", "--no-progress"]) == 0
    assert sorted(optuna.get_all_study_names(STORAGE)) == ["a", "b"]
    assert (workdir / "results" / "a" / "trials.csv").exists()


def test_sweep_api_in_process(workdir: Path) -> None:
    out = io.StringIO()
    outcome = Sweep(load_spec("tiny"), overrides={"epochs": 1}, trials=2, out=out, progress=False).run()
    assert outcome.ran == 2 and outcome.counts == {"COMPLETE": 2} and not outcome.interrupted
    assert out.getvalue().count("COMPLETE") == 2


# -- sampler.type: grid: every combination once, across resumes and workers

def _grid_study(workdir: Path) -> None:
    text = (workdir / "studies" / "tiny.yaml").read_text()
    text = text.replace("sampler:\n  type: tpe\n  seed: 0\n", "sampler:\n  type: grid\n  seed: 3\n")
    text = text[:text.index("params:")] + (
        "params:\n"
        "  lr: {type: categorical, choices: [1.0e-3, 5.0e-3]}\n"
        "  dropout: {type: float, low: 0.0, high: 0.2, step: 0.1}\n"
        "  clip_norm: {type: categorical, choices: [null, 1.0]}\n")
    (workdir / "studies" / "grid.yaml").write_text(text.replace("name: tiny", "name: grid"))


GRID_POINTS = {json.dumps({"clip_norm": c, "dropout": d, "lr": lr}, sort_keys=True)
               for lr in (1e-3, 5e-3) for d in (0.0, 0.1, 0.2) for c in (None, 1.0)}


@pytest.mark.slow  # three CLI runs, two of them workers: CI runs it (make test-all)
def test_a_grid_study_runs_every_point_once_across_a_resume_and_two_workers(workdir: Path) -> None:
    from .conftest import run_cli

    _grid_study(workdir)
    assert main(["run", "grid", "--trials", "5", "--set", "epochs=1", "--no-progress"]) == 0
    # resumed by two worker processes: the grid's order must be the one the first run used
    proc = run_cli("run", "grid", "--trials", "12", "--workers", "2", "--set", "epochs=1", "--no-progress",
                   cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="grid", storage="sqlite:///results/grid/study.db").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12
    assert len({t.user_attrs["worker"] for t in trials[5:]}) == 2
    assert {json.dumps(t.params, sort_keys=True) for t in trials} == GRID_POINTS


@pytest.mark.parametrize(("args", "match"), [
    (["--trials", "13"], r"the trial budget must be at most the grid's 12 points .*got 13 \(with --trials 13\)"),
    (["--trials", "7", "--set", "lr=0.001"],
     r"at most the grid's 6 points .*\(3 dropout x 2 clip_norm; .*got 7 \(with --trials 7 --set lr=0.001\)"),
])
def test_a_budget_beyond_the_grid_is_one_line_exit_2_and_writes_nothing(
        workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str) -> None:
    from .conftest import tree

    _grid_study(workdir)
    before = tree(workdir)
    assert main(["run", "grid", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "grid.yaml" in err
    assert re.search(match, err), err
    assert tree(workdir) == before
