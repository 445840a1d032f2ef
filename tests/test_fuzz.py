"""Generated hostile input (``tests/fuzzing.py``): every input keeps the promise.

A bounded, reproducible run here (the inputs are derived from the test's name); a longer
one with fresh inputs is ``python bench/fuzz.py --examples 2000``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from .fuzzing import Case, broken_promise, cases, run_case, study_cases, train_cases


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "case"


SETTINGS = settings(max_examples=30, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@SETTINGS
@given(case=cases())
def test_every_generated_input_exits_0_1_or_2_with_one_line_and_nothing_written(case: Case, folder: Path) -> None:
    out = run_case(case, folder)
    assert broken_promise(case, out) is None, f"{broken_promise(case, out)}\n{case.show()}\n{out.stderr[-3000:]}"


def test_the_checker_can_fail(tmp_path: Path) -> None:
    """The promise checker catches each kind of breach (so the test above can fail)."""
    from .fuzzing import Outcome

    case = Case(argv=["run", "s"])
    assert broken_promise(case, Outcome(code=2, stdout="", stderr="sweeper: error: x\n")) is None
    assert "2 lines" in str(broken_promise(case, Outcome(code=2, stdout="", stderr="a\nb\n")))
    assert "wrote" in str(broken_promise(case, Outcome(code=2, stdout="", stderr="a\n", changed=["results/"])))
    assert "traceback" in str(broken_promise(case, Outcome(code=1, stdout="", stderr="Traceback (most recent "
                                                                                        "call last):\n")))
    assert "left main" in str(broken_promise(case, Outcome(code=None, stdout="", stderr="", escaped="E\nKeyError")))
    assert "training failed" in str(broken_promise(case, Outcome(code=1, stdout="", stderr=(
        "sweeper: sweep stopped: 5 of 5 trials failed: ValueError: x\n"))))
    assert "exit code 3" in str(broken_promise(case, Outcome(code=3, stdout="", stderr="")))
    # and a real refusal, run: it keeps the promise
    out = run_case(Case(argv=["run", "s"], files={"studies/s.yaml": b"name: s\n"}), tmp_path / "c")
    assert out.code == 2 and broken_promise(case, out) is None


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [study_cases, train_cases])
def test_the_generators_reach_runs_that_train(strategy, folder: Path) -> None:  # type: ignore[no-untyped-def]
    """Not only refusals: some generated inputs are valid and train (exit 0)."""
    codes = []

    @settings(max_examples=15, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy())
    def one(case: Case) -> None:
        codes.append(run_case(case, folder).code)

    one()
    assert 0 in codes and 2 in codes, codes
