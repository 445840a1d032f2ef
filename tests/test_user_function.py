"""A user's own argparse script as a study (`task: module:function`): the example in examples/."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from .conftest import REPO, run_cli, tree

EXAMPLE = REPO / "examples" / "digits_mlp"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example folder (script + study file), as a user's project."""
    shutil.copytree(EXAMPLE, tmp_path / "digits_mlp", ignore=shutil.ignore_patterns("results", "__pycache__"))
    return tmp_path / "digits_mlp"


def _study(folder: Path, name: str = "digits_mlp") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/results/{name}/study.db")


def test_the_example_script_runs_on_its_own(example: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "train.py", "--epochs", "2"], cwd=example, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "epoch   1 val_loss" in done.stdout  # without sweeper: run is None


@pytest.mark.slow  # a whole study of the example through the CLI, then sweeper train: CI runs it (make test-all)
def test_the_example_runs_as_a_study_and_its_best_config_under_sweeper_train(example: Path) -> None:
    proc = run_cli("run", "study.yaml", "--trials", "4", "--set", "epochs=4", "--no-progress", cwd=example)
    assert proc.returncode == 0, proc.stderr
    assert "4/4 finished" in proc.stdout
    trials = _study(example).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done and max(t.value for t in done) > 0.8  # it learns the digits
    for t in trials:
        assert t.user_attrs["config"]["epochs"] == 4
        assert set(t.params) == {"learning_rate", "dropout", "weight_decay", "hidden"}
    for t in done:
        assert len(t.intermediate_values) == 4  # one report per epoch reached the trial

    assert run_cli("export", "study.yaml", cwd=example).returncode == 0
    best = yaml.safe_load((example / "results" / "digits_mlp" / "best.yaml").read_text())
    assert best["task"] == "train:sweep" and best["metric"] == "accuracy"
    trained = run_cli("train", "results/digits_mlp/best.yaml", cwd=example)
    assert trained.returncode == 0, trained.stderr
    # the same function, outside any study, reproduces the best trial's value
    assert f"returned accuracy={best['provenance']['value']:.4f} after 4 reported epochs" in trained.stdout
    rows = (example / "results" / "digits_mlp" / "best.run" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,accuracy,loss" and len(rows) == 5

    # an ablation needs the script's baseline values, which only the study file can give
    text = (example / "study.yaml").read_text()
    (example / "study.yaml").write_text(text[:text.index("ablation:")])
    refused = run_cli("ablate", "study.yaml", cwd=example)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("sweeper: error: study.yaml: `ablation.baseline` must give the baseline value "
                                      "of every searched key for task train:sweep; missing: learning_rate, dropout, "
                                      "weight_decay, hidden")


def test_encoder_under_no_grad_is_pruned_as_dead_gradients(example: Path) -> None:
    script = example / "train.py"
    text = script.read_text()
    bug = "        return self.head(self.encoder(x))\n"
    assert bug in text
    # the write-ups' bug: the encoder's forward ran under torch.no_grad(), only the head learns
    script.write_text(text.replace(bug, "        with torch.no_grad():\n            h = self.encoder(x)\n"
                                        "        return self.head(h)\n"))
    proc = run_cli("run", "study.yaml", "--trials", "2", "--set", "epochs=10", "--no-progress", cwd=example)
    assert proc.returncode == 0, proc.stderr
    trials = _study(example).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:
        assert t.user_attrs["health.reason"] == "dead_gradients"
        assert "encoder" in t.user_attrs["health.detail"]
        assert t.user_attrs["epochs_run"] < 10


@pytest.mark.parametrize(("task", "extra", "match"), [
    ("nomodule:train", "", "task nomodule:train: no module 'nomodule' in "),
    ("train:nofunction", "", "has no function 'nofunction'"),
    ("train:sweep", "drop-metric", "`metric` is required"),
])
def test_a_bad_function_task_is_one_line_and_exit_2(example: Path, task: str, extra: str, match: str) -> None:
    text = (example / "study.yaml").read_text().replace("task: train:sweep", f"task: {task}")
    if extra == "drop-metric":
        text = text.replace("metric: accuracy\n", "")
    (example / "study.yaml").write_text(text)
    before = tree(example)
    proc = run_cli("run", "study.yaml", cwd=example)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and match in proc.stderr, proc.stderr
    assert tree(example) == before
