"""``sweeper train CONFIG.yaml``: an exported config through the same ``fit()``."""

from __future__ import annotations

import csv
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from .errors import UserError, first_line
from .integrations import CommandTask, FunctionTask, import_function, is_function_ref
from .spec import _Loader, parse_scalar, read_yaml, show_value
from .tasks import TASKS, get_task
from .tasks.base import EvalResult
from .train import FitResult, fit


@dataclass(frozen=True)
class TrainingConfig:
    """A validated training config file."""

    path: Path
    task: str
    config: dict[str, Any]
    metric: str = ""
    direction: str = "minimize"
    provenance: dict[str, Any] | None = None
    task_command: str | None = None  # a command task's template, and the folder it runs in
    workdir: str | None = None
    checkpoint: Path | None = None  # the trial's kept weights (``checkpoint:``, relative to the file)

    def command_task(self) -> CommandTask | None:
        """The command this config runs (None unless it came from a `task: {command: ...}` study)."""
        if self.task_command is None:
            return None
        return CommandTask(self.task_command, cwd=Path(self.workdir or "."), metric=self.metric,
                           direction=self.direction)

    def function_task(self) -> FunctionTask | None:
        """The user's training function this config names (None for a built-in task): looked
        up beside the config file, beside the study file it came from, then in the current folder."""
        if not is_function_ref(self.task):
            return None
        spec = Path(str((self.provenance or {}).get("spec", "")))
        search = [self.path.parent, *([spec.parent] if spec.name else []), Path.cwd()]
        return FunctionTask(self.task, search=search, metric=self.metric, direction=self.direction)


def load_training_config(path: str | Path, overrides: list[str] | None = None) -> TrainingConfig:
    """Read an exported config; every key is checked against the task's types."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    doc = read_yaml(p, what="a training config")
    if not isinstance(doc, dict) or "task" not in doc or not isinstance(doc.get("config"), dict):
        raise UserError(f"{p}: a training config needs `task` and a `config` mapping "
                        "(as written by `sweeper export`)")
    task_name = doc["task"]
    if is_function_ref(task_name) or task_name == "command":
        return _function_config(p, doc, overrides or [])
    if not isinstance(task_name, str) or task_name not in TASKS:
        raise UserError(f"{p}: `task` must be one of {', '.join(sorted(TASKS))} or module:function, "
                        f"got {task_name!r}")
    task = get_task(task_name)
    types = task.key_types
    config = dict(task.defaults)
    for key, value in doc["config"].items():
        if key not in types:
            raise UserError(f"{p}: unknown key `config.{key}` for task {task_name}; known: {', '.join(sorted(types))}")
        if not types[key].accepts(value):
            raise UserError(f"{p}: `config.{key}` must be {types[key].describe()}, got {show_value(value)}")
        config[key] = value
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or key not in types:
            raise UserError(f"--set {item}: expected KEY=VALUE with KEY one of {', '.join(sorted(types))}")
        value = parse_scalar(text)
        if not types[key].accepts(value):
            raise UserError(f"--set {item}: {key} must be {types[key].describe()}")
        config[key] = value
    if error := task.config_error(config):
        raise UserError(f"{p}: {error}" + (f" (with --set {' '.join(overrides)})" if overrides else ""))
    return TrainingConfig(path=p, task=task_name, config=config, checkpoint=_checkpoint(p, doc))


def _function_config(p: Path, doc: Mapping[str, Any], overrides: list[str]) -> TrainingConfig:
    """A user function's config: any keys; ``--set`` may change those it has."""
    config = dict(doc["config"])
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in config:
            raise UserError(f"--set {item}: expected KEY=VALUE with KEY one of {', '.join(sorted(config))}")
        config[key] = parse_scalar(text)
    metric, direction = doc.get("metric"), doc.get("direction", "minimize")
    if not isinstance(metric, str) or direction not in ("minimize", "maximize"):
        raise UserError(f"{p}: a config for task {doc['task']} needs `metric` and `direction` (minimize or maximize)")
    tc = TrainingConfig(path=p, task=str(doc["task"]), config=config, metric=metric, direction=direction,
                        provenance=doc.get("provenance") if isinstance(doc.get("provenance"), dict) else None,
                        task_command=doc.get("task_command"), workdir=doc.get("workdir"),
                        checkpoint=_checkpoint(p, doc))
    if tc.workdir is not None and not isinstance(tc.workdir, str):
        raise UserError(f"{p}: `workdir` must be the folder the command runs in, got {show_value(tc.workdir)}")
    if tc.task == "command":
        if not isinstance(tc.task_command, str):
            raise UserError(f"{p}: a config for a command task needs `task_command` (as `sweeper export` writes it)")
        return tc
    fn_task = tc.function_task()
    assert fn_task is not None
    import_function(fn_task.name, fn_task.search)  # refused here, before a run folder is made
    return tc


