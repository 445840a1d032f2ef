"""sweeper: hyperparameter sweeps and ablations over PyTorch training, on Optuna.

Public API: load a study file, run it, train a config through the same loop; ``Run`` is
what a user's own training function (``task: module:function``) gets for each trial.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

# The public API, imported when first used: `sweeper` (and the CLI, which Ctrl-C must be
# able to stop cleanly from its first instruction) starts without importing torch or optuna.
_EXPORTS = {
    "SweepFailed": ".errors",
    "UserError": ".errors",
    "export_best": ".export",
    "HealthMonitor": ".health",
    "HealthPruned": ".health",
    "Reason": ".health",
    "Verdict": ".health",
    "FunctionTask": ".integrations",
    "Run": ".integrations",
    "current_run": ".integrations",
    "ProgressPruner": ".pruning",
    "trials_frame": ".report",
    "write_results": ".report",
    "load_training_config": ".run_config",
    "train_config": ".run_config",
    "FeasibleTPESampler": ".sampling",
    "base_config": ".space",
    "suggest": ".space",
    "trial_config": ".space",
    "StudySpec": ".spec",
    "load_spec": ".spec",
    "parse_overrides": ".spec",
    "parse_spec": ".spec",
    "Sweep": ".sweep",
    "SweepOutcome": ".sweep",
    "run_sweep": ".sweep",
    "EvalResult": ".tasks",
    "KeyType": ".tasks",
    "Task": ".tasks",
    "TaskRun": ".tasks",
    "get_task": ".tasks",
    "FitResult": ".train",
    "fit": ".train",
    "AblationJob": ".workers",
    "SweepJob": ".workers",
    "run_workers": ".workers",
    "Cluster": ".dask_workers",
    "run_on_dask": ".dask_workers",
}

if TYPE_CHECKING:  # pragma: no cover
    from .dask_workers import Cluster, run_on_dask
    from .errors import SweepFailed, UserError
    from .export import export_best
    from .health import HealthMonitor, HealthPruned, Reason, Verdict
    from .integrations import FunctionTask, Run, current_run
    from .pruning import ProgressPruner
    from .report import trials_frame, write_results
    from .run_config import load_training_config, train_config
    from .sampling import FeasibleTPESampler
    from .space import base_config, suggest, trial_config
    from .spec import StudySpec, load_spec, parse_overrides, parse_spec
    from .sweep import Sweep, SweepOutcome, run_sweep
    from .tasks import EvalResult, KeyType, Task, TaskRun, get_task
    from .train import FitResult, fit
    from .workers import AblationJob, SweepJob, run_workers


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
    import importlib

    importlib.import_module("._optuna_warnings", __name__)
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AblationJob",
    "Cluster",
    "EvalResult",
    "FeasibleTPESampler",
    "FitResult",
    "FunctionTask",
    "HealthMonitor",
    "HealthPruned",
    "KeyType",
    "ProgressPruner",
    "Reason",
    "Run",
    "StudySpec",
    "Sweep",
    "SweepFailed",
    "SweepJob",
    "SweepOutcome",
    "Task",
    "TaskRun",
    "UserError",
    "Verdict",
    "__version__",
    "base_config",
    "current_run",
    "export_best",
    "fit",
    "get_task",
    "load_spec",
    "load_training_config",
    "parse_overrides",
    "parse_spec",
    "run_on_dask",
    "run_sweep",
    "run_workers",
    "suggest",
    "train_config",
    "trial_config",
    "trials_frame",
    "write_results",
]
