"""One function per subcommand: load and validate input, call the library, print."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

import optuna

from .errors import SweepFailed, UserError, first_line, save_traceback
from .export import best_trials, export_best
from .interrupts import INTERRUPT
from .report import write_results
from .run_config import load_training_config, start_weights, train_config
from .spec import StudySpec, load_spec, name_error, one_line, parse_overrides
from .storage import check_storage, check_writable, open_storage
from .sweep import Sweep, SweepOutcome, results_dir, state_counts


def _load(args: argparse.Namespace) -> tuple[StudySpec, str, str]:
    spec = load_spec(args.study)
    storage = spec.default_storage() if args.storage is None else args.storage
    check_storage(storage)
    name = spec.name if args.study_name is None else args.study_name
    if args.study_name is not None and (error := name_error(args.study_name)):
        raise UserError(f"--study-name must be {error}, got {one_line(repr(args.study_name), 200)}")
    return spec, storage, name


def _existing(spec: StudySpec, storage: str, name: str) -> optuna.Study:
    store = open_storage(storage, spec.heartbeat, create=False)
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        raise UserError(f"no study named {name!r} in {storage}; run `sweeper run {spec.path}` first") from None


def cmd_run(args: argparse.Namespace, *, resume_argv: str) -> int:
    spec, storage, name = _load(args)
    overrides = parse_overrides(spec, args.overrides)
    _check_workers(args)
    gpus = None
    if args.gpus is not None:
        import torch

        from .workers import parse_gpus

        gpus = parse_gpus(args.gpus, torch.cuda.device_count())
    progress = False if args.no_progress else None
    sweep = Sweep(spec, overrides=overrides, storage=storage, study_name=name, trials=args.trials, progress=progress)
    with _cluster(args, storage) as cluster:  # last: every other input is checked before the network
        workers = args.workers or (len(gpus) if gpus else cluster.slots() if cluster else 1)
        if cluster is not None or workers > 1 or gpus:  # a GPU goes to a worker process as CUDA_VISIBLE_DEVICES
            from .workers import SweepJob

            job = SweepJob(str(spec.path.resolve()), overrides, storage, name, sweep.budget, sweep.progress)
            with INTERRUPT.shielded():
                # the storage and the study are created once, before the workers race to; a Ctrl-C
                # from here on finds a study to write results for and to resume
                sweep.open()
            try:
                ends = _place(job, workers, gpus, cluster)
            finally:  # whatever became of the workers, the results hold what finished
                _finish(_existing(spec, storage, name), spec, storage, name, sweep.budget,
                        _placed(workers, gpus, cluster))
            return _workers_exit(ends, resume_argv)
    outcome = sweep.run()
    folder = _finish(outcome.study, spec, storage, name, sweep.budget)
    return _exit_code(outcome, resume_argv, what="sweep", see=f"{folder}/trials.csv")


def _check_workers(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be an integer >= 1, got {args.workers}")
    if getattr(args, "gpus", None) is not None and args.dask is not None:
        raise UserError("--gpus names this machine's GPUs; on a Dask cluster, declare them as worker resources "
                        "(dask worker --resources GPU=1) and each sweeper worker takes one")


@contextlib.contextmanager
def _cluster(args: argparse.Namespace, storage: str) -> Iterator[Any]:
    """The Dask cluster of ``--dask``, connected and checked, closed after (None without it)."""
    if args.dask is None:
        yield None
        return
    from .dask_workers import CONNECT_TIMEOUT, Cluster

    cluster = Cluster(args.dask)
    try:
        if args.workers is None:  # as many workers as the cluster runs at once
            cluster.wait_for_a_worker(CONNECT_TIMEOUT)
        cluster.check_storage(storage)
        yield cluster
    finally:
        cluster.close()


def _place(job: Any, workers: int, gpus: list[int] | None, cluster: Any) -> list[tuple[int, str]]:
    """Run ``workers`` copies of ``job`` here or on the Dask cluster; per worker its exit code
    and the end of its stderr."""
    if cluster is not None:
        from .dask_workers import run_on_dask

        return run_on_dask(cluster, job, workers)
    from .workers import run_workers

    return [(code, "") for code in run_workers(workers, job, gpus)]


def _placed(workers: int, gpus: list[int] | None, cluster: Any) -> str:
    """Where the workers ran, for the status line."""
    if cluster is not None:
        return f"; {workers} workers on the Dask cluster at {cluster.address}"
    from .workers import assign_gpus

    return f"; {workers} workers" + (" on GPUs " + ",".join(map(str, assign_gpus(workers, gpus))) if gpus else "")


def _workers_exit(ends: list[tuple[int, str]], resume_argv: str) -> int:
    from .workers import INTERRUPTED

    if any(code == INTERRUPTED for code, _ in ends):
        return _interrupted(resume_argv)
    failed = [_worker_end(i, code, err) for i, (code, err) in enumerate(ends) if code]
    if failed:
        raise SweepFailed("; ".join(failed) + f"; the same command resumes: {resume_argv}")
    return 0


def _finish(study: optuna.Study, spec: StudySpec, storage: str, name: str, budget: int, note: str = "") -> str:
    """Write the results and best.yaml, print the status line; return the results folder."""
    folder = results_dir(spec, name)
    with INTERRUPT.shielded():  # a Ctrl-C now (a second one, say) waits: the results are written whole
        write_results(study, spec, folder)
        if best_trials(study, spec.direction):
            export_best(spec, study, folder, storage)
        print(_status_line(study, spec, budget) + f"{note}; results in {folder}/")
    return str(folder)


def _interrupted(resume_argv: str) -> int:
    print(f"interrupted: finished runs are kept; resume with: {resume_argv}", file=sys.stderr)
    return 130


def _worker_end(index: int, code: int, err: str = "") -> str:
    if code < 0:
        return f"worker {index} was killed by {signal.Signals(-code).name}"
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return f"worker {index} ended with exit code {code}" + (f": {last}" if last else " (see its lines above)")


def _exit_code(outcome: SweepOutcome, resume_argv: str, *, what: str, see: str) -> int:
    """130 after an interrupt (with the command that resumes), 1 if the run was stopped, else 0."""
    if outcome.interrupted:
        return _interrupted(resume_argv)
    if outcome.stopped:
        raise SweepFailed(f"{what} stopped: {outcome.stopped}; see the trial lines above and {see}")
    if outcome.ended_by:
        print(f"{what} ended before its budget: {outcome.ended_by}")
    return 0


def _status_line(study: optuna.Study, spec: StudySpec, budget: int) -> str:
    counts = state_counts(study)
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    by_state = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    line = f"study {study.study_name}: {finished}/{budget} finished ({by_state or 'no trials'})"
    best = best_trials(study, spec.direction)
    if best:
        line += f"; best {spec.metric}={best[0].value:.4f} (trial {best[0].number})"
    return line


def cmd_status(args: argparse.Namespace, *, resume_argv: str) -> int:
    spec, storage, name = _load(args)
    print(_status_line(_existing(spec, storage, name), spec, spec.budget.trials))
    return 0


def cmd_report(args: argparse.Namespace, *, resume_argv: str) -> int:
    spec, storage, name = _load(args)
    study = _existing(spec, storage, name)
    with INTERRUPT.shielded():
        paths = write_results(study, spec, results_dir(spec, name))
    if not best_trials(study, spec.direction):
        print(f"study {name} has no completed trial yet: the tables are empty", file=sys.stderr)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_export(args: argparse.Namespace, *, resume_argv: str) -> int:
    spec, storage, name = _load(args)
    if args.top < 1:
        raise UserError(f"--top must be an integer >= 1, got {args.top}")
    study = _existing(spec, storage, name)
    with INTERRUPT.shielded():
        paths = export_best(spec, study, results_dir(spec, name), storage, top=args.top)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_ablate(args: argparse.Namespace, *, resume_argv: str) -> int:
    from .ablation import (
        AblationSweep,
        ablation_markdown,
        ablation_table,
        baseline_config,
        design,
        require_best,
        target_config,
        write_ablation,
    )
    from .space import base_config

    spec, storage, name = _load(args)
    seeds = spec.ablation.seeds if args.seeds is None else args.seeds
    if seeds < 1:
        raise UserError(f"--seeds must be an integer >= 1, got {seeds}")
    baseline, source = baseline_config(spec, base_config(spec))
    if spec.ablation.target:  # a fix list: baseline against target, no search needed
        end = "target"
        far, far_source = target_config(spec, baseline)
    else:
        end = "best"
        best = require_best(_existing(spec, storage, name), spec.direction)
        far, far_source = best.user_attrs["config"], f"the study's best trial ({best.number})"
    cells = design(baseline, far, end=end)
    _check_workers(args)
    folder = results_dir(spec, name)
    sweep = AblationSweep(spec, cells, seeds, storage=storage, study_name=f"{name}-ablation", results=folder,
                          progress=False if args.no_progress else None)

    def write_tables(study: optuna.Study) -> list[str]:
        with INTERRUPT.shielded():  # the tables are written whole, whatever Ctrl-C comes now
            table = ablation_table(study.get_trials(deepcopy=False), cells, seeds, spec.direction, end=end)
            paths = write_ablation(table, ablation_markdown(table, spec, seeds, source, far_source, end=end), folder)
            print("wrote " + ", ".join(map(str, paths)))
        return [str(p) for p in paths]

    with _cluster(args, storage) as cluster:
        workers = args.workers or (cluster.slots() if cluster else 1)
        print(f"ablation of {name}: {len(cells)} cells x {seeds} seeds; {end} = {far_source}; baseline = {source}"
              + (_placed(workers, None, cluster) if workers > 1 or cluster else ""))
        if cluster is not None or workers > 1:
            from .workers import AblationJob

            job = AblationJob(str(spec.path.resolve()), tuple(cells), seeds, storage, f"{name}-ablation",
                              str(folder), sweep.progress)
            with INTERRUPT.shielded():
                sweep.open()  # created once, before the workers race to
            try:
                ends = _place(job, workers, None, cluster)
            finally:  # whatever became of the workers, the tables hold what finished
                write_tables(_existing(spec, storage, f"{name}-ablation"))
            return _workers_exit(ends, resume_argv)
    outcome = sweep.run()
    paths = write_tables(outcome.study)
    return _exit_code(outcome, resume_argv, what="ablation", see=paths[0])


def cmd_train(args: argparse.Namespace, *, resume_argv: str) -> int:
    from .train import check_device

    tc = load_training_config(args.config, args.overrides)
    folder = args.out or tc.path.with_suffix(".run")
    check_device(args.device)
    check_writable(folder, what="run folder")
    init_from = start_weights(tc, args.from_checkpoint)
    try:
        train_config(tc, out_dir=folder, device=args.device, init_from=init_from)
    except KeyboardInterrupt:
        print(f"interrupted: the last checkpoint is kept; resume with: {resume_argv}", file=sys.stderr)
        return 130
    except (UserError, SweepFailed):
        raise
    except Exception as e:  # the training itself failed: one line, the traceback kept in the run folder
        kept = folder / "traceback.txt"
        where = f"; traceback in {kept}" if save_traceback(kept) else ""
        raise SweepFailed(f"training failed: {type(e).__name__}: {first_line(e)}{where}") from None
    return 0


def cmd_dashboard(args: argparse.Namespace, *, resume_argv: str) -> int:
    spec, storage, name = _load(args)
    _existing(spec, storage, name)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise UserError("optuna-dashboard is not installed: pip install 'sweeper[dashboard]'") from None
    print(f"optuna-dashboard on http://{args.host}:{args.port} (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        run_server(open_storage(storage, spec.heartbeat, create=False), host=args.host, port=args.port)
    return 0




# `sweeper worker` is `sweeper run` on a storage every machine reaches (the parser requires --storage)
cmd_worker = cmd_run
