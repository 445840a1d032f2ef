"""sweeper: hyperparameter sweeps and ablations over PyTorch training, on Optuna.

Public API: load a study file, run it, train a config through the same loop; ``Run`` is
what a user's own training function (``task: module:function``) gets for each trial.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import _optuna_warnings  # noqa: F401  (first: silences Optuna's experimental warnings)
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

__all__ = [
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
    "run_sweep",
    "suggest",
    "train_config",
    "trial_config",
    "trials_frame",
    "write_results",
]
