"""Workers placed on a Dask cluster (``--dask ADDRESS``), through joblib's Dask backend.

Each of the N workers is one Dask task that starts ``python -m sweeper.worker_process`` on
the Dask worker it lands on and waits for it. That process is a worker like a local one: it
joins the study in the shared storage, takes the budget lock, trains, heartbeats. What the
Dask task adds:

- placement: one thread slot of a Dask worker per sweeper worker, and where the cluster's
  workers declare a ``GPU`` resource (``dask worker --resources GPU=1``, dask-jobqueue's
  ``worker_extra_args``, dask-cuda), each sweeper worker takes one GPU;
- its output: the worker's lines come back to this terminal as Dask events;
- stopping: Ctrl-C here sets a Dask ``Event``; every task passes it on to its process as
  SIGTERM (the running trial is failed and its retry queued) and returns 130;
- a killed Dask worker: its process dies with it (``sweeper.worker_process``), the trial it
  ran is failed after the heartbeat grace and retried by any worker, and Dask runs the task
  again on a live worker (up to its ``allowed-failures``).

The study file and the current folder must be where every Dask worker reads them (a shared
file system, as clusters have), and the storage a server every machine reaches.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import SweepFailed, UserError, first_line
from .interrupts import is_main_thread
from .workers import DASK_WORKER_ENV, INTERRUPTED, WorkerJob

GPU = "GPU"  # the resource name dask-cuda, dask-jobqueue and `dask worker --resources` examples use
CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler (one starting up has this long)
STOP_POLL = 1.0  # seconds between a task's looks at the stop event
STDERR_KEPT = 20  # lines of a worker's stderr returned with its exit code


class Cluster:
    """A connection to a Dask scheduler, and what sweeper needs to know of its workers."""

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise UserError("--dask needs Dask: pip install 'sweeper[dask]'") from None
        host, port = _host_port(address)
        try:  # a plain connection first: a Client that cannot connect lingers and complains at exit
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        except OSError as e:
            raise UserError(f"--dask {address}: no Dask scheduler answers there ({type(e).__name__}: "
                            f"{first_line(e)})") from None
        self.address = address
        try:
            self.client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise UserError(f"--dask {address}: no Dask scheduler answers there ({type(e).__name__}: "
                            f"{first_line(e)})") from None

    def workers(self) -> dict[str, dict[str, Any]]:
        return dict(self.client.scheduler_info(n_workers=-1)["workers"])

    def has_gpus(self) -> bool:
        return any(w.get("resources", {}).get(GPU, 0) > 0 for w in self.workers().values())

    def slots_by_host(self) -> dict[str, int]:
        """Per machine, how many sweeper workers it runs at once: its Dask workers' GPUs where
        the cluster declares any, else their thread slots."""
        workers = self.workers().values()
        gpus = any(w.get("resources", {}).get(GPU, 0) > 0 for w in workers)
        hosts: dict[str, int] = collections.Counter()
        for w in workers:
            hosts[w["host"]] += _slots(w, gpus)
        return dict(hosts)

    def slots(self) -> int:
        """How many sweeper workers the cluster runs at once."""
        return sum(self.slots_by_host().values())

    def wait_for_a_worker(self, timeout: float) -> None:
        try:
            self.client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise UserError(f"--dask {self.address}: the cluster has no worker after {timeout:g}s; start some, "
                            "or give --workers N to wait for them") from None

    def check_storage(self, storage: str) -> None:
        """A file storage serves workers on this machine only: refuse it for remote Dask workers."""
        from .storage import journal_path, sqlite_path
        if sqlite_path(storage) is None and journal_path(storage) is None:
            return
        here = _local_addresses()
        remote = sorted({w["host"] for w in self.workers().values()} - here)
        if remote and sqlite_path(storage) is not None:
            raise UserError(f"--dask {self.address}: Dask workers on {', '.join(remote)} cannot share the SQLite "
                            f"file of {storage}; give --storage postgresql://... (a server every machine reaches)")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _slots(worker: Mapping[str, Any], gpus: bool) -> int:
    """The sweeper workers one Dask worker runs at once: one per thread slot, and one per GPU
    where the cluster declares GPUs."""
    if gpus:
        return int(min(worker["nthreads"], worker.get("resources", {}).get(GPU, 0)))
    return int(worker["nthreads"])


def _host_port(address: str) -> tuple[str, int]:
    """``tcp://host:port``, ``tls://host:port`` or ``host:port``, else one line (exit 2)."""
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")  # [::1]:8786
    if scheme not in ("", "tcp", "tls") or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--dask must be a Dask scheduler address like tcp://host:8786 (tcp:// or tls://, "
                        f"a host and a port 1-65535), got {address!r}")
    return host, int(port)


