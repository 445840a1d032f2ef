"""The health zoo: sick trainers caught with a right code within 2 epochs, healthy ones (loss
scales, AMP, tiny initialisation, rare positives, slow starters) never pruned. The quick
subset case by case; the whole zoo (slow) against its promise, recall >= 95% and no false
alarm; ``bench/health_zoo.py`` runs it over several seeds."""

from __future__ import annotations

import pytest
import torch

from .zoo import CASES, Case, run_case, summarize

QUICK = [c for c in CASES if c.quick]


def _check(case: Case) -> None:
    torch.set_num_threads(1)
    result = run_case(case, seed=0)
    assert result.right, summarize([result])
    if not case.sick:
        assert result.learned, f"{case.name}: {result.metric} {result.value:.3f}, not a healthy reference"


def test_the_quick_subset_covers_every_code_and_both_kinds() -> None:
    codes = {code for c in QUICK for code in c.accepted}
    assert {"grad_explosion", "nonfinite_loss", "dead_gradients", "stalled_updates", "class_collapse",
            "temporal_collapse"} <= codes
    assert sum(c.sick for c in QUICK) >= 8 and sum(not c.sick for c in QUICK) >= 8
    assert len({c.arch for c in CASES}) >= 5
    assert sum(c.sick for c in CASES) >= 30 and sum(not c.sick for c in CASES) >= 20


@pytest.mark.parametrize("case", QUICK, ids=[c.name for c in QUICK])
def test_quick_zoo_case(case: Case) -> None:
    _check(case)


@pytest.mark.slow
def test_the_whole_zoo_keeps_its_promise() -> None:
    torch.set_num_threads(1)
    results = [run_case(case, seed=0) for case in CASES]
    sick = [r for r in results if r.sick]
    healthy = [r for r in results if not r.sick]
    report = summarize(results)
    assert sum(r.right for r in sick) >= 0.95 * len(sick), report
    assert all(r.right for r in healthy), report
    assert all(r.learned for r in healthy), report  # each healthy case is evidence of health
