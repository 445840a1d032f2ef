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


def ranges_table() -> str:
    """What every key of the built-in tasks accepts, as the README's markdown table."""
    rows: dict[tuple[str, str], list[str]] = {}
    for name in sorted(TASKS):
        for key, ktype in get_task(name).key_types.items():
            rows.setdefault((key, ktype.describe()), []).append(name)
    lines = ["| key | accepts | tasks |", "|---|---|---|"]
    for (key, accepts), tasks in sorted(rows.items()):
        lines.append(f"| `{key}` | {accepts} | {', '.join(tasks) if len(tasks) < len(TASKS) else 'all'} |")
    return "\n".join(lines)


__all__ = ["TASKS", "EvalResult", "KeyType", "Task", "TaskRun", "get_task", "ranges_table"]
