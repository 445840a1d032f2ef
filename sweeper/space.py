"""Search space: a trial's sampled values merged with fixed values and overrides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from .integrations import load_task
from .spec import CategoricalParam, FloatParam, IntParam, ParamSpec, StudySpec


def suggest(
    trial: optuna.Trial, params: Mapping[str, ParamSpec], *, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Ask ``trial`` for a value of every searched parameter not in ``skip``."""
    out: dict[str, Any] = {}
    for name, p in params.items():
        if name in skip:
            continue
        if isinstance(p, FloatParam):
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, CategoricalParam):
            out[name] = trial.suggest_categorical(name, p.choices)
        else:  # pragma: no cover - the spec admits no other kind
            raise TypeError(f"unknown parameter kind {p!r}")
    return out


def base_config(spec: StudySpec, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Task defaults, then the budget's epochs, then ``fixed``, then ``--set`` overrides."""
    config = dict(load_task(spec).defaults)
    if spec.budget.epochs is not None:
        config["epochs"] = spec.budget.epochs
    config.update(spec.fixed)
    config.update(overrides or {})
    return config


def trial_config(spec: StudySpec, trial: optuna.Trial, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full config of one trial; pinned (overridden) parameters are not sampled."""
    overrides = dict(overrides or {})
    config = base_config(spec, overrides)
    config.update(suggest(trial, spec.params, skip=frozenset(overrides)))
    return config
