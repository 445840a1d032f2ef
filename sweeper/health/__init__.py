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
    LabelEvidence,
    NonfiniteLoss,
    StalledUpdates,
    StepWindow,
    TemporalCollapse,
    VanishingGradients,
    build_detectors,
    label_evidence,
    temporal_variance_ratio,
)
from .diagnosis import Diagnosis, diagnose
from .monitor import HealthMonitor
from .probes import SequenceProbes, Share
from .verdict import HealthPruned, Reason, Verdict

__all__ = [
    "DETECTORS",
    "BlankOutput",
    "CTCInfeasible",
    "ChancePlateau",
    "ClassCollapse",
    "DeadGradients",
    "Detector",
    "Diagnosis",
    "EvalSignals",
    "GradExplosion",
    "HealthMonitor",
    "HealthPruned",
    "LabelEvidence",
    "NonfiniteLoss",
    "Reason",
    "SequenceProbes",
    "Share",
    "StalledUpdates",
    "StepWindow",
    "TemporalCollapse",
    "VanishingGradients",
    "Verdict",
    "build_detectors",
    "diagnose",
    "label_evidence",
    "temporal_variance_ratio",
]
