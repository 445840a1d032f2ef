"""The task interface: data, model, loss and metric for the one training loop."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class KeyType:
    """What a config key accepts: ``kind`` is float, int, str, bool or any.

    ``nullable`` keys accept ``null``; ``choices`` (if set) lists every value allowed.
    Numbers must be finite and lie in the range ``low``..``high`` (either may be None: no
    bound; ``low_open``/``high_open`` exclude the bound itself). The range is declared once,
    by whoever reads the key (a task, ``fit()``), and every way a value arrives is held to
    it: ``fixed``, each end of a searched range, ``--set``, ``sweeper train`` configs.
    """

    kind: str
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        if self.choices is not None:
            allowed = ", ".join(show_value(c) for c in self.choices)
        else:
            allowed = {"float": "a number", "int": "an integer", "str": "a string", "bool": "true or false",
                       "any": "any value"}[self.kind] + self._range_text()
        return f"{allowed} or null" if self.nullable else allowed

    def _range_text(self) -> str:
        if self.kind not in ("float", "int") or (self.low is None and self.high is None):
            return ""
        low, high = (None if b is None else show_value(int(b) if float(b).is_integer() else b)
                     for b in (self.low, self.high))
        if high is None:
            return f" {'>' if self.low_open else '>='} {low}"
        if low is None:
            return f" {'<' if self.high_open else '<='} {high}"
        if not self.low_open and not self.high_open:
            return f" from {low} to {high}"
        return (f" {'>' if self.low_open else '>='} {low} and {'<' if self.high_open else '<='} {high}")

    def accepts(self, value: Any) -> bool:
        if self.kind == "any":
            return True
        if value is None:
            return self.nullable
        if self.choices is not None:
            return any(type(value) is type(c) and value == c for c in self.choices) or (
                self.kind == "float" and isinstance(value, int | float) and not isinstance(value, bool)
                and float(value) in self.choices
            )
        if self.kind == "float":
            return isinstance(value, int | float) and not isinstance(value, bool) and self._in_range(value)
        if self.kind == "int":
            return isinstance(value, int) and not isinstance(value, bool) and self._in_range(value)
        if self.kind == "bool":
            return isinstance(value, bool)
        return isinstance(value, str)

    def _in_range(self, value: int | float) -> bool:
        try:
            x = float(value)
        except OverflowError:  # an integer past a float's range
            x = math.inf if value > 0 else -math.inf
        if self.kind == "float" and not math.isfinite(x):
            return False
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        return self.high is None or not (x > self.high or (self.high_open and x == self.high))


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, nullable: bool = False) -> KeyType:
    """A float key in a range (see ``KeyType``)."""
    return KeyType("float", nullable=nullable, low=low, high=high, low_open=low_open, high_open=high_open)


def integer(low: int | None = None, high: int | None = None, *, nullable: bool = False) -> KeyType:
    """An integer key in ``low``..``high`` (both included)."""
    return KeyType("int", nullable=nullable, low=low, high=high)


SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
SEED = integer(0, SEED_MAX)
PROBABILITY_BELOW_1 = number(0, 1, high_open=True)  # a dropout: 1 would drop everything


def show_value(value: Any) -> str:
    """A value as the YAML files write it (``null``, ``true``), for error messages."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def format_value(value: Any) -> str:
    """A parameter value for a progress line or a table: compact floats, ``off`` for null."""
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.1e}"
    return show_value(value)


# fit()'s lr schedule after warmup, for every built-in task
SCHEDULES = ("cosine", "cosine_restarts", "plateau")
SCHEDULE_DEFAULTS: Mapping[str, Any] = {
    "schedule": "cosine",     # cosine, cosine_restarts or plateau
    "restart_epochs": 5,      # cosine_restarts: first period, epochs
    "restart_mult": 2,        # cosine_restarts: each period this many times the last
    "plateau_patience": 2,    # plateau: evaluations without improvement before halving the lr
}
SCHEDULE_KEY_TYPES: Mapping[str, KeyType] = {
    "schedule": KeyType("str", choices=SCHEDULES), "restart_epochs": number(0, low_open=True),
    "restart_mult": integer(1), "plateau_patience": integer(0),
}

