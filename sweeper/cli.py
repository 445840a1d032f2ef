"""Command line: parses, calls, prints. Exit codes: 0 done, 1 a run failed, 2 bad input."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .errors import SweepFailed, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # one line, exit 2, like every other bad input
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="a name under studies/ or a path to a study YAML file")
    p.add_argument("--storage", help="storage URL (default: the study file's, else sqlite:///results/NAME/study.db)")
    p.add_argument("--study-name", help="name of the study in the storage (default: the file's `name`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sweeper", description="Hyperparameter sweeps that watch training health.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="create or resume a study and run it to its trial budget")
    _study_args(run)
    run.add_argument("--trials", type=int, help="the study's total budget of finished trials")
    run.add_argument("--workers", type=int, help="local worker processes sharing the study (default 1, or one a GPU)")
    run.add_argument("--gpus", help="`auto` or GPU indices like 0,1: each worker gets its own GPU")
    run.add_argument("--dask", metavar="ADDRESS",
                     help="place the workers on the Dask cluster at ADDRESS (tcp://host:8786) instead of here")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a fixed parameter or pin a searched one (repeatable)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    worker = sub.add_parser("worker", help="join a study from any machine (same as run, --storage required)")
    worker.add_argument("study", help="a name under studies/ or a path to a study YAML file")
    worker.add_argument("--storage", required=True, help="the shared storage URL, e.g. postgresql://host/db")
    worker.add_argument("--study-name", help="name of the study in the storage (default: the file's `name`)")
    worker.add_argument("--trials", type=int, help="the study's total budget of finished trials")
    worker.add_argument("--workers", type=int, help="worker processes on this machine (default 1, or one a GPU)")
    worker.add_argument("--gpus", help="`auto` or GPU indices like 0,1: each worker gets its own GPU")
    worker.add_argument("--dask", metavar="ADDRESS", help="place the workers on the Dask cluster at ADDRESS")
    worker.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    worker.add_argument("--no-progress", action="store_true", help="no progress bar")

    status = sub.add_parser("status", help="trials by state and the best trial")
    _study_args(status)

    report = sub.add_parser("report", help="rewrite results/NAME/trials.csv and summary.md")
    _study_args(report)

    export = sub.add_parser("export", help="write results/NAME/best.yaml from the best trial")
    _study_args(export)
    export.add_argument("--top", type=int, default=1, help="also write results/NAME/top/K.yaml for the K best")

    ablate = sub.add_parser("ablate", help="leave-one-out and leave-one-in runs between baseline and best "
                                           "(or ablation.target), over seeds")
    _study_args(ablate)
    ablate.add_argument("--seeds", type=int, help="runs per cell (default: the file's ablation.seeds, else 3)")
    ablate.add_argument("--workers", type=int, help="worker processes running the cells in parallel (default 1)")
    ablate.add_argument("--dask", metavar="ADDRESS",
                        help="run the cells on the Dask cluster at ADDRESS (tcp://host:8786)")
    ablate.add_argument("--no-progress", action="store_true", help="no progress bar")

    train = sub.add_parser("train", help="train an exported config through the same fit()")
    train.add_argument("config", help="a YAML written by `sweeper export`")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--out", type=Path, help="folder for checkpoints and metrics (default: CONFIG.run/)")
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    train.add_argument("--from-checkpoint", nargs="?", const="", metavar="PATH",
                       help="start from the trial's kept weights (the config's `checkpoint`) or from PATH")

    dash = sub.add_parser("dashboard", help="browse the study with optuna-dashboard")
    _study_args(dash)
    dash.add_argument("--port", type=int, default=8080)
    dash.add_argument("--host", default="127.0.0.1")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code: 0 done, 1 a run failed, 2 bad input, 130 interrupted."""
    from .interrupts import handling

    # first: a Ctrl-C while torch imports is an interrupt, not a traceback. Called in-process
    # with arguments (tests, notebooks), the caller's handlers come back after; as the program
    # (argv None) they stay, so a Ctrl-C on the way out is no traceback either
    with handling(armed=True, restore=argv is not None):
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = "sweeper " + " ".join(shlex.quote(a) for a in argv)
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args, resume)
    except UserError as e:
        print(f"sweeper: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except SweepFailed as e:
        print(f"sweeper: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        # before any trial ran, or while results were written after one: what exists is whole
        print(f"interrupted: finished runs are kept; resume with: {resume}", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    """A message on one line, whatever a value inside it held."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _dispatch(args: argparse.Namespace, resume_argv: str) -> int:
    from . import commands  # imports torch and optuna: only once the arguments parsed

    handler = getattr(commands, f"cmd_{args.command}")
    return int(handler(args, resume_argv=resume_argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
