"""Several local worker processes on one study (processes, not threads: training holds the GIL)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

INTERRUPTED = 130


def threads_per_worker(workers: int) -> int:
    """Cores split between workers, so N workers do not oversubscribe the machine."""
    return max(1, (os.cpu_count() or 1) // workers)


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
    sys.exit(INTERRUPTED if outcome.interrupted else 1 if outcome.stopped else 0)


def run_workers(workers: int, spec_path: Path, overrides: Mapping[str, Any], storage: str, study_name: str,
                trials: int | None, progress: bool | None) -> list[int]:
    """Start ``workers`` processes on the study and wait for them; return their exit codes.

    Ctrl-C reaches every process of the terminal's process group: each worker fails
    and requeues its running trial, and this process waits for them to finish doing so.
    """
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch or sqlite state
    procs = [ctx.Process(target=_worker_main, args=(i, workers, str(spec_path), dict(overrides), storage,
                                                     study_name, trials, False if workers > 1 else progress))
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for p in procs:
            p.join()
        signal.signal(signal.SIGINT, previous)
    return [p.exitcode if p.exitcode is not None else 1 for p in procs]
