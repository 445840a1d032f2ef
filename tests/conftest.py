from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]

# A study small enough for tests: ~0.3 s a trial on 2 CPU cores.
TINY_STUDY = """\
name: tiny
task: ctc_digits
budget:
  trials: 4
  epochs: 2
  retries: 2
heartbeat:
  interval: 1
  grace: 3
sampler:
  type: tpe
  seed: 0
pruner:
  type: none
fixed:
  model_size: tiny
  train_strips: 96
  val_strips: 32
  batch_size: 32
params:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  dropout: {type: float, low: 0.0, high: 0.3}
  clip_norm: {type: categorical, choices: [null, 1.0]}
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder with studies/tiny.yaml, as the current directory."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.yaml").write_text(TINY_STUDY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def sweeper_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeper", *args]


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sweeper ARGS`` in ``cwd`` as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(sweeper_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def tree(path: Path) -> set[str]:
    """Every file and folder under ``path`` (to prove a command wrote nothing)."""
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def run_study_file(name: str, cwd: Path, *, trials: int, epochs: int) -> optuna.Study:
    """``sweeper run studies/NAME.yaml`` (the repository's file) on a small budget in ``cwd``, as
    ``make sweep STUDY=NAME TRIALS=.. ARGS='--set epochs=..'`` runs it; checks the budget and summary."""
    proc = run_cli("run", str(REPO / "studies" / f"{name}.yaml"), "--trials", str(trials), "--set",
                   f"epochs={epochs}", "--no-progress", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{cwd}/results/{name}/study.db")
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == trials
    assert (cwd / "results" / name / "summary.md").exists()
    return study
