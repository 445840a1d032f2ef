"""What a trial leaves behind: every metric per epoch (trials.csv, curves.csv, plots), TensorBoard
event files, MLflow runs, Optuna callbacks from the study file, and the best trials' weights."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState

from sweeper.cli import main

# A training function with a second metric and a switch that makes its loss NaN (a health prune).
TRAIN_PY = '''
import math
import torch

def train(config, run):
    torch.manual_seed(config["seed"])
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, opt)
    run.keep_best(model)
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True)
    for epoch in range(config["epochs"]):
        for _ in range(5):
            loss = torch.nn.functional.mse_loss(model(x), y) * config["scale"]
            if config["sick"]:
                loss = loss * math.nan
            opt.zero_grad(); loss.backward()
            run.after_backward(loss)
            opt.step()
        with torch.no_grad():
            err = torch.nn.functional.mse_loss(model(x), y).item()
        run.report(epoch, {"err": err, "aux": 10.0 * epoch + config["scale"]})
'''

STUDY = """\
name: fn
task: train:train
metric: err
direction: minimize
budget: {{trials: 4, epochs: 3}}
sampler: {{type: grid, seed: 0}}
pruner: {{type: none}}
health: {{check_every: 5}}
fixed: {{seed: 0}}
params:
  sick: {{type: categorical, choices: [false, true]}}
  scale: {{type: categorical, choices: [1.0, 0.5]}}
{extra}
"""


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> Path:
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "train.py").write_text(TRAIN_PY)
    (tmp_path / "studies" / "fn.yaml").write_text(STUDY.format(extra=textwrap.dedent(extra)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="fn", storage=f"sqlite:///{tmp_path}/results/fn/study.db").get_trials()


def test_every_metric_per_epoch_reaches_trials_csv_curves_and_tensorboard(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _project(tmp_path, monkeypatch)
    assert main(["run", "fn", "--no-progress"]) == 0
    trials = _trials(tmp_path)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and sum(t.state == TrialState.PRUNED for t in trials) == 2

    frame = pd.read_csv(tmp_path / "results" / "fn" / "trials.csv").set_index("number")
    curves = pd.read_csv(tmp_path / "results" / "fn" / "curves.csv")
    assert "aux@best" in frame.columns and "err@best" not in frame.columns  # the study's metric is `value`
    for t in done:
        # the extra metric at the epoch the value comes from
        assert frame.loc[t.number, "aux@best"] == pytest.approx(10.0 * t.user_attrs["best_epoch"]
                                                                 + t.params["scale"])
        mine = curves[curves["number"] == t.number]
        assert list(mine["epoch"]) == [0, 1, 2]
        assert list(mine["aux"]) == pytest.approx([0 + t.params["scale"], 10 + t.params["scale"],
                                                   20 + t.params["scale"]])
    assert (tmp_path / "results" / "fn" / "plots" / "learning_curves_aux.png").is_file()

    # TensorBoard reads one event file per trial: a scalar per metric per epoch, and the hparams
    for t in done:
        acc = EventAccumulator(str(tmp_path / "results" / "fn" / "tb" / f"trial-{t.number}"))
        acc.Reload()
        assert {"err", "aux"} <= set(acc.Tags()["scalars"])
        mine = curves[curves["number"] == t.number]
        assert [e.value for e in acc.Scalars("err")] == pytest.approx(list(mine["err"]), rel=1e-6)
        assert [e.step for e in acc.Scalars("aux")] == [0, 1, 2]
        assert acc.Scalars("hparam/err")[0].value == pytest.approx(t.value, rel=1e-6)
    sick = next(t for t in trials if t.state == TrialState.PRUNED)
    acc = EventAccumulator(str(tmp_path / "results" / "fn" / "tb" / f"trial-{sick.number}"))
    acc.Reload()
    assert "outcome/text_summary" in acc.Tags()["tensors"]  # the reason is recorded beside its curves


def test_mlflow_gets_a_run_per_trial_with_metrics_by_epoch_and_the_health_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _project(tmp_path, monkeypatch, f"trackers: {{tensorboard: false, mlflow: {{tracking_uri: '{uri}'}}}}")
    assert main(["run", "fn", "--no-progress"]) == 0
    assert not (tmp_path / "results" / "fn" / "tb").exists()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fn")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    trials = _trials(tmp_path)
    assert set(runs) == {f"trial-{t.number}" for t in trials}
    for t in trials:
        run = runs[f"trial-{t.number}"]
        assert run.data.params["scale"] == str(t.params["scale"])
        assert run.data.tags["sweeper.state"] == t.state.name.lower()
        if t.state == TrialState.PRUNED:
            assert run.data.tags["health.reason"] == t.user_attrs["health.reason"] == "nonfinite_loss"
            assert run.info.status == "KILLED"
        else:
            assert "health.reason" not in run.data.tags
            assert run.info.status == "FINISHED"
            steps = client.get_metric_history(run.info.run_id, "aux")
            assert [m.step for m in steps] == [0, 1, 2]
            assert [m.value for m in steps] == pytest.approx([10.0 * e + t.params["scale"] for e in range(3)])


def test_optuna_callbacks_named_in_the_study_file_are_called_and_can_stop_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _project(tmp_path, monkeypatch, """\
        trackers: {tensorboard: false}
        callbacks:
          - ref: optuna.study:MaxTrialsCallback
            args: {n_trials: 2, states: null}  # every state counts
          - seen:record
        """)
    (tmp_path / "studies" / "seen.py").write_text(
        "CALLS = []\n\ndef record(study, trial):\n    CALLS.append(trial.number)\n")
    assert main(["run", "fn", "--no-progress"]) == 0
    assert "ended before its budget: a callback called study.stop()" in capsys.readouterr().out
    assert len(_trials(tmp_path)) == 2  # MaxTrialsCallback stopped the 4-trial budget at 2
    import seen  # type: ignore[import-not-found]

    assert seen.CALLS == [0, 1]


@pytest.mark.parametrize(("callbacks", "message"), [
    ("callbacks: [nosuchmodule:cb]", "no module 'nosuchmodule'"),
    ("callbacks: [{ref: optuna.study:MaxTrialsCallback, args: {bogus: 1}}]", "MaxTrialsCallback(bogus=1) failed"),
    ("callbacks: oops", "`callbacks` must be a list"),
    ("trackers: {mlflow: 3}", "`trackers.mlflow` must be true, false or a mapping"),
    ("trackers: {tensorboard: maybe}", "`trackers.tensorboard` must be true, false or auto"),
    ("checkpoints: {keep: -1}", "`checkpoints.keep` must be an integer >= 0"),
])
def test_bad_tracker_callback_and_checkpoint_keys_are_one_line_errors_that_write_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        callbacks: str, message: str) -> None:
    _project(tmp_path, monkeypatch, callbacks)
    assert main(["run", "fn", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "fn.yaml" in err
    assert not (tmp_path / "results").exists()


def test_the_best_trials_weights_are_kept_exported_and_trained_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _project(tmp_path, monkeypatch, "trackers: {tensorboard: false}\ncheckpoints: {keep: 1}")
    assert main(["run", "fn", "--no-progress"]) == 0
    trials = _trials(tmp_path)
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    kept = sorted(p.name for p in (tmp_path / "results" / "fn" / "checkpoints").iterdir())
    assert kept == [f"trial-{best.number}"]  # the other complete trial's and the pruned ones' are gone
    state = torch.load(tmp_path / "results" / "fn" / "checkpoints" / kept[0] / "best.pt", weights_only=False)
    assert state["epoch"] == best.user_attrs["best_epoch"] and state["metric"] == pytest.approx(best.value)

    doc = yaml.safe_load((tmp_path / "results" / "fn" / "best.yaml").read_text())
    assert doc["checkpoint"] == f"checkpoints/trial-{best.number}/best.pt"
    capsys.readouterr()
    # from the kept weights, the first epoch is already as good as the trial's best
    assert main(["train", "results/fn/best.yaml", "--from-checkpoint", "--out", "warm"]) == 0
    assert main(["train", "results/fn/best.yaml", "--out", "cold"]) == 0
    warm = pd.read_csv(tmp_path / "warm" / "metrics.csv")
    cold = pd.read_csv(tmp_path / "cold" / "metrics.csv")
    assert warm["err"].iloc[0] <= best.value + 1e-6 < cold["err"].iloc[0]
    assert main(["train", "results/fn/best.yaml", "--from-checkpoint", "missing.pt"]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err


@pytest.mark.slow  # a ctc_digits trial and two training runs: CI runs it (make test-all)
def test_a_built_in_task_starts_from_its_kept_checkpoint(workdir: Path) -> None:
    assert main(["run", "tiny", "--trials", "1", "--no-progress"]) == 0
    doc = yaml.safe_load((workdir / "results" / "tiny" / "best.yaml").read_text())
    kept = workdir / "results" / "tiny" / doc["checkpoint"]
    # at a learning rate of ~0 the model does not move: its first evaluation is the kept weights'
    frozen = ["--set", "epochs=1", "--set", "lr=1e-12"]
    assert main(["train", "results/tiny/best.yaml", "--from-checkpoint", *frozen, "--out", "warm"]) == 0
    assert main(["train", "results/tiny/best.yaml", *frozen, "--out", "cold"]) == 0
    assert pd.read_csv(workdir / "warm" / "metrics.csv")["wer"].iloc[0] == pytest.approx(
        doc["provenance"]["value"], abs=1e-6)
    start = torch.load(kept, weights_only=False)["model"]
    # the parameters (batch-norm statistics move in train mode whatever the learning rate)
    start = {k: v for k, v in start.items() if "running_" not in k and "num_batches" not in k}
    for run, same in (("warm", True), ("cold", False)):
        weights = torch.load(workdir / run / "best.pt", weights_only=False)["model"]
        close = all(torch.allclose(weights[k], start[k], atol=1e-6) for k in start)
        assert close is same, run
