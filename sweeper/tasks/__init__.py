"""Built-in tasks, looked up by name from a study's ``task:`` key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import EvalResult, KeyType, Task, TaskRun
from .binary_imbalanced import BinaryImbalanced
from .classify_many import ClassifyMany
from .command import CommandTask
from .ctc_digits import CTCDigits
from .function import FunctionTask, import_function, is_function_ref

TASKS: dict[str, type[Task]] = {
    CTCDigits.name: CTCDigits, ClassifyMany.name: ClassifyMany, BinaryImbalanced.name: BinaryImbalanced,
}


def get_task(name: str) -> Task:
    """Instantiate the built-in task called ``name`` (``KeyError`` if there is none)."""
    return TASKS[name]()


def load_task(spec: Any) -> Task:
    """The task a study file names: a built-in one, or the user's ``module:function``
    (looked up in the study file's folder, then the current directory)."""
    if spec.command is not None:
        return CommandTask(spec.command, cwd=spec.path.parent.resolve(), metric=spec.metric,
                           direction=spec.direction, key_types=spec.key_types(), grace=spec.command_grace)
    if is_function_ref(spec.task):
        return FunctionTask(spec.task, search=[spec.path.parent, Path.cwd()], metric=spec.metric,
                            direction=spec.direction, key_types=spec.key_types())
    return get_task(spec.task)


__all__ = ["TASKS", "CommandTask", "EvalResult", "FunctionTask", "KeyType", "Task", "TaskRun", "get_task",
           "import_function", "is_function_ref", "load_task"]
