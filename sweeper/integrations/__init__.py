"""How user code comes in: a training function (``task: module:function``), a script run
as a command (``task: {command: ...}``), a Lightning ``Trainer`` or a transformers
``Trainer`` (callbacks for either), and the trackers a sweep writes to.

Built-in tasks live in ``sweeper.tasks``; this package picks between them and the
user's code (``load_task``). Lightning and transformers are imported only by their own
modules (``sweeper.integrations.lightning``, ``sweeper.integrations.transformers``), so
neither is needed unless it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..tasks import get_task
from ..tasks.base import Task
from .command import CommandTask, fill_command
from .function import FunctionTask, UserTask, import_function, is_function_ref
from .run import Run, current_run


def load_task(spec: Any) -> Task:
    """The task a study file names: a built-in one, the user's ``module:function``
    (looked up in the study file's folder, then the current directory) or a command."""
    if spec.command is not None:
        return CommandTask(spec.command, cwd=spec.path.parent.resolve(), metric=spec.metric,
                           direction=spec.direction, key_types=spec.key_types(), grace=spec.command_grace)
    if is_function_ref(spec.task):
        return FunctionTask(spec.task, search=[spec.path.parent, Path.cwd()], metric=spec.metric,
                            direction=spec.direction, key_types=spec.key_types())
    return get_task(spec.task)


__all__ = ["CommandTask", "FunctionTask", "Run", "UserTask", "current_run", "fill_command", "import_function",
           "is_function_ref", "load_task"]