# the keys fit() reads for every built-in task, with their usual defaults
FIT_DEFAULTS: Mapping[str, Any] = {
    "lr": 3e-3,               # AdamW peak learning rate
    "warmup_epochs": 1,       # linear warmup length, epochs
    "clip_norm": 1.0,         # max gradient norm; null = no clipping
    "weight_decay": 1e-4,     # AdamW decoupled weight decay
    "seed": 0,                # python/numpy/torch seed of the run
    "patience": None,         # early stop after this many epochs without improvement
    **SCHEDULE_DEFAULTS,
}
FIT_KEY_TYPES: Mapping[str, KeyType] = {
    "lr": number(0, low_open=True), "warmup_epochs": number(0), "clip_norm": number(0, low_open=True, nullable=True),
    "weight_decay": number(0), "seed": SEED, "patience": integer(1, nullable=True),
    "epochs": integer(1), "batch_size": integer(1),
    **SCHEDULE_KEY_TYPES,
}


@dataclass
class EvalResult:
    """What one evaluation pass produced.

    ``metrics`` holds plain floats (the task's metric and ``loss`` at least);
    ``outputs`` carries tensors the health monitor may inspect (predictions,
    targets, sequence outputs and lengths), keyed by name.
    """

    metrics: dict[str, float]
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


class TaskRun(ABC):
    """A task instantiated for one config: the model plus its data."""

    model: nn.Module

    @abstractmethod
    def train_batches(self, epoch: int) -> Iterator[Any]:
        """Yield the training batches of one epoch (already on the device)."""

    @property
    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Number of batches ``train_batches`` yields."""

    @abstractmethod
    def loss(self, batch: Any) -> torch.Tensor:
        """Forward ``batch`` through the model and return the scalar training loss."""

    @abstractmethod
    def evaluate(self) -> EvalResult:
        """Evaluate the model on the validation split (called under ``no_grad``)."""

    def preflight(self) -> Mapping[str, torch.Tensor]:
        """Outputs the health monitor can judge before training (``HealthMonitor.check_data``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Data-side state a resumed run needs (e.g. the batch-order generator)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook, no state by default
        """Restore what ``state_dict`` returned."""


class ShuffledRun(TaskRun):
    """A ``TaskRun`` whose batch order (and any other training randomness) comes from one
    seeded ``self._generator``, saved in checkpoints so a resumed run draws what an
    uninterrupted one would have drawn."""

    _generator: torch.Generator

    def state_dict(self) -> dict[str, Any]:
        return {"batch_order": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._generator.set_state(state["batch_order"])


class Task(ABC):
    """A built-in training problem.

    Subclasses name their metric and its direction, and the config keys they
    read with their defaults and types.
    """

    name: str
    metric: str
    direction: str  # "minimize" or "maximize"
    chance_metric: float | None = None

    @property
    @abstractmethod
    def defaults(self) -> Mapping[str, Any]:
        """Every config key the task reads, with its default value."""

    @property
    @abstractmethod
    def key_types(self) -> Mapping[str, KeyType]:
        """The type of every key in ``defaults`` (checked by the spec and ``--set``)."""

    def config_error(self, config: Mapping[str, Any]) -> str | None:
        """Why ``config`` cannot run although each value has the right type (out of range, or
        a constraint between keys), else None. Studies check every combination they can
        sample, ``sweeper train`` its config, ``setup`` raises it as a ``ValueError``."""
        return None

    @abstractmethod
    def setup(self, config: Mapping[str, Any], device: torch.device) -> TaskRun:
        """Build data and model for ``config`` on ``device``."""
