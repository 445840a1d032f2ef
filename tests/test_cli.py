"""Bad input: one clear line on stderr, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.cli import main

from .conftest import TINY_STUDY, run_cli, tree


def _bad_run(workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> None:
    before = tree(workdir)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
    assert tree(workdir) == before  # no database, no results folder


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("name: x\nbudget: [1, 2\n", "studies/x.yaml: YAML syntax error at line 3"),
        (TINY_STUDY.replace("name: tiny", "name: x") + "colour: red\n", "unknown key `colour`"),
        (TINY_STUDY.replace("name: tiny", "name: x").replace("high: 1.0e-2", "high: 1.0e-4"),
         "`params.lr.low` must be <= `params.lr.high`, got low=0.001, high=0.0001"),
        (TINY_STUDY.replace("name: tiny", "name: x").replace("low: 1.0e-3", "low: 0.0"),
         "`params.lr.low` must be within what lr accepts: a number > 0, got 0.0"),
        (TINY_STUDY.replace("name: tiny", "name: x").replace("task: ctc_digits", "task: mnist"),
         "`task` must be one of binary_imbalanced, classify_many, ctc_digits or module:function, got 'mnist'"),
        (TINY_STUDY.replace("name: tiny", "name: x").replace("type: tpe", "type: bayes"),
         "`sampler.type` must be tpe, random, cmaes, qmc, gp, grid, got 'bayes'"),
        (TINY_STUDY.replace("name: tiny", "name: x").replace("type: none", "type: asha"),
         "`pruner.type` must be median, percentile, hyperband, successive_halving, threshold, none, got 'asha'"),
    ],
)
def test_bad_study_files(workdir: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, match: str) -> None:
    (workdir / "studies" / "x.yaml").write_text(yaml_text)
    _bad_run(workdir, capsys, ["run", "x"], match)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "nope"], "unknown study 'nope': no studies/nope.yaml; available: tiny"),
        (["run", "tiny", "--set", "lrr=0.1"], "--set lrr: unknown key for task ctc_digits (did you mean 'lr'?)"),
        (["run", "tiny", "--set", "epochs=two"], "--set epochs=two: epochs must be an integer"),
        (["run", "tiny", "--set", "clip_norm=2.0"], "clip_norm is searched over [null, 1.0]"),
        (["run", "tiny", "--trials", "0"], "--trials must be an integer >= 1, got 0"),
        (["run", "tiny", "--trials", "many"], "argument --trials: invalid int value: 'many'"),
        (["run", "tiny", "--storage", "redis://localhost"], "unknown storage scheme 'redis'"),
        (["run", "tiny", "--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open storage postgresql://"),
        (["status", "tiny"], "storage sqlite:///results/tiny/study.db does not exist"),
        (["export", "tiny"], "storage sqlite:///results/tiny/study.db does not exist"),
        (["train", "results/tiny/best.yaml"], "config file results/tiny/best.yaml does not exist"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments(workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> None:
    _bad_run(workdir, capsys, argv, match)


def test_results_folder_that_cannot_be_written(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "results").write_text("a file where the results folder should be")
    _bad_run(workdir, capsys, ["run", "tiny"],
             "cannot write storage file results/tiny/study.db: results is not a folder")
    (workdir / "db").mkdir()
    _bad_run(workdir, capsys, ["run", "tiny", "--storage", "sqlite:///db/study.db"],
             "cannot write results folder results/tiny: results is not a folder")


def test_export_without_a_completed_trial(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tiny", "--trials", "1", "--set", "epochs=1", "--study-name", "other", "--no-progress"]) == 0
    capsys.readouterr()
    before = tree(workdir)
    assert main(["export", "tiny"]) == 2  # study `tiny` does not exist in the storage
    assert "no study named 'tiny'" in capsys.readouterr().err
    assert tree(workdir) == before


def test_real_command_line_bad_input(workdir: Path) -> None:
    """The installed entry point, in a real process: no traceback, exit 2, one line."""
    proc = run_cli("run", "tiny", "--set", "dropout=lots", cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sweeper: error: --set dropout=lots: dropout must be a number >= 0 and < 1"]
    assert not (workdir / "results").exists()


def test_export_of_a_study_with_no_completed_trial_exits_2(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import sweeper.sweep as sweep_module

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("broken trainer")

    monkeypatch.setattr(sweep_module, "fit", broken)
    assert main(["run", "tiny", "--trials", "5", "--no-progress"]) == 1  # the failure-rate stop
    capsys.readouterr()
    before = tree(workdir)
    assert main(["export", "tiny"]) == 2
    assert capsys.readouterr().err.strip() == "sweeper: error: study 'tiny' has no completed trial to export yet"
    assert tree(workdir) == before
    assert main(["report", "tiny"]) == 0  # a report still works, and says so plainly
    assert "no completed trial yet" in capsys.readouterr().err
    assert "No trial has completed yet" in (workdir / "results" / "tiny" / "summary.md").read_text()
