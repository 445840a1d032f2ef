"""Several worker processes on one study: the budget is exact, on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sweeper.errors import UserError
from sweeper.spec import load_spec
from sweeper.sweep import make_sampler
from sweeper.workers import assign_gpus, parse_gpus

from .conftest import run_cli

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


def _check_exact(study: optuna.Study, budget: int) -> None:
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))  # no duplicated or missing numbers
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == budget
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not [t for t in trials if t.state == TrialState.FAIL]


def test_four_workers_on_sqlite_finish_the_budget_exactly(workdir: Path) -> None:
    proc = run_cli("run", "tiny", "--trials", "10", "--workers", "4", "--set", "epochs=1", "--no-progress",
                   cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "locked" not in proc.stderr + proc.stdout  # no "database is locked"
    assert "10/10 finished" in proc.stdout and "4 workers" in proc.stdout
    study = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db")
    _check_exact(study, 10)
    # trials ran in worker processes of this machine (host:pid), more than one of them
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) >= 2 and all(w.startswith(socket.gethostname() + ":") for w in workers)
    assert (workdir / "results" / "tiny" / "trials.csv").exists()


@pytest.mark.postgres
@pytest.mark.slow  # `make test-all` and CI run it
@pytest.mark.skipif(not _postgres_answers(), reason="no PostgreSQL server answers at 127.0.0.1:5432")
def test_four_workers_on_postgresql_finish_the_budget_exactly(workdir: Path) -> None:
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    try:
        proc = run_cli("run", "tiny", "--trials", "10", "--workers", "4", "--set", "epochs=1", "--no-progress",
                       "--storage", PG_URL, "--study-name", name, cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        _check_exact(optuna.load_study(study_name=name, storage=PG_URL), 10)
        # the same command again finds the budget met and runs nothing
        again = run_cli("worker", "tiny", "--trials", "10", "--storage", PG_URL, "--study-name", name,
                        "--set", "epochs=1", "--no-progress", cwd=workdir)
        assert again.returncode == 0, again.stderr
        assert len(optuna.load_study(study_name=name, storage=PG_URL).trials) == 10
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)


def test_workers_must_be_positive(workdir: Path) -> None:
    proc = run_cli("run", "tiny", "--workers", "0", cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "sweeper: error: --workers must be an integer >= 1, got 0"
    assert not (workdir / "results").exists()


def test_worker_requires_a_storage(workdir: Path) -> None:
    proc = run_cli("worker", "tiny", cwd=workdir)
    assert proc.returncode == 2 and "--storage" in proc.stderr


def test_tpe_uses_the_constant_liar_unless_the_study_says_otherwise(workdir: Path) -> None:
    spec = load_spec("tiny")
    assert make_sampler(spec)._constant_liar is True  # concurrent workers do not propose the same point
    text = (workdir / "studies" / "tiny.yaml").read_text().replace("  seed: 0\n", "  seed: 0\n  constant_liar: false\n")
    (workdir / "studies" / "tiny.yaml").write_text(text)
    assert make_sampler(load_spec("tiny"))._constant_liar is False


@pytest.mark.parametrize(("text", "expected"), [("auto", [0, 1]), ("0,1", [0, 1]), ("1", [1]), (" 1, 0 ", [1, 0])])
def test_gpus_are_parsed(text: str, expected: list[int]) -> None:
    assert parse_gpus(text, visible=2) == expected


@pytest.mark.parametrize(("text", "visible", "match"), [
    ("2", 2, "GPU 2 does not exist; this machine has GPUs 0-1"),
    ("0,0", 2, "GPU 0 is named twice"),
    ("cuda:0", 2, "--gpus must be `auto` or GPU indices like 0,1, got 'cuda:0'"),
    ("auto", 0, "no CUDA GPU is visible"),
])
def test_bad_gpus_are_refused(text: str, visible: int, match: str) -> None:
    with pytest.raises(UserError, match=re.escape(match)):
        parse_gpus(text, visible=visible)


def test_each_worker_gets_a_gpu_in_turn() -> None:
    assert assign_gpus(2, [0, 1]) == [0, 1]
    assert assign_gpus(4, [2, 3]) == [2, 3, 2, 3]  # more workers than GPUs: they share, in turn


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpus_on_a_machine_without_one_is_one_line_and_exit_2(workdir: Path) -> None:
    proc = run_cli("run", "tiny", "--gpus", "0", cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "sweeper: error: --gpus 0: no CUDA GPU is visible to torch on this machine"
    assert not (workdir / "results").exists()
