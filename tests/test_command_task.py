"""A user's script run as a command per trial (`task: {command: ...}`): reports, health, crashes, kills, pruning."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from .conftest import REPO, run_cli, tree

# a script as a user writes it: argparse flags, a loop, three sweeper lines
SCRIPT = '''\
import argparse, os, signal, time
from pathlib import Path
from sweeper import current_run

p = argparse.ArgumentParser()
p.add_argument("--mode"); p.add_argument("--epochs", type=int); p.add_argument("--lr", type=float)
args = p.parse_args()
for once in ("crash", "kill"):  # a test's way to make the next trial crash or die, once
    if Path(f"{once}-next").exists():
        Path(f"{once}-next").unlink()
        args.mode = once
        break
run = current_run()
try:
    for epoch in range(args.epochs):
        accuracy = 0.1 if args.mode == "hang" else 0.5 + 0.1 * epoch
        run.report(epoch, {"accuracy": accuracy})
        if args.mode == "crash":
            raise ValueError("shapes do not match: (32, 10) vs (32, 11)")
        if args.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while args.mode == "hang":
            time.sleep(0.1)
finally:
    Path("cleaned-up").write_text(args.mode)
'''

STUDY = '''\
name: cmd
task:
  command: python fake_train.py --mode {mode} --epochs {epochs} --lr {lr}
  grace: 5
metric: accuracy
direction: maximize
budget: {trials: 2, epochs: 3}
sampler: {type: random, seed: 0}
pruner: {type: threshold, lower: 0.3}
fixed: {mode: ok}
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "fake_train.py").write_text(SCRIPT)
    (tmp_path / "cmd.yaml").write_text(STUDY)
    return tmp_path


def _trials(folder: Path, name: str = "cmd") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/results/{name}/study.db").get_trials()


def test_a_command_reports_each_epoch_to_its_trial(project: Path) -> None:
    proc = run_cli("run", "cmd.yaml", "--no-progress", cwd=project)
    assert proc.returncode == 0, proc.stderr
    trials = _trials(project)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.intermediate_values == {0: 0.5, 1: 0.6, 2: pytest.approx(0.7)}
        assert t.value == pytest.approx(0.7)  # the last reported value
        assert (project / "results" / "cmd" / "logs" / f"trial-{t.number}.log").exists()


def test_a_crashing_command_fails_its_trial_with_the_error_and_the_sweep_goes_on(project: Path) -> None:
    (project / "crash-next").touch()
    (project / "kill-next").touch()
    proc = run_cli("run", "cmd.yaml", "--trials", "1", "--no-progress", cwd=project)
    assert proc.returncode == 0, proc.stderr
    crashed, killed, ok = _trials(project)
    assert crashed.state == TrialState.FAIL
    assert crashed.user_attrs["error"] == (
        "RuntimeError: the command exited with code 1: ValueError: shapes do not match: (32, 10) vs (32, 11)")
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["error"] == "RuntimeError: the command was killed by SIGKILL"
    assert ok.state == TrialState.COMPLETE  # the budget (1 finished) was met by the trial after them
    log = (project / crashed.user_attrs["log"]).read_text()
    assert "Traceback" in log and "fake_train.py" in log  # the traceback is in the trial's log


def test_pruning_stops_the_command_cleanly(project: Path) -> None:
    t0 = time.monotonic()
    proc = run_cli("run", "cmd.yaml", "--trials", "1", "--set", "mode=hang", "--no-progress", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 60
    (t,) = _trials(project)
    assert t.state == TrialState.PRUNED and t.user_attrs["health.reason"] == "underperforming"
    # SIGTERM reached the script, which left through its `finally` block (not SIGKILL)
    assert (project / "cleaned-up").read_text() == "hang"


def test_the_example_in_command_mode_is_diagnosed_as_dead_gradients(tmp_path: Path) -> None:
    example = tmp_path / "digits_mlp"
    shutil.copytree(REPO / "examples" / "digits_mlp", example, ignore=shutil.ignore_patterns("results", "__pycache__"))
    script = example / "train.py"
    bug = "        return self.head(self.encoder(x))\n"
    script.write_text(script.read_text().replace(bug, "        with torch.no_grad():\n            h = self.encoder(x)\n"
                                                      "        return self.head(h)\n"))
    proc = run_cli("run", "study_command.yaml", "--trials", "1", "--set", "epochs=10", "--no-progress", cwd=example)
    assert proc.returncode == 0, proc.stderr
    (t,) = _trials(example, "digits_mlp_command")
    assert t.state == TrialState.PRUNED and t.user_attrs["health.reason"] == "dead_gradients"
    assert "encoder" in t.user_attrs["health.detail"]


@pytest.mark.parametrize(("edit", "match"), [
    (("{lr}", "{lrr}"), "`task.command` uses {lrr}, which is not a key of the study"),
    (("  grace: 5\n", "  grace: -1\n"), "`task.grace` must be seconds >= 0"),
    (("metric: accuracy\n", ""), "`metric` is required when `task` names a command"),
])
def test_a_bad_command_task_is_one_line_and_exit_2(project: Path, edit: tuple[str, str], match: str) -> None:
    (project / "cmd.yaml").write_text(STUDY.replace(*edit))
    before = tree(project)
    proc = run_cli("run", "cmd.yaml", cwd=project)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and match in proc.stderr, proc.stderr
    assert tree(project) == before


KEEPING = '''\
import torch
from sweeper import current_run

run = current_run()
model = torch.nn.Linear(2, 1, bias=False)
torch.nn.init.zeros_(model.weight)
run.keep_best(model)  # under `sweeper train --from-checkpoint`: the kept weights are loaded here
print(f"start weight {model.weight.sum().item():g}", flush=True)
for epoch in range(3):
    with torch.no_grad():
        model.weight += 1.0
    run.report(epoch, {"accuracy": [0.5, 0.9, 0.7][epoch]})
'''


@pytest.mark.slow  # three CLI processes (a sweep, train): CI runs it (make test-all)
def test_a_command_keeps_its_best_weights_and_train_starts_from_them(tmp_path: Path) -> None:
    (tmp_path / "keep.py").write_text(KEEPING)
    (tmp_path / "keep.yaml").write_text(STUDY.replace("name: cmd", "name: keep").replace(
        "python fake_train.py --mode {mode} --epochs {epochs} --lr {lr}", "python keep.py"))
    proc = run_cli("run", "keep.yaml", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "results" / "keep"
    kept = list((folder / "checkpoints").iterdir())
    assert len(kept) == 1  # checkpoints.keep defaults to 1: the other trial's folder is gone
    state = torch.load(kept[0] / "best.pt", weights_only=False)
    assert state["epoch"] == 1 and state["model"]["weight"].sum().item() == 4.0  # two of 2 weights, +1 twice
    trained = run_cli("train", "results/keep/best.yaml", "--from-checkpoint", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "start weight 4" in trained.stdout  # not 0: the kept weights were loaded
