"""Several local worker processes on one study (processes, not threads: training holds the GIL)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

INTERRUPTED = 130


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


def _worker_main(index: int, workers: int, spec_path: str, overrides: Mapping[str, Any], storage: str,
                 study_name: str, trials: int | None, progress: bool | None) -> None:
    import torch

    torch.set_num_threads(threads_per_worker(workers))
    from .errors import SweepFailed, UserError
    from .spec import load_spec
    from .sweep import Sweep

    try:
        outcome = Sweep(load_spec(spec_path), overrides=overrides, storage=storage, study_name=study_name,
                        trials=trials, progress=progress, worker=index).run()
    except (UserError, SweepFailed) as e:
        print(f"sweeper: worker {index}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # stopped before its sweep had started: nothing to record
        sys.exit(INTERRUPTED)
    sys.exit(INTERRUPTED if outcome.interrupted else 1 if outcome.stopped else 0)


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


def run_workers(workers: int, spec_path: Path, overrides: Mapping[str, Any], storage: str, study_name: str,
                trials: int | None, progress: bool | None, gpus: Sequence[int] | None = None) -> list[int]:
    """Start ``workers`` processes on the study and wait for them; return their exit codes
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
            p = ctx.Process(target=_worker_main, args=(i, workers, str(spec_path), dict(overrides), storage,
                                                       study_name, trials, False if workers > 1 else progress))
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
