"""Controlled ablation between a baseline config and the best config (or a fix
list's target config), over seeds.

For every factor that differs: the best config with that factor put back to the
baseline (leave-one-out) and the baseline with only that factor changed
(leave-one-in), plus both endpoints, each over N seeds. The runs are trials of
the Optuna study ``NAME-ablation`` in the study's storage, enqueued with stable
cell ids, so a killed ablation resumes with the missing runs and a crashed run
is run again.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from .errors import UserError
from .report import md_table
from .spec import SamplerSpec, StudySpec
from .sweep import FINISHED, Sweep
from .tasks.base import format_value, show_value

CELL_ATTR = "ablation.cell"
SEED_ATTR = "ablation.seed"


@dataclass(frozen=True)
class Cell:
    """One configuration of the ablation; ``id`` is stable across invocations."""

    id: str
    kind: str  # "best" (or "target"), "baseline", "leave-one-out" or "leave-one-in"
    config: Mapping[str, Any]
    factor: str | None = None
    change: str = ""
    same_as: str | None = None  # the cell whose runs this one shares (same config)

    @property
    def runs_of(self) -> str:
        return self.same_as or self.id


def factors(baseline: Mapping[str, Any], best: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between the two ends (the seed is not a factor)."""
    return [k for k in best if k != "seed" and baseline.get(k) != best.get(k)]


def design(baseline: Mapping[str, Any], best: Mapping[str, Any], *, end: str = "best") -> list[Cell]:
    """The cells comparing ``baseline`` with ``best`` (seed excluded from the factors);
    ``end`` names the far end's cells (``target`` for a fix list).

    A cell whose config equals an earlier one shares that cell's runs instead of
    running it twice (with two factors, leaving one out is leaving the other in).
    """
    cells = [Cell(end, end, dict(best)), Cell("baseline", "baseline", dict(baseline))]
    for f in factors(baseline, best):
        change = f"{format_value(best[f])} -> {format_value(baseline[f])}"
        cells.append(Cell(f"{end}-{f}", "leave-one-out", {**best, f: baseline[f]}, f, change))
    for f in factors(baseline, best):
        change = f"{format_value(baseline[f])} -> {format_value(best[f])}"
        cells.append(Cell(f"baseline+{f}", "leave-one-in", {**baseline, f: best[f]}, f, change))
    out: list[Cell] = []
    for cell in cells:
        twin = next((c for c in out if c.same_as is None and _same(cell.config, c.config)), None)
        out.append(cell if twin is None else dataclasses.replace(cell, same_as=twin.id))
    return out


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "seed"} == {k: v for k, v in b.items() if k != "seed"}


class AblationSweep(Sweep):
    """Runs every (cell, seed) once, through the sweep loop (budget, heartbeats, retries)."""

    def __init__(self, spec: StudySpec, cells: Sequence[Cell], seeds: int, *, storage: str,
                 study_name: str, results: Path, **kwargs: Any) -> None:
        # a configuration that is sick is sick in every run: no bug diagnosis, no performance pruning;
        # and every run is enqueued, so the study's sampler (a grid's budget check too) has no say
        quiet = dataclasses.replace(spec, health=dataclasses.replace(spec.health, diagnose_after=0),
                                    sampler=SamplerSpec("random"))
        distinct = sum(1 for c in cells if c.same_as is None)
        super().__init__(quiet, storage=storage, study_name=study_name, trials=distinct * seeds, **kwargs)
        self.cells = list(cells)
        self.seeds = seeds
        self.results = results  # beside the study's own results, not in a folder of its own

    def trial_config(self, trial: optuna.Trial) -> dict[str, Any]:
        return dict(trial.user_attrs["config"])

    def make_sampler(self, seed_offset: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=0)  # every trial is enqueued: nothing is sampled

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    def before_trial(self, study: optuna.Study) -> None:
        """Enqueue the runs that are neither finished, running nor queued (a crashed run counts as missing)."""
        have = {(t.user_attrs.get(CELL_ATTR), t.user_attrs.get(SEED_ATTR))
                for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING, TrialState.WAITING))}
        for cell in self.cells:
            if cell.same_as is not None:
                continue
            for seed in range(self.seeds):
                if (cell.id, seed) not in have:
                    study.enqueue_trial({}, user_attrs={CELL_ATTR: cell.id, SEED_ATTR: seed,
                                                        "config": {**cell.config, "seed": seed}})
                    return  # one at a time: the next iteration sees what this one queued


