"""A user's script run as a command for each trial: ``task: {command: "python train.py --lr {lr}"}``.

The script runs in a process of its own (a crash, a leak or a hung GPU stays there).
It reports through ``sweeper.current_run()``, which appends JSON lines to the file
named by ``SWEEPER_REPORT``; this side reads them while the process runs, reports each
epoch to the trial, and stops the process (SIGTERM to its process group, SIGKILL after
``grace`` seconds) when the pruner says so. Health checks run inside the script, with
the options passed in ``SWEEPER_RUN``; a verdict ends the script with its reason.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from ..health.verdict import HealthPruned, Reason, Verdict
from ..tasks.base import EvalResult, KeyType, show_value
from .function import UserTask

POLL_S = 0.2  # how often the report file is read while the script runs
REPORT_ENV, RUN_ENV = "SWEEPER_REPORT", "SWEEPER_RUN"  # the report file; metric, direction, health options


def fill_command(template: str, config: Mapping[str, Any]) -> str:
    """``template`` with every ``{key}`` replaced by the config's value, written as in YAML
    (``null``, ``true``) and shell-quoted where it needs to be."""
    return template.format_map({k: shlex.quote(show_value(v)) for k, v in config.items()})


class CommandTask(UserTask):
    """Runs ``command`` (a template over the config's keys) for each trial, in ``cwd``."""

    def __init__(self, command: str, *, cwd: Path, metric: str, direction: str,
                 key_types: Mapping[str, KeyType] | None = None, grace: float = 10.0) -> None:
        super().__init__("command", metric=metric, direction=direction, key_types=key_types)
        self.command = command
        self.cwd = cwd
        self.grace = grace

    def train(self, config: Mapping[str, Any], reporter: Any = None, *, health: Mapping[str, Any] | None = None,
              log_path: Path | None = None, checkpoint_dir: Path | None = None,
              init_from: Path | None = None) -> Any:
        """Run the command to its end (or until pruned) and return a ``FitResult``."""
        from ..train import FitResult

        argv = shlex.split(fill_command(self.command, config))
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="sweeper-") as tmp:
            report_path = Path(tmp) / "report.jsonl"
            report_path.touch()
            run = {"metric": self.metric, "direction": self.direction, "health": dict(health) if health else None,
                   # absolute: the script runs in its own folder
                   "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir.resolve()),
                   "init_from": None if init_from is None else str(Path(init_from).resolve())}
            env = {**os.environ, REPORT_ENV: str(report_path), RUN_ENV: json.dumps(run)}
            # `python` in the command is this interpreter, where sweeper is importable
            env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
            log: IO[Any] | None = log_path.open("ab") if log_path is not None else None
            try:
                proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT if log
                                        else None, start_new_session=True)
            except OSError as e:
                raise RuntimeError(f"cannot start {argv[0]!r}: {e.strerror}") from None
            reader = _Reader(report_path, self.metric, self.direction, reporter)
            try:
                while proc.poll() is None:
                    reader.read()
                    time.sleep(POLL_S)
                reader.read()
            finally:
                if proc.poll() is None:  # pruned, interrupted or failed here: stop the script
                    self._stop(proc)
                if log is not None:
                    log.close()
        if reader.verdict is not None:
            raise HealthPruned(reader.verdict)
        if proc.returncode != 0:
            raise RuntimeError(_exit_text(proc.returncode, log_path))
        if not reader.history:
            raise RuntimeError(f"the command ended without reporting {self.metric}: call run.report() each epoch "
                               "(run = sweeper.current_run())")
        last = reader.history[-1][self.metric]
        return FitResult(metric=self.metric, best=last, best_epoch=reader.best_epoch, last=last,
                         epochs_run=len(reader.history), seconds=time.perf_counter() - started,
                         history=reader.history)

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the script's process group (its children too), SIGKILL after ``grace``."""
        for sig, wait in ((signal.SIGTERM, self.grace), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


class _Reader:
    """Reads the report file from where it left off; epochs go to the reporter (which may prune)."""

    def __init__(self, path: Path, metric: str, direction: str, reporter: Any) -> None:
        self.path = path
        self.metric = metric
        self.direction = direction
        self.reporter = reporter
        self.offset = 0
        self.history: list[dict[str, float]] = []
        self.best_epoch = -1
        self.verdict: Verdict | None = None
        self._best = math.nan

    def read(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        for line in data[:end].splitlines():
            if line.strip():
                self._record(json.loads(line))

    def _record(self, msg: Mapping[str, Any]) -> None:
        if "health" in msg:
            h = msg["health"]
            self.verdict = Verdict(Reason(h["reason"]), str(h["detail"]), int(h["step"]), h.get("epoch"))
            return
        epoch, metrics = int(msg["epoch"]), {k: float(v) for k, v in msg["metrics"].items()}
        if self.metric not in metrics:
            raise KeyError(f"the command reported {', '.join(metrics)}; the study's metric is {self.metric!r}")
        self.history.append({"epoch": float(epoch), **metrics})
        value = metrics[self.metric]
        if self.best_epoch < 0 or (value < self._best if self.direction == "minimize" else value > self._best):
            self._best, self.best_epoch = value, epoch
        if self.reporter is not None:
            self.reporter.report(epoch, EvalResult(metrics=metrics))


def _exit_text(code: int, log_path: Path | None) -> str:
    what = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    last = ""
    if code > 0 and log_path is not None and log_path.exists():  # its last line: usually the exception
        lines = [x for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
        last = f": {lines[-1].strip()}" if lines else ""
    return f"the command {what}{last}"