def _checkpoint(p: Path, doc: Mapping[str, Any]) -> Path | None:
    value = doc.get("checkpoint")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UserError(f"{p}: `checkpoint` must be the path of a best.pt, got {show_value(value)}")
    return p.parent / value


def start_weights(tc: TrainingConfig, given: str | None) -> Path | None:
    """The weights ``sweeper train --from-checkpoint [PATH]`` starts from: PATH, or the kept
    checkpoint the config names (``given`` is ``""`` for the bare flag, None without it)."""
    if given is None:
        return None
    if given:
        path = Path(given)
    elif tc.checkpoint is not None:
        path = tc.checkpoint
    else:
        raise UserError(f"--from-checkpoint: {tc.path} names no checkpoint (the study kept none for its trial: "
                        "`checkpoints.keep` 0, or a worker on another machine ran it); pass --from-checkpoint PATH")
    if not path.is_file():
        raise UserError(f"--from-checkpoint: {path} does not exist")
    try:  # read now, so an unreadable file is refused before a run folder is made
        import torch

        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"--from-checkpoint: {path} is not a checkpoint torch can read "
                        f"({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(state, dict) or not state:
        raise UserError(f"--from-checkpoint: {path} holds no weights (a best.pt or a state dict is expected)")
    return path



class CSVReporter:
    """Appends each epoch's metrics to a CSV file and prints one line per epoch."""

    def __init__(self, path: Path, out: TextIO) -> None:
        self.path = path
        self.out = out

    def report(self, epoch: int, result: EvalResult) -> None:
        row = {"epoch": epoch, **result.metrics}
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        shown = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
        print(f"epoch {epoch:>3} {shown}", file=self.out, flush=True)


def train_config(tc: TrainingConfig, *, out_dir: Path | None = None, out: TextIO | None = None,
                 device: str = "auto", init_from: Path | None = None) -> FitResult:
    """Train ``tc`` with checkpoints and a metrics CSV in ``out_dir`` (default: beside the
    config, ``<stem>.run/``); a second call resumes from the last checkpoint. ``init_from``:
    start from those weights (a trial's ``best.pt``) instead of a fresh initialisation."""
    out = out or sys.stdout
    folder = out_dir or tc.path.with_suffix(".run")
    created = not folder.exists()
    _check_same_config(folder, tc.config)
    reporter = CSVReporter(folder / "metrics.csv", out)
    cmd_task = tc.command_task()
    if cmd_task is not None:  # the user's script in its own process; its output goes to the terminal
        result = cmd_task.train(tc.config, reporter, init_from=init_from)
        print(f"done: the command reported {cmd_task.metric}={result.last:.4f} after {result.epochs_run} epochs; "
              f"metrics in {folder}/metrics.csv", file=out)
        return result
    fn_task = tc.function_task()
    if fn_task is not None:  # the user's function: its own loop, no study, nothing prunes
        result = fn_task.train(tc.config, reporter, device=device, init_from=init_from)
        print(f"done: {fn_task.name} returned {fn_task.metric}={result.best:.4f} after {result.epochs_run} "
              f"reported epochs; metrics in {folder}/metrics.csv", file=out)
        return result
    task = get_task(tc.task)
    try:
        result = fit(tc.config, task, reporter, checkpoint_dir=folder, device=device, init_from=init_from)
    except ValueError as e:
        if init_from is not None and str(init_from) in str(e):
            if created:  # refused before the first epoch: nothing is left behind
                shutil.rmtree(folder, ignore_errors=True)
            raise UserError(f"--from-checkpoint: {e}") from None
        raise
    print(f"done: best {task.metric}={result.best:.4f} at epoch {result.best_epoch}, "
          f"last {task.metric}={result.last:.4f}; checkpoints in {folder}", file=out)
    return result


def _check_same_config(folder: Path, config: Mapping[str, Any]) -> None:
    """A run folder holds one config (``config.yaml``): resuming a checkpoint of another
    config would silently mix two runs."""
    path = folder / "config.yaml"
    if path.exists():
        try:
            saved = yaml.load(path.read_text(), Loader=_Loader) or {}
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            saved = None
        if saved != dict(config):
            if not isinstance(saved, dict):
                raise UserError(f"{path} is not a config this command wrote; pass --out to train into a new folder")
            diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            raise UserError(f"{folder} holds a run of another config (differs in {', '.join(diff)}); "
                            "pass --out to train into a new folder")
        return
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder}: a file is there, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # written then renamed: never a torn config.yaml
    tmp.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    tmp.replace(path)
