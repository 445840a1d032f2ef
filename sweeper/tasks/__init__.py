"""Built-in tasks, looked up by name from a study's ``task:`` key (user code comes in
through ``sweeper.integrations``)."""

from __future__ import annotations

from .base import EvalResult, KeyType, Task, TaskRun
from .binary_imbalanced import BinaryImbalanced
from .classify_many import ClassifyMany
from .ctc_digits import CTCDigits

TASKS: dict[str, type[Task]] = {
    CTCDigits.name: CTCDigits, ClassifyMany.name: ClassifyMany, BinaryImbalanced.name: BinaryImbalanced,
}


def get_task(name: str) -> Task:
    """Instantiate the built-in task called ``name`` (``KeyError`` if there is none)."""
    return TASKS[name]()


__all__ = ["TASKS", "EvalResult", "KeyType", "Task", "TaskRun", "get_task"]
