"""Training health: signals, detectors and the verdicts that prune sick trials."""

from __future__ import annotations

from .detectors import (
    DETECTORS,
    BlankOutput,
    ChancePlateau,
    ClassCollapse,
    CTCInfeasible,
    DeadGradients,
    Detector,
    EvalSignals,
    GradExplosion,
    NonfiniteLoss,
    StepWindow,
    TemporalCollapse,
    VanishingGradients,
    build_detectors,
    temporal_variance_ratio,
)
from .diagnosis import diagnose
from .monitor import HealthMonitor
from .verdict import HealthPruned, Reason, Verdict

__all__ = [
    "DETECTORS",
    "BlankOutput",
    "CTCInfeasible",
    "ChancePlateau",
    "ClassCollapse",
    "DeadGradients",
    "Detector",
    "EvalSignals",
    "GradExplosion",
    "HealthMonitor",
    "HealthPruned",
    "NonfiniteLoss",
    "Reason",
    "StepWindow",
    "TemporalCollapse",
    "VanishingGradients",
    "Verdict",
    "build_detectors",
    "diagnose",
    "temporal_variance_ratio",
]