def _local_addresses() -> set[str]:
    names = {"127.0.0.1", "localhost", "::1", socket.gethostname()}
    with contextlib.suppress(OSError):
        names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    return names


def run_on_dask(cluster: Cluster, job: WorkerJob, workers: int, *, out: Any = None) -> list[tuple[int, str]]:
    """Run ``workers`` copies of ``job`` on the cluster and wait for them: per worker, its exit
    code and the end of its stderr. Ctrl-C or SIGTERM to this process stops every worker (each
    fails its running trial and queues the retry) and waits for them."""
    import joblib

    client = cluster.client
    token = f"sweeper-{uuid.uuid4().hex[:12]}"
    lines_to = out or sys.stdout

    def show(event: tuple[float, Mapping[str, str]]) -> None:
        msg = event[1]
        print(msg["line"], end="", file=sys.stderr if msg["stream"] == "err" else lines_to, flush=True)

    client.subscribe_topic(token, show)
    from distributed import Event

    stop = Event(f"{token}-stop", client=client)
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stopping.is_set():
            return  # the first signal is acted on; the rest wait for the clean-up it started
        stopping.set()
        threading.Thread(target=stop.set, daemon=True, name="dask-stop").start()  # no client call in a handler

    submit: dict[str, Any] = {"resources": {GPU: 1}} if cluster.has_gpus() else {}
    slots = cluster.slots_by_host()  # for each worker's share of its machine's cores
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    main = is_main_thread()  # handlers can only be set there; elsewhere the signals stay the caller's
    if main:
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    try:
        with joblib.parallel_config(backend="dask", client=client, **submit):
            results = joblib.Parallel(n_jobs=workers, batch_size=1, pre_dispatch="all")(
                joblib.delayed(remote_worker)(job, i, workers, token, slots, os.getcwd())
                for i in range(workers))
    except Exception as e:  # a task that failed for good (KilledWorker after Dask's retries, say)
        if type(e).__name__ == "KilledWorker":
            raise SweepFailed(f"Dask workers died running a sweeper worker more often than the cluster's "
                              f"allowed-failures: {first_line(e)}") from None
        raise SweepFailed(f"a sweeper worker on the Dask cluster failed: {type(e).__name__}: {first_line(e)}") from None
    finally:
        if main:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(token)
    return [(int(code), str(err)) for code, err in results]


def remote_worker(job: WorkerJob, index: int, workers: int, token: str, slots_by_host: Mapping[str, int],
                  cwd: str) -> tuple[int, str]:
    """The Dask task: run worker ``index`` as a process of this Dask worker's machine."""
    from distributed import Event, get_worker

    worker = get_worker()
    stop = Event(f"{token}-stop")
    if stop.is_set():  # the sweep was stopped before this task had a slot
        return INTERRUPTED, ""
    host = worker.address.split("://")[-1].rsplit(":", 1)[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # the cores of this machine, split between the sweeper workers it can run at once
    threads = max(1, cores // max(1, min(workers, slots_by_host.get(host, 1))))
    if not Path(job.spec_path).is_file():
        return 2, (f"sweeper: worker {index}: {job.spec_path} is not on Dask worker {worker.address}: the study "
                   "file must be on a file system every Dask worker reads\n")
    env = {**os.environ, DASK_WORKER_ENV: worker.address}
    proc = subprocess.Popen([sys.executable, "-m", "sweeper.worker_process"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd if Path(cwd).is_dir() else None,
                            env=env)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(pickle.dumps((job, index, workers, threads)))
    proc.stdin.close()
    kept: collections.deque[str] = collections.deque(maxlen=STDERR_KEPT)

    def forward(stream: Any, name: str) -> None:
        for raw in stream:
            line = raw.decode(errors="replace")
            if name == "err":
                kept.append(line)
            worker.log_event(token, {"stream": name, "line": line})

    readers = [threading.Thread(target=forward, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=forward, args=(proc.stderr, "err"), daemon=True)]
    for r in readers:
        r.start()
    stopped = False
    while proc.poll() is None:
        with contextlib.suppress(TimeoutError):
            if stop.wait(timeout=STOP_POLL):
                stopped = True
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)  # the worker fails its trial, queues the retry, exits
                proc.wait()
    for r in readers:
        r.join()
    if stopped and proc.returncode == -signal.SIGTERM:
        return INTERRUPTED, ""  # stopped while it started, before its sweep had begun
    return proc.returncode, "".join(kept)
