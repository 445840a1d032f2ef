"""Best trial -> a full training config with provenance (``results/NAME/best.yaml``)."""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from . import __version__
from .errors import UserError
from .integrations.command import fill_command
from .spec import StudySpec


def code_version() -> str:
    """``sweeper X.Y.Z`` plus the git commit of the working directory, when there is one."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return f"sweeper {__version__}, git {sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"sweeper {__version__}"


def best_trials(study: optuna.Study, direction: str, k: int = 1) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    done.sort(key=lambda t: t.value if direction == "minimize" else -t.value)  # type: ignore[operator]
    return done[:k]


def training_config(spec: StudySpec, study: optuna.Study, trial: FrozenTrial, storage: str,
                    folder: Path | None = None) -> dict[str, Any]:
    """The document ``sweeper train`` reads: task, full config, provenance (and the filled command);
    ``checkpoint``, the trial's kept weights relative to ``folder`` (where the document goes),
    when they are on this machine."""
    doc: dict[str, Any] = {
        "task": spec.task,
        "metric": spec.metric,
        "direction": spec.direction,
        "config": dict(trial.user_attrs["config"]),
        "provenance": {
            "study": study.study_name,
            "storage": storage,
            "spec": str(spec.path),
            "trial": trial.number,
            "value": trial.value,
            "code": code_version(),
            "exported": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    }
    if spec.command is not None:  # a command task: the template, and the command line of this config
        doc["task_command"] = spec.command
        doc["workdir"] = str(spec.path.parent.resolve())  # where the command runs, from any folder
    kept = trial.user_attrs.get("checkpoint")
    if kept and Path(kept).is_file():
        doc["checkpoint"] = os.path.relpath(Path(kept).resolve(), (folder or Path.cwd()).resolve())
    template = spec.export.command or spec.command
    if template:
        doc["command"] = fill_command(template, doc["config"])
    return doc


def export_best(spec: StudySpec, study: optuna.Study, folder: Path, storage: str, *, top: int = 1) -> list[Path]:
    """Write ``best.yaml`` (and ``top/K.yaml`` for the K best); exit 2 if nothing completed."""
    trials = best_trials(study, spec.direction, max(top, 1))
    if not trials:
        raise UserError(f"study {study.study_name!r} has no completed trial to export yet")
    folder.mkdir(parents=True, exist_ok=True)
    best = training_config(spec, study, trials[0], storage, folder)
    paths = [_write(folder / "best.yaml", best)]
    if "command" in best:
        (folder / "best.command").write_text(best["command"] + "\n")
        paths.append(folder / "best.command")
    if top > 1:
        (folder / "top").mkdir(exist_ok=True)
        for rank, t in enumerate(trials, 1):
            doc = training_config(spec, study, t, storage, folder / "top")
            paths.append(_write(folder / "top" / f"{rank}.yaml", doc))
    return paths


def _write(path: Path, doc: Mapping[str, Any]) -> Path:
    header = (f"# Training config exported from study {doc['provenance']['study']}, "
              f"trial {doc['provenance']['trial']} ({doc['metric']}={doc['provenance']['value']:.4g}).\n"
              f"# Run it with: sweeper train {path}\n"
              + (f"# Start from the trial's kept weights: sweeper train {path} --from-checkpoint\n"
                 if "checkpoint" in doc else ""))
    path.write_text(header + yaml.safe_dump(dict(doc), sort_keys=False))
    return path
