"""`sweeper export` then `sweeper train`: the same fit(), the same number, resumable."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from sweeper.cli import main


def test_train_reproduces_the_best_trial_and_resumes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tiny", "--trials", "2", "--no-progress"]) == 0
    assert main(["export", "tiny"]) == 0
    best_yaml = workdir / "results" / "tiny" / "best.yaml"
    doc = yaml.safe_load(best_yaml.read_text())
    study = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db")
    best = study.best_trial
    assert doc["provenance"]["trial"] == best.number
    capsys.readouterr()

    assert main(["train", str(best_yaml)]) == 0
    out = capsys.readouterr().out
    run_dir = workdir / "results" / "tiny" / "best.run"
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    # same seed, same data, same code on CPU: the very number the trial reported
    assert min(float(r["wer"]) for r in rows) == best.value
    assert f"done: best wer={best.value:.4f}" in out
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == doc["config"]
    for name in ("last.pt", "best.pt"):
        saved = torch.load(run_dir / name, weights_only=False)
        assert saved["config"] == doc["config"]  # each checkpoint holds its config

    # again: resumes from last.pt, which already holds every epoch, so no epoch runs
    assert main(["train", str(best_yaml)]) == 0
    assert "epoch" not in capsys.readouterr().out.split("done:")[0]
    assert len(list(csv.DictReader((run_dir / "metrics.csv").open()))) == 2

    # another config (here: more epochs) into the same folder is refused, not mixed in
    assert main(["train", str(best_yaml), "--set", "epochs=3", "--out", str(run_dir)]) == 2
    assert "holds a run of another config (differs in epochs)" in capsys.readouterr().err


def test_train_rejects_a_bad_config(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "bad.yaml"
    path.write_text("task: ctc_digits\nconfig: {lr: fast}\n")
    assert main(["train", str(path)]) == 2
    assert "`config.lr` must be a number, got fast" in capsys.readouterr().err
    path.write_text("task: ctc_digits\nconfig: {lrate: 0.1}\n")
    assert main(["train", str(path)]) == 2
    assert "unknown key `config.lrate`" in capsys.readouterr().err
    assert not (workdir / "bad.run").exists()
