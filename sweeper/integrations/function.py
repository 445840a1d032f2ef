"""A user's own training function as a task: ``task: my_module:train`` in a study file."""

from __future__ import annotations

import importlib
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..tasks.base import KeyType, Task, TaskRun

FUNCTION_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_function_ref(name: object) -> bool:
    """``module:function`` (a user's training function) rather than a built-in task name."""
    return isinstance(name, str) and bool(FUNCTION_REF.match(name))


def import_function(ref: str, search: Sequence[Path], *, what: str = "task") -> Callable[..., Any]:
    """Import ``module:function``, looking in ``search`` folders first (one-line error if not found);
    ``what`` names the study key the reference came from in the error."""
    module_name, _, attr = ref.partition(":")
    for folder in reversed([str(Path(p).resolve()) for p in search]):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    where = " and ".join(str(p) for p in search)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise UserError(f"{what} {ref}: no module {module_name!r} in {where} (or installed)") from None
        raise UserError(f"{what} {ref}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise UserError(f"{what} {ref}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{what} {ref}: {module.__file__} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


class UserTask(Task):
    """A task that trains itself (the user's function or command): the study file gives its
    metric, direction and keys; sweeper supplies only ``seed`` (and ``epochs`` from the budget)."""

    chance_metric = None

    def __init__(self, name: str, *, metric: str, direction: str,
                 key_types: Mapping[str, KeyType] | None = None) -> None:
        self.name = name
        self.metric = metric
        self.direction = direction
        self._types = dict(key_types or {})

    @property
    def defaults(self) -> Mapping[str, Any]:
        return {"seed": 0}

    @property
    def key_types(self) -> Mapping[str, KeyType]:
        return {"seed": KeyType("int"), "epochs": KeyType("int"), **self._types}

    def setup(self, config: Mapping[str, Any], device: torch.device) -> TaskRun:
        raise TypeError(f"task {self.name} trains itself: call train(), not setup()")


class FunctionTask(UserTask):
    """Calls ``fn(config, run)`` for each trial; the function trains and reports through ``run``."""

    def __init__(self, ref: str, *, search: Sequence[Path], metric: str, direction: str,
                 key_types: Mapping[str, KeyType] | None = None) -> None:
        super().__init__(ref, metric=metric, direction=direction, key_types=key_types)
        self.search = list(search)

    def train(self, config: Mapping[str, Any], reporter: Any = None, *, monitor: Any = None,
              device: str = "auto", checkpoint_dir: Path | None = None, init_from: Path | None = None) -> Any:
        """Seed, call the function with a ``Run`` and return a ``FitResult``."""
        from ..train import FitResult, seed_everything
        from .run import Run

        fn = import_function(self.name, self.search)
        started = time.perf_counter()
        seed_everything(int(config.get("seed", 0)))
        run = Run(config, metric=self.metric, direction=self.direction, reporter=reporter, monitor=monitor,
                  device=device, checkpoint_dir=checkpoint_dir, init_from=init_from)
        returned = fn(dict(config), run)
        if returned is not None and not isinstance(returned, int | float):
            raise TypeError(f"{self.name} returned {type(returned).__name__}; return the final {self.metric} "
                            "(a number) or None for the best reported value")
        value = run.best if returned is None else float(returned)
        return FitResult(metric=self.metric, best=value, best_epoch=run.best_epoch,
                         last=run.history[-1][self.metric] if run.history else value,
                         epochs_run=len(run.history), seconds=time.perf_counter() - started, history=run.history)