def ablation_table(trials: Sequence[FrozenTrial], cells: Sequence[Cell], seeds: int, direction: str,
                   *, end: str = "best") -> pd.DataFrame:
    """Per cell: runs, health-pruned, mean +/- std, 95% CI, difference to ``end`` and paired p-value."""
    from scipy import stats

    by_cell: dict[str, dict[int, FrozenTrial]] = {}
    for t in trials:
        if t.state in FINISHED and t.user_attrs.get(CELL_ATTR) is not None:
            by_cell.setdefault(t.user_attrs[CELL_ATTR], {})[int(t.user_attrs[SEED_ATTR])] = t

    def values(cell_id: str) -> dict[int, float]:
        return {s: t.value for s, t in by_cell.get(cell_id, {}).items()
                if t.state == TrialState.COMPLETE and t.value is not None and s < seeds}

    best = values(end)
    rows = []
    for cell in cells:
        v = values(cell.runs_of)
        arr = np.array(list(v.values()), dtype=float)
        n = len(arr)
        mean = float(arr.mean()) if n else math.nan
        std = float(arr.std(ddof=1)) if n >= 2 else math.nan
        half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n >= 2 else math.nan
        paired = sorted(set(v) & set(best))
        diffs = np.array([v[s] - best[s] for s in paired])
        diff = float(diffs.mean()) if len(diffs) else math.nan
        p = math.nan
        if cell.id != end and len(diffs) >= 2 and np.any(diffs != 0):
            with warnings.catch_warnings():  # near-identical runs: scipy warns, the p-value says it
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(stats.ttest_rel([v[s] for s in paired], [best[s] for s in paired]).pvalue)
        finished = by_cell.get(cell.runs_of, {})
        reasons = Counter(t.user_attrs.get("health.reason") for s, t in finished.items()
                          if s < seeds and t.state == TrialState.PRUNED
                          and t.user_attrs.get("health.reason") not in (None, "underperforming"))
        rows.append({
            "cell": cell.id, "kind": cell.kind + (f" (runs of {cell.same_as})" if cell.same_as else ""),
            "change": cell.change,
            "runs": len([s for s in finished if s < seeds]),
            "health-pruned": sum(reasons.values()),
            "health reasons": ", ".join(f"{r} {n}" for r, n in reasons.most_common()),
            "mean": mean, "std": std, "ci95 low": mean - half, "ci95 high": mean + half,
            f"diff to {end}": diff, "p (paired by seed)": p,
        })
    return pd.DataFrame(rows)


def ablation_markdown(table: pd.DataFrame, spec: StudySpec, seeds: int, baseline_source: str,
                      end_source: str = "the study's best trial", *, end: str = "best") -> str:
    return "\n".join([
        f"# Ablation of `{spec.name}`",
        "",
        f"Baseline: {baseline_source}. {end.capitalize()}: {end_source}. Each cell ran with seeds "
        f"0-{seeds - 1}; `{spec.metric}` is {'lower' if spec.direction == 'minimize' else 'higher'} = better. "
        f"`diff to {end}` is the mean over seeds of (cell - {end}), paired by seed; `p` is a paired t-test. "
        f"Leave-one-out puts one factor of the {end} config back to the baseline; leave-one-in changes only "
        "that factor of the baseline. A cell whose runs were all health-pruned has no mean: "
        "`health-pruned` counts them.",
        "",
        md_table(table),
        "",
    ])


def baseline_config(spec: StudySpec, base: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The ablation baseline: the fixed defaults, with ``ablation.baseline`` on top."""
    config = {**base, **spec.ablation.baseline}
    missing = [k for k in spec.params if k not in config]
    if missing:  # a user's own script: sweeper cannot know its defaults
        raise UserError(f"{spec.path}: `ablation.baseline` must give the baseline value of every searched key "
                        f"for task {spec.task}; missing: {', '.join(missing)}")
    source = ("`ablation.baseline` in the study file (" + ", ".join(
        f"{k}={show_value(v)}" for k, v in spec.ablation.baseline.items()) + ") over the fixed defaults"
              if spec.ablation.baseline else "the study's fixed values and the task's defaults")
    return config, source


def target_config(spec: StudySpec, baseline: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The far end of a fix-list ablation: the baseline with ``ablation.target`` on top."""
    config = {**baseline, **spec.ablation.target}
    if not factors(baseline, config):
        raise UserError(f"{spec.path}: `ablation.target` changes nothing: every key it sets has the "
                        "baseline's value")
    return config, "`ablation.target` in the study file (" + ", ".join(
        f"{k}={show_value(v)}" for k, v in spec.ablation.target.items()) + ") over the baseline"


def write_ablation(table: pd.DataFrame, markdown: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / "ablation.csv", folder / "ablation.md"
    table.to_csv(csv_path, index=False)
    md_path.write_text(markdown)
    return [csv_path, md_path]


def require_best(study: optuna.Study, direction: str) -> FrozenTrial:
    from .export import best_trials

    best = best_trials(study, direction)
    if not best:
        raise UserError(f"study {study.study_name!r} has no completed trial: there is no best config to ablate")
    return best[0]
