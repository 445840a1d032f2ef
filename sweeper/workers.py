"""Several local worker processes on one study (processes, not threads: training holds the GIL).

Each worker is a spawned process that runs a ``WorkerJob`` (a sweep, or an ablation's runs)
against the shared storage. Not joblib's loky pool: a sweep needs what a pool hides, namely
one signal passed on to each worker (which fails its running trial and queues the retry),
each worker's own exit code (a worker killed by SIGKILL is named), and a
``CUDA_VISIBLE_DEVICES`` set per process before it starts. Loky reuses its processes and
stops them with a kill on Ctrl-C, which would leave every running trial for the heartbeat
to find. On a Dask cluster, ``sweeper.dask_workers`` places the same jobs through joblib.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SweepFailed, UserError

if TYPE_CHECKING:
    from .ablation import Cell
    from .sweep import Sweep

INTERRUPTED = 130
DASK_WORKER_ENV = "SWEEPER_DASK_WORKER"  # the Dask worker that started a worker process (`--dask`)


def threads_per_worker(workers: int) -> int:
    """Cores split between workers, so N workers do not oversubscribe the machine."""
    return max(1, (os.cpu_count() or 1) // workers)


def parse_gpus(text: str, visible: int) -> list[int]:
    """``--gpus``: ``auto`` (every visible GPU) or a comma-separated list of GPU indices."""
    if visible == 0:
        raise UserError(f"--gpus {text}: no CUDA GPU is visible to torch on this machine")
    if text.strip() == "auto":
        return list(range(visible))
    gpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise UserError(f"--gpus must be `auto` or GPU indices like 0,1, got {text!r}")
        if int(part) >= visible:
            raise UserError(f"--gpus {text}: GPU {part} does not exist; this machine has GPUs 0-{visible - 1}")
        if int(part) in gpus:
            raise UserError(f"--gpus {text}: GPU {part} is named twice")
        gpus.append(int(part))
    return gpus


def assign_gpus(workers: int, gpus: Sequence[int]) -> list[int]:
    """Worker i gets GPU ``gpus[i % len(gpus)]``: one each, or shared in turn when workers outnumber GPUs."""
    return [gpus[i % len(gpus)] for i in range(workers)]


@dataclass(frozen=True)
class SweepJob:
    """What every worker of ``sweeper run --workers N`` runs: the study's sweep (picklable, so
    it crosses to a spawned process or a Dask worker)."""

    spec_path: str
    overrides: Mapping[str, Any]
    storage: str
    study_name: str
    trials: int | None
    progress: bool | None = None

    def sweep(self, worker: int, progress: bool | None) -> Sweep:
        from .spec import load_spec
        from .sweep import Sweep

        return Sweep(load_spec(self.spec_path), overrides=self.overrides, storage=self.storage,
                     study_name=self.study_name, trials=self.trials, progress=progress, worker=worker)


@dataclass(frozen=True)
class AblationJob:
    """What every worker of ``sweeper ablate --workers N`` runs: the missing (cell, seed) runs."""

    spec_path: str
    cells: tuple[Cell, ...]
    seeds: int
    storage: str
    study_name: str
    results: str
    progress: bool | None = None

    def sweep(self, worker: int, progress: bool | None) -> Sweep:
        from .ablation import AblationSweep
        from .spec import load_spec

        return AblationSweep(load_spec(self.spec_path), self.cells, self.seeds, storage=self.storage,
                             study_name=self.study_name, results=Path(self.results), progress=progress,
                             worker=worker)


WorkerJob = SweepJob | AblationJob


def run_job(job: WorkerJob, index: int, workers: int, threads: int) -> int:
    """Run worker ``index`` of ``workers`` in this process (torch given ``threads`` threads);
    return its exit code: 0 done, 1 stopped, 2 bad input, 130 interrupted."""
    import torch

    torch.set_num_threads(threads)
    try:
        outcome = job.sweep(index, False if workers > 1 else job.progress).run()
    except (UserError, SweepFailed) as e:
        print(f"sweeper: worker {index}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # stopped before its sweep had started: nothing to record
        return INTERRUPTED
    return INTERRUPTED if outcome.interrupted else 1 if outcome.stopped else 0


def _worker_main(job: WorkerJob, index: int, workers: int) -> None:
    sys.exit(run_job(job, index, workers, threads_per_worker(workers)))


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables while a child process is spawned (it copies the environment)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_workers(workers: int, job: WorkerJob, gpus: Sequence[int] | None = None) -> list[int]:
    """Start ``workers`` processes running ``job`` and wait for them; return their exit codes
    (130 for a worker that was interrupted).

    Ctrl-C (SIGINT) or SIGTERM to this process, or to its whole process group, stops every
    worker: each fails its running trial and queues its retry, and this waits for them.
    """
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch or sqlite state
    devices = assign_gpus(workers, gpus) if gpus else [None] * workers
    procs = []
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for p in procs:  # passed on as SIGTERM: a worker stops on the first signal and ignores the rest
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    # workers start with SIGINT ignored until their sweep installs its handler, so a Ctrl-C
    # while they import is not a traceback; the SIGTERM passed on stops them there instead
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop)
    try:
        for i in range(workers):
            p = ctx.Process(target=_worker_main, args=(job, i, workers))
            env = {} if devices[i] is None else {"CUDA_VISIBLE_DEVICES": str(devices[i])}
            with _environ(**env):
                p.start()
            procs.append(p)
            if stopping:
                break
        signal.signal(signal.SIGINT, stop)
        for p in procs:
            p.join()
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    return [_exit_code(p.exitcode, stopping) for p in procs]


def _exit_code(code: int | None, stopping: bool) -> int:
    if code == -signal.SIGTERM and stopping:
        return INTERRUPTED  # stopped by the signal passed on before its sweep had begun
    return 1 if code is None else code
