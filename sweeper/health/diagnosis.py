"""Sweep-level diagnosis: one health code in every early trial points at the code, not the space."""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from .verdict import Reason


def diagnose(trials: Sequence[FrozenTrial], first: int) -> str | None:
    """If the study's first ``first`` finished trials were all health-pruned with one
    reason, a sentence saying so, with the evidence; else ``None``."""
    if first < 1:
        return None
    finished = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                      key=lambda t: t.number)[:first]
    if len(finished) < first:
        return None
    reasons = {t.user_attrs.get("health.reason") for t in finished}
    if len(reasons) != 1:
        return None
    reason = reasons.pop()
    if reason is None or reason == Reason.UNDERPERFORMING:
        return None
    varied = sorted({k for t in finished for k in t.params if len({repr(u.params.get(k)) for u in finished}) > 1})
    spread = f" although {', '.join(varied)} varied" if varied else ""
    evidence = "; ".join(f"trial {t.number}: {t.user_attrs.get('health.detail', '')}" for t in finished)
    return (f"the first {first} trials were all pruned with {reason}{spread}: most likely a bug in the model or "
            f"data code, not a hyperparameter. Evidence: {evidence}")
