"""Workers on a real Dask cluster (a ``LocalCluster`` of worker processes on loopback) against a
PostgreSQL study: the budget exact, a killed Dask worker's trial retried, Ctrl-C, ablations."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.trial import FrozenTrial, TrialState

from sweeper.ablation import CELL_ATTR, SEED_ATTR

from .conftest import REPO, run_cli, sweeper_cmd
from .test_workers import PG_URL, _check_exact, _postgres_answers

distributed = pytest.importorskip("distributed")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
needs_postgres = pytest.mark.skipif(not _postgres_answers(),
                                    reason="the study is shared through the PostgreSQL server at 127.0.0.1:5432, "
                                           "and none answers there")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two Dask worker processes with one thread each, under nannies, as `dask worker` starts them."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  host="127.0.0.1") as c, distributed.Client(c) as client:
        yield client


@pytest.fixture
def study_name() -> Iterator[str]:
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    yield name
    for n in (name, f"{name}-ablation"):
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=n, storage=PG_URL)


def _trials(name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=PG_URL).get_trials()


def _wait_for(predicate: Callable[[list[FrozenTrial]], bool], name: str, proc: subprocess.Popen[str],
              timeout: float = 180.0) -> list[FrozenTrial]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before the moment the test waits for"
        try:
            trials = _trials(name)
            if predicate(trials):
                return trials
        except KeyError:
            pass  # the study is not created yet
        time.sleep(0.1)
    raise AssertionError("the sweep never reached the moment the test waits for")


def _both_mid_trial(trials: list[FrozenTrial]) -> bool:
    running = [t for t in trials if t.state == TrialState.RUNNING and 0 < len(t.intermediate_values) < 10]
    return len({t.user_attrs.get("dask_worker") for t in running} - {None}) == 2


def _start_slow_sweep(workdir: Path, cluster: Any, name: str, trials: int) -> tuple[list[str], subprocess.Popen[str]]:
    """`sweeper run --dask` of 12-epoch trials in a process of its own, as a terminal's foreground job."""
    # every trial runs all its epochs, whatever it learns, so a kill or a signal lands mid-trial
    with (workdir / "studies" / "tiny.yaml").open("a") as f:
        f.write("health:\n  enabled: false\n")
    args = ["run", "tiny", "--dask", cluster.scheduler.address, "--workers", "2", "--trials", str(trials),
            "--set", "epochs=12", "--no-progress", "--storage", PG_URL, "--study-name", name]
    proc = subprocess.Popen(sweeper_cmd(*args), cwd=workdir, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return args, proc


@needs_postgres
@pytest.mark.postgres
def test_two_dask_workers_meet_the_budget_exactly(workdir: Path, cluster: Any, study_name: str) -> None:
    proc = run_cli("run", "tiny", "--dask", cluster.scheduler.address, "--workers", "2", "--trials", "8",
                   "--set", "epochs=1", "--no-progress", "--storage", PG_URL, "--study-name", study_name,
                   cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "8/8 finished" in proc.stdout and "2 workers on the Dask cluster" in proc.stdout
    assert proc.stdout.count(" COMPLETE ") + proc.stdout.count(" PRUNED ") == 8  # their lines came back here
    trials = _trials(study_name)
    _check_exact(optuna.load_study(study_name=study_name, storage=PG_URL), 8)
    # every trial ran in a process a Dask worker started, and both Dask workers ran some
    workers = set(cluster.scheduler_info()["workers"])
    placed = {t.user_attrs.get("dask_worker") for t in trials}
    assert placed == workers
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two worker processes (host:pid)
    assert (workdir / "results" / study_name / "trials.csv").exists()


@needs_postgres
@pytest.mark.postgres
@pytest.mark.slow  # `make test-all` and CI run it
def test_a_killed_dask_worker_its_trial_is_retried_and_the_budget_stays_exact(
        workdir: Path, cluster: Any, study_name: str) -> None:
    _, proc = _start_slow_sweep(workdir, cluster, study_name, 6)
    trials = _wait_for(_both_mid_trial, study_name, proc)
    victim = next(t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("dask_worker"))
    address = victim.user_attrs["dask_worker"]
    pid = cluster.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)  # the Dask worker process itself, as a lost machine or the OOM killer would
    out, err = proc.communicate(timeout=300)
    # the sweep went on: the dead worker's trial was failed by its heartbeat and retried
    assert proc.returncode == 0, err
    assert "6/6 finished" in out
    trials = _trials(study_name)
    assert [t.number for t in trials] == list(range(len(trials)))  # no duplicated or lost numbers
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state == TrialState.FAIL
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [victim.number]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state in FINISHED and retry.params == victim.params
    assert sum(t.state in FINISHED for t in trials) == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # the killed worker's process died with it: no process of the killed worker still heartbeats
    assert not [t for t in trials if t.user_attrs.get("worker") == victim.user_attrs["worker"]
                and t.number != victim.number and t.datetime_start > victim.datetime_start]


@needs_postgres
@pytest.mark.postgres
@pytest.mark.slow
def test_ctrl_c_stops_the_dask_workers_and_the_same_command_resumes(
        workdir: Path, cluster: Any, study_name: str) -> None:
    args, proc = _start_slow_sweep(workdir, cluster, study_name, 4)
    _wait_for(_both_mid_trial, study_name, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 20
    assert "resume with: sweeper run tiny --dask" in err and "Traceback" not in err
    trials = _trials(study_name)
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 2 and {t.user_attrs["error"] for t in interrupted} == {"interrupted"}
    assert [t.state for t in trials].count(TrialState.WAITING) == 2  # their retries, queued
    assert not [t for t in trials if t.state == TrialState.RUNNING]

    again = run_cli(*args, cwd=workdir)
    assert again.returncode == 0, again.stderr
    trials = _trials(study_name)
    assert sum(t.state in FINISHED for t in trials) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


ABLATION = "ablation:\n  seeds: 2\n  baseline: {lr: 0.001, dropout: 0.0}\n"


def _runs(name: str, storage: str) -> list[tuple[str, int]]:
    trials = optuna.load_study(study_name=f"{name}-ablation", storage=storage).get_trials()
    return [(t.user_attrs[CELL_ATTR], t.user_attrs[SEED_ATTR]) for t in trials if t.state in FINISHED]


@needs_postgres
@pytest.mark.postgres
def test_an_ablation_runs_its_cells_on_the_dask_cluster(workdir: Path, cluster: Any, study_name: str) -> None:
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text() + ABLATION)
    common = ["--storage", PG_URL, "--study-name", study_name]
    assert run_cli("run", "tiny", "--trials", "2", "--set", "epochs=1", "--no-progress", *common,
                   cwd=workdir).returncode == 0
    proc = run_cli("ablate", "tiny", "--dask", cluster.scheduler.address, "--no-progress", *common, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "2 workers on the Dask cluster" in proc.stdout  # one per thread slot of the cluster by default
    runs = _runs(study_name, PG_URL)
    table = pd.read_csv(workdir / "results" / study_name / "ablation.csv")
    distinct = int((~table["kind"].str.contains("runs of")).sum())
    assert len(runs) == len(set(runs)) == distinct * 2  # every (cell, seed) once
    assert (table["runs"] == 2).all()
    placed = {t.user_attrs.get("dask_worker")
              for t in optuna.load_study(study_name=f"{study_name}-ablation", storage=PG_URL).get_trials()}
    assert placed == set(cluster.scheduler_info()["workers"])


def test_dask_with_gpus_is_refused_with_one_line(workdir: Path) -> None:
    proc = run_cli("run", "tiny", "--dask", "tcp://127.0.0.1:1", "--gpus", "0", cwd=workdir)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--gpus names this machine's GPUs" in proc.stderr and "--resources GPU=1" in proc.stderr
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(("address", "message"), [
    ("nonsense", "--dask must be a Dask scheduler address like tcp://host:8786 (tcp:// or tls://, a host and a "
                 "port 1-65535), got 'nonsense'"),
    ("http://h:1", "--dask must be a Dask scheduler address"),
    ("", "--dask must be a Dask scheduler address"),
    ("FREE", ": no Dask scheduler answers there (ConnectionRefusedError"),
])
@pytest.mark.parametrize("command", ["run", "ablate"])
def test_a_bad_dask_address_is_one_line_and_nothing_written(workdir: Path, command: str, address: str,
                                                           message: str) -> None:
    if address == "FREE":
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text() + "ablation:\n  baseline: {lr: 0.001, dropout: 0.0}\n  target: {lr: 0.005}\n")
    proc = run_cli(command, "tiny", "--dask", address, "--workers", "2", cwd=workdir)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (workdir / "results").exists()


def test_a_sqlite_study_is_refused_for_dask_workers_on_other_machines(cluster: Any) -> None:
    from sweeper.dask_workers import Cluster
    from sweeper.errors import UserError

    c = Cluster(cluster.scheduler.address)
    try:
        c.check_storage("sqlite:///results/x/study.db")  # the LocalCluster's workers are on this machine
        c.workers = lambda: {"tcp://10.1.2.3:4": {"host": "10.1.2.3", "nthreads": 1}}  # type: ignore[method-assign]
        with pytest.raises(UserError, match=r"on 10\.1\.2\.3 cannot share the SQLite file"):
            c.check_storage("sqlite:///results/x/study.db")
        c.check_storage(PG_URL)  # a server: fine from anywhere
        assert c.slots() == 1
    finally:
        c.close()


@needs_postgres
@pytest.mark.postgres
def test_where_the_cluster_declares_gpus_each_worker_takes_one(workdir: Path, study_name: str) -> None:
    # two Dask workers of two thread slots each, one GPU each: without the GPU resource each
    # would run two sweeper workers at once; with it, one (no GPU is used: the resource places)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0",
                                  host="127.0.0.1", resources={"GPU": 1}) as c:
        from sweeper.dask_workers import Cluster

        cluster = Cluster(c.scheduler_address)
        try:
            assert cluster.has_gpus() and cluster.slots() == 2
        finally:
            cluster.close()
        proc = run_cli("run", "tiny", "--dask", c.scheduler_address, "--workers", "4", "--trials", "8",
                       "--set", "epochs=1", "--no-progress", "--storage", PG_URL, "--study-name", study_name,
                       cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    trials = _trials(study_name)
    _check_exact(optuna.load_study(study_name=study_name, storage=PG_URL), 8)
    by_worker: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["dask_worker"], []).append(t)
    assert len(by_worker) == 2
    for ts in by_worker.values():  # one at a time on each Dask worker: no two of its trials overlap
        ts.sort(key=lambda t: t.datetime_start)
        assert all(a.datetime_complete <= b.datetime_start for a, b in itertools.pairwise(ts))


@needs_postgres
@pytest.mark.postgres
@pytest.mark.slow
def test_the_workers_finish_the_budget_when_the_command_itself_is_killed(
        workdir: Path, cluster: Any, study_name: str) -> None:
    # Dask cannot stop a running task: killed with SIGKILL (no chance to pass a signal on), the
    # command leaves its workers to go on, and they stop at the budget, exactly
    _, proc = _start_slow_sweep(workdir, cluster, study_name, 5)
    _wait_for(_both_mid_trial, study_name, proc)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 180
    while sum(t.state in FINISHED for t in _trials(study_name)) < 5:
        assert time.monotonic() < deadline, "the workers did not finish the budget"
        time.sleep(0.2)
    while any(t.state == TrialState.RUNNING for t in _trials(study_name)):  # a sixth trial would be RUNNING
        assert time.monotonic() < deadline
        time.sleep(0.2)
    _check_exact(optuna.load_study(study_name=study_name, storage=PG_URL), 5)
