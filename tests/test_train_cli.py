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
    assert "`config.lr` must be a number > 0, got fast" in capsys.readouterr().err
    path.write_text("task: ctc_digits\nconfig: {lrate: 0.1}\n")
    assert main(["train", str(path)]) == 2
    assert "unknown key `config.lrate`" in capsys.readouterr().err
    assert not (workdir / "bad.run").exists()


def test_export_fills_the_command_template_and_writes_top_k(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    template = "python train.py --lr {lr} --clip {clip_norm} --bs {batch_size}"
    spec.write_text(spec.read_text() + f'export:\n  command: "{template}"\n')
    assert main(["run", "tiny", "--trials", "3", "--set", "epochs=1", "--no-progress"]) == 0
    assert main(["export", "tiny", "--top", "2"]) == 0
    folder = workdir / "results" / "tiny"
    best = yaml.safe_load((folder / "best.yaml").read_text())
    c = best["config"]
    expected = f"python train.py --lr {c['lr']} --clip {'null' if c['clip_norm'] is None else c['clip_norm']} --bs 32"
    assert best["command"] == expected
    assert (folder / "best.command").read_text() == expected + "\n"
    top = [yaml.safe_load((folder / "top" / f"{k}.yaml").read_text()) for k in (1, 2)]
    assert top[0]["config"] == best["config"]
    assert top[0]["provenance"]["value"] <= top[1]["provenance"]["value"]
    assert "best.command" in capsys.readouterr().out


def test_export_template_with_an_unknown_key_exits_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text() + 'export:\n  command: "python train.py --learning-rate {learning_rate}"\n')
    assert main(["export", "tiny"]) == 2
    assert "`export.command` uses {learning_rate}, which is not a key of the study" in capsys.readouterr().err
