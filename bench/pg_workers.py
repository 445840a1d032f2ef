"""8 worker processes on one PostgreSQL study, 200 short trials: what arrives, what it costs.

Each worker is what `sweeper worker STUDY --storage postgresql://...` runs on a machine of
its own (a `Sweep` in a process of its own, one torch thread); here all of them share this
machine and one PostgreSQL server. Trials are short on purpose (a tiny ctc_digits model,
32 strips, 1 epoch: a fraction of a second) so the storage, not training, is under load.

Printed per run and as medians over --repeats runs:
- finished: COMPLETE + PRUNED trials (the budget asks for exactly --trials);
- lost: budget minus finished, plus trials left RUNNING or WAITING;
- duplicated: trial numbers held by more than one trial;
- storage ms/trial: time inside Optuna's RDBStorage calls (heartbeats included), summed over
  workers, per finished trial; lock ms/trial: time waiting for the budget lock.

    python bench/pg_workers.py [--workers 8] [--trials 200] [--repeats 3] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

STUDY = """\
name: pgbench
task: ctc_digits
budget: {trials: 1, epochs: 1, retries: 2}
heartbeat: {interval: 5, grace: 20}
sampler: {type: tpe, seed: 0}
pruner: {type: median, n_startup_trials: 5}
fixed: {model_size: tiny, train_strips: 32, val_strips: 16, batch_size: 16}
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  dropout: {type: float, low: 0.0, high: 0.5}
  clip_norm: {type: categorical, choices: [null, 0.5, 1.0, 5.0]}
"""


def _time_calls(cls: type, totals: dict[str, float], key: str) -> None:
    """Add the wall time of every public method of ``cls`` to ``totals[key]`` (outermost calls only)."""
    local = threading.local()  # the heartbeat thread calls the storage too

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(local, "depth", 0):
                return fn(*args, **kwargs)
            local.depth = 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[key] += time.perf_counter() - t0
                local.depth = 0

        return timed

    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if not name.startswith("_"):
            setattr(cls, name, wrap(fn))


def _worker(index: int, spec_path: str, url: str, name: str, trials: int, queue: Any) -> None:
    import torch

    torch.set_num_threads(1)
    from optuna.storages import RDBStorage

    from sweeper.budget_lock import BudgetLock
    from sweeper.spec import load_spec
    from sweeper.sweep import Sweep

    totals = {"storage": 0.0, "lock": 0.0}
    _time_calls(RDBStorage, totals, "storage")
    real_acquire = BudgetLock.acquire

    def acquire(self: BudgetLock) -> None:
        t0 = time.perf_counter()
        real_acquire(self)
        totals["lock"] += time.perf_counter() - t0

    BudgetLock.acquire = acquire  # type: ignore[method-assign]
    with open(os.devnull, "w") as devnull:
        Sweep(load_spec(spec_path), storage=url, study_name=name, trials=trials, out=devnull, progress=False,
              worker=index).run()
    queue.put(totals)


def run(args: argparse.Namespace, spec_path: Path) -> dict[str, float]:
    import optuna

    from sweeper.spec import load_spec
    from sweeper.storage import open_storage

    name = f"pgbench-{uuid.uuid4().hex[:8]}"
    open_storage(args.url, load_spec(spec_path).heartbeat)  # the schema, once, as `sweeper run` does
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, str(spec_path), args.url, name, args.trials, queue))
             for i in range(args.workers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    totals = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    try:
        trials = optuna.load_study(study_name=name, storage=args.url).get_trials(deepcopy=False)
    finally:
        optuna.delete_study(study_name=name, storage=args.url)
    states = Counter(t.state.name for t in trials)
    finished = states["COMPLETE"] + states["PRUNED"]
    numbers = Counter(t.number for t in trials)
    return {
        "finished": finished,
        "lost": max(0, args.trials - finished) + states["RUNNING"] + states["WAITING"],
        "duplicated": sum(n - 1 for n in numbers.values() if n > 1),
        "failed": states["FAIL"],
        "pruned": states["PRUNED"],
        "exit_codes_nonzero": sum(1 for p in procs if p.exitcode),
        "wall_s": wall,
        "storage_ms": 1000 * sum(t["storage"] for t in totals) / max(finished, 1),
        "lock_ms": 1000 * sum(t["lock"] for t in totals) / max(finished, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    try:
        import sqlalchemy

        sqlalchemy.create_engine(args.url).connect().close()
    except Exception as e:  # any failure to connect means: nothing to measure here
        print(f"skipped: no PostgreSQL answers at {args.url} ({type(e).__name__})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "pgbench.yaml"
        spec_path.write_text(STUDY)
        os.chdir(tmp)  # results/ of the workers go to the temporary folder
        runs = []
        for i in range(args.repeats):
            r = run(args, spec_path)
            runs.append(r)
            print(f"run {i + 1}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in r.items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"\n{args.workers} workers, PostgreSQL, budget {args.trials} short trials, {os.cpu_count()} cores, "
          f"median of {args.repeats}:")
    print(f"finished {med['finished']:.0f}/{args.trials}, lost {med['lost']:.0f}, duplicated {med['duplicated']:.0f}, "
          f"failed {med['failed']:.0f}, workers with a non-zero exit {med['exit_codes_nonzero']:.0f}")
    print(f"wall {med['wall_s']:.1f}s ({med['finished'] / med['wall_s']:.2f} trials/s); "
          f"storage {med['storage_ms']:.1f} ms/trial; budget lock wait {med['lock_ms']:.1f} ms/trial")


if __name__ == "__main__":
    main()
