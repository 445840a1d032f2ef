"""One function per subcommand: load and validate input, call the library, print."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

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
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be an integer >= 1, got {args.workers}")
    gpus = None
    if args.gpus is not None:
        import torch

        from .workers import parse_gpus

        gpus = parse_gpus(args.gpus, torch.cuda.device_count())
    workers = args.workers or (len(gpus) if gpus else 1)
    progress = False if args.no_progress else None
    sweep = Sweep(spec, overrides=overrides, storage=storage, study_name=name, trials=args.trials, progress=progress)
    if workers > 1 or gpus:  # a GPU is given to a worker process through CUDA_VISIBLE_DEVICES
        return _run_workers(workers, gpus, spec, storage, name, overrides, sweep, resume_argv)
    outcome = sweep.run()
    folder = _finish(outcome.study, spec, storage, name, sweep.budget)
    return _exit_code(outcome, resume_argv, what="sweep", see=f"{folder}/trials.csv")


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


def _run_workers(workers: int, gpus: list[int] | None, spec: StudySpec, storage: str, name: str,
                 overrides: dict[str, object], sweep: Sweep, resume_argv: str) -> int:
    from .workers import INTERRUPTED, assign_gpus, run_workers

    with INTERRUPT.shielded():
        # the storage and the study are created once, before the workers race to; a Ctrl-C
        # from here on finds a study to write results for and to resume
        sweep.open()
    note = f"; {workers} workers"
    if gpus:
        note += " on GPUs " + ",".join(map(str, assign_gpus(workers, gpus)))
    codes = run_workers(workers, spec.path, overrides, storage, name, sweep.budget, sweep.progress, gpus)
    _finish(_existing(spec, storage, name), spec, storage, name, sweep.budget, note)
    if INTERRUPTED in codes:
        return _interrupted(resume_argv)
    failed = [_worker_end(i, code) for i, code in enumerate(codes) if code]
    if failed:
        raise SweepFailed("; ".join(failed) + f"; the same command resumes: {resume_argv}")
    return 0


def _worker_end(index: int, code: int) -> str:
    if code < 0:
        return f"worker {index} was killed by {signal.Signals(-code).name}"
    return f"worker {index} ended with exit code {code} (see its lines above)"


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
    folder = results_dir(spec, name)
    sweep = AblationSweep(spec, cells, seeds, storage=storage, study_name=f"{name}-ablation", results=folder,
                          progress=False if args.no_progress else None)
    print(f"ablation of {name}: {len(cells)} cells x {seeds} seeds; {end} = {far_source}; baseline = {source}")
    outcome = sweep.run()
    with INTERRUPT.shielded():  # the tables are written whole, whatever Ctrl-C comes now
        table = ablation_table(outcome.study.get_trials(deepcopy=False), cells, seeds, spec.direction, end=end)
        paths = write_ablation(table, ablation_markdown(table, spec, seeds, source, far_source, end=end), folder)
        print("wrote " + ", ".join(map(str, paths)))
    return _exit_code(outcome, resume_argv, what="ablation", see=str(paths[0]))


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
