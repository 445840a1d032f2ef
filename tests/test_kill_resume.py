"""A worker killed with SIGKILL mid-trial, then the same command again (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from .conftest import REPO, sweeper_cmd

STORAGE = "sqlite:///results/tiny/study.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:  # type: ignore[type-arg]
    """Poll the study until ``predicate`` holds (the worker's progress is only visible there)."""
    deadline = time.monotonic() + timeout
    storage = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the worker ended before it could be killed"
        if not Path("results/tiny/study.db").exists():
            time.sleep(0.05)
            continue
        try:
            # read-only: never create tables the worker may be creating right now; one engine
            # for all polls, so a poll stays short on a loaded machine
            storage = storage or optuna.storages.RDBStorage(STORAGE, skip_table_creation=True)
            if predicate(optuna.load_study(study_name="tiny", storage=storage).get_trials()):
                return
        except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            pass  # the worker is still creating the tables or the study
        time.sleep(0.05)
    raise AssertionError("the worker never reached the state to kill it in")


ARGS = ["run", "tiny", "--trials", "4", "--set", "epochs=12", "--no-progress"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _foreground_signals() -> None:
    # as in a terminal's foreground job: a test runner started in the background (as CI
    # may be) passes SIGINT on as ignored, and Python then never raises KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _no_health_pruning(workdir: Path) -> None:
    # these trials must run all their epochs, whatever they learn, for a signal to land mid-way
    with (workdir / "studies" / "tiny.yaml").open("a") as f:
        f.write("health:\n  enabled: false\n")


def _start(workdir: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    """The worker, as a user starts it, in its own process."""
    _no_health_pruning(workdir)
    return subprocess.Popen(sweeper_cmd(*ARGS), cwd=workdir, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_foreground_signals)


def _again(workdir: Path) -> subprocess.CompletedProcess[str]:
    """The same command again, to completion."""
    done = subprocess.run(sweeper_cmd(*ARGS), cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_sigkill_mid_trial_then_resume(workdir: Path) -> None:
    proc = _start(workdir)

    def mid_trial(trials: list[optuna.trial.FrozenTrial]) -> bool:
        done = [t for t in trials if t.state in FINISHED]
        running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
        return len(done) >= 1 and len(running) == 1

    _wait_for(mid_trial, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = optuna.load_study(study_name="tiny", storage=STORAGE).get_trials()
    killed = next(t for t in before if t.state == TrialState.RUNNING)
    finished_before = {t.number: (t.value, t.datetime_complete) for t in before if t.state in FINISHED}

    _again(workdir)
    trials = optuna.load_study(study_name="tiny", storage=STORAGE).get_trials()
    by_number = {t.number: t for t in trials}
    assert [t.number for t in trials] == list(range(len(trials)))  # no gaps, no duplicates
    assert by_number[killed.number].state == TrialState.FAIL  # the stale trial, failed by heartbeat
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == killed.params
    for number, (value, completed) in finished_before.items():  # finished trials untouched
        assert (by_number[number].value, by_number[number].datetime_complete) == (value, completed)
    assert sum(t.state in FINISHED for t in trials) == 4  # the budget counts complete + pruned
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, id="ctrl-c"),
                                 pytest.param(signal.SIGTERM, id="sigterm", marks=pytest.mark.slow)])
def test_interrupt_mid_trial_stops_cleanly_and_the_same_command_resumes(workdir: Path, sig: int) -> None:
    proc = _start(workdir)

    def mid_trial(trials: list[optuna.trial.FrozenTrial]) -> bool:  # with half its epochs or more to go
        return any(t.state == TrialState.RUNNING and 0 < len(t.intermediate_values) <= 6 for t in trials)

    _wait_for(mid_trial, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with: sweeper run tiny --trials 4 --set epochs=12 --no-progress" in err
    assert "Traceback" not in err
    trials = optuna.load_study(study_name="tiny", storage=STORAGE).get_trials()
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["error"] == "interrupted"
    assert [t.state for t in trials].count(TrialState.WAITING) == 1  # its retry, queued
    assert not [t for t in trials if t.state == TrialState.RUNNING]

    _again(workdir)
    trials = optuna.load_study(study_name="tiny", storage=STORAGE).get_trials()
    assert sum(t.state in FINISHED for t in trials) == 4
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == interrupted[0].number)
    assert retry.state in FINISHED and retry.params == interrupted[0].params


# -- several workers: `sweeper run --workers 2`, as a user starts it

# two trials a worker (~3 s each): however late one worker starts on a loaded machine, short of
# the other finishing all four trials alone, the two overlap mid-trial for some epochs, since a
# late start only shifts where each new trial begins against the other's
WORKERS_ARGS = ["run", "tiny", "--trials", "4", "--workers", "2", "--set", "epochs=20", "--no-progress"]


def _start_workers(workdir: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    _no_health_pruning(workdir)
    # a process group of its own, like a terminal's foreground job, so Ctrl-C can reach all of it
    return subprocess.Popen(sweeper_cmd(*WORKERS_ARGS), cwd=workdir, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_foreground_signals, process_group=0)


def _both_mid_trial(trials: list[optuna.trial.FrozenTrial]) -> bool:
    running = [t for t in trials if t.state == TrialState.RUNNING and 0 < len(t.intermediate_values) < 17]
    return len({t.user_attrs.get("worker") for t in running}) == 2


@pytest.mark.slow
def test_sigkill_of_one_worker_its_trial_is_retried_and_the_budget_stays_exact(workdir: Path) -> None:
    proc = _start_workers(workdir)
    _wait_for(_both_mid_trial, proc)
    trials = optuna.load_study(study_name="tiny", storage=STORAGE).get_trials()
    victim = next(t for t in trials if t.state == TrialState.RUNNING)
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    # the other worker failed the dead one's trial by its heartbeat, retried it and met the budget
    assert proc.returncode == 1 and "worker " in err and "was killed by SIGKILL" in err, err
    trials = optuna.load_study(study_name="tiny", storage=STORAGE).get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))  # no duplicated numbers
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state in FINISHED and retry.params == victim.params
    assert sum(t.state in FINISHED for t in trials) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # the same command again finds the budget met
    again = subprocess.run(sweeper_cmd(*WORKERS_ARGS), cwd=workdir, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="tiny", storage=STORAGE).get_trials()) == len(trials)


