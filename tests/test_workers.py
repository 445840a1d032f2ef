"""Several worker processes on one study: the budget is exact, on SQLite and on PostgreSQL."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

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
    _check_exact(optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db"), 10)
    assert (workdir / "results" / "tiny" / "trials.csv").exists()


@pytest.mark.postgres
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
