"""Reason codes and the verdict a detector returns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import optuna


class Reason(StrEnum):
    """Why a trial was pruned; stored as the trial's ``health.reason``."""

    NONFINITE_LOSS = "nonfinite_loss"
    GRAD_EXPLOSION = "grad_explosion"
    VANISHING_GRADIENTS = "vanishing_gradients"
    DEAD_GRADIENTS = "dead_gradients"
    STALLED_UPDATES = "stalled_updates"
    CLASS_COLLAPSE = "class_collapse"
    TEMPORAL_COLLAPSE = "temporal_collapse"
    BLANK_OUTPUT = "blank_output"
    CTC_INFEASIBLE = "ctc_infeasible"
    CHANCE_PLATEAU = "chance_plateau"
    UNDERPERFORMING = "underperforming"


@dataclass(frozen=True)
class Verdict:
    """A detector's finding: the reason code, one sentence of evidence, and where."""

    reason: Reason
    detail: str
    step: int
    epoch: int | None = None


class HealthPruned(optuna.TrialPruned):
    """Raised by ``HealthMonitor`` when a detector fires.

    A subclass of ``optuna.TrialPruned``, so inside an Optuna objective the trial
    ends as PRUNED; outside a study it stops the loop with the verdict attached.
    """

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"{verdict.reason}: {verdict.detail}")
        self.verdict = verdict
