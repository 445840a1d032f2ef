"""A worker started by a Dask task: ``python -m sweeper.worker_process`` reads its job from stdin.

A process of its own, not the Dask worker's thread: signal handlers (Ctrl-C passed on as
SIGTERM fails the running trial and queues its retry), torch's thread count and a crash of
the training all belong to a process. It dies with the Dask worker that started it: when
its parent is gone (a killed Dask worker, a lost machine), it exits at once without a word
to the storage, and its trial is failed after the heartbeat grace and retried, as a killed
local worker's is.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time

PARENT_POLL = 0.5  # seconds between looks at whether the Dask worker that started this one is alive
ORPHANED = 137  # the exit code of a worker whose parent died (as if killed with it)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(ORPHANED)  # no clean-up: the Dask worker is gone, and so is this worker


def main() -> int:
    job, index, workers, threads = pickle.load(sys.stdin.buffer)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    from .interrupts import handling
    from .workers import run_job

    with handling(armed=True):  # a SIGTERM while torch imports stops the worker with nothing written
        try:
            return run_job(job, index, workers, threads)
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