@pytest.mark.parametrize("how", ["ctrl-c to the process group",
                                 pytest.param("sigterm to the parent alone", marks=pytest.mark.slow)])
def test_interrupt_stops_every_worker_within_seconds_and_the_same_command_resumes(workdir: Path, how: str) -> None:
    proc = _start_workers(workdir)
    _wait_for(_both_mid_trial, proc)
    t0 = time.monotonic()
    if how.startswith("ctrl-c"):
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    else:
        proc.send_signal(signal.SIGTERM)  # what a job scheduler does
    _, err = proc.communicate(timeout=60)
    stopped_in = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert stopped_in < 15, f"took {stopped_in:.1f}s to stop"
    assert "resume with: sweeper run tiny --trials 4 --workers 2" in err
    assert "Traceback" not in err
    trials = optuna.load_study(study_name="tiny", storage=STORAGE).get_trials()
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 2 and {t.user_attrs["error"] for t in interrupted} == {"interrupted"}
    assert [t.state for t in trials].count(TrialState.WAITING) == 2  # their retries, queued
    assert not [t for t in trials if t.state == TrialState.RUNNING]

    again = subprocess.run(sweeper_cmd(*WORKERS_ARGS), cwd=workdir, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    trials = optuna.load_study(study_name="tiny", storage=STORAGE).get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert sum(t.state in FINISHED for t in trials) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in interrupted:
        retry = next(r for r in trials if r.system_attrs.get("failed_trial") == t.number)
        assert retry.state in FINISHED and retry.params == t.params
