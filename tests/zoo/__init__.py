"""The health zoo: sick and healthy trainers written as users write them, for measuring detectors.

Each case is a small training run on real data (scikit-learn's handwritten digits,
composed into images, row sequences, strips or token sequences by the code in
``data.py``) with the monitor hooked in as the README shows. A sick case lists the
reason codes that count as right; a healthy one must not be pruned at all.
``bench/health_zoo.py`` runs them all over seeds; ``tests/test_health_zoo.py`` a subset.
"""

from __future__ import annotations

from .cases import CASES, Case, get_case
from .runner import CaseResult, run_case, summarize

__all__ = ["CASES", "Case", "CaseResult", "get_case", "run_case", "summarize"]
