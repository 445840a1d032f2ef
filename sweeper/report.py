"""Results of a study: ``trials.csv``, ``summary.md`` and ``plots/`` under ``results/NAME/``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from .spec import CategoricalParam, FloatParam, ParamSpec, StudySpec
from .tasks.base import show_value

HEALTH_ATTRS = ("health.reason", "health.detail", "health.step")
MAX_INT_LEVELS = 8  # an int parameter with at most this many values gets a row per value


def history_metrics(trials: Sequence[FrozenTrial], exclude: Sequence[str] = ()) -> list[str]:
    """Every metric name the trials reported per epoch (``history``), in first-seen order."""
    names: dict[str, None] = {}
    for t in trials:
        for row in t.user_attrs.get("history") or ():
            names.update((k, None) for k in row if k != "epoch" and k not in exclude)
    return list(names)


def at_value_epoch(t: FrozenTrial) -> dict[str, float]:
    """A trial's metrics at the epoch its value comes from: its best epoch when it completed,
    else the last one it reported."""
    history = t.user_attrs.get("history") or []
    if not history:
        return {}
    best = t.user_attrs.get("best_epoch")
    row = next((r for r in history if best is not None and r.get("epoch") == best), history[-1])
    return {k: v for k, v in row.items() if k != "epoch"}


def trials_frame(trials: Sequence[FrozenTrial], param_names: Sequence[str], metric: str | None = None) -> pd.DataFrame:
    """One row per trial: number, state, value, every param, health, epochs run and budgeted, seconds,
    then every other metric the trials reported (``NAME@best``: at the epoch the value comes from;
    ``metric``, the study's own, is the value and gets no column)."""
    extra = history_metrics(trials, exclude=[metric] if metric else [])
    rows = []
    for t in trials:
        config = t.user_attrs.get("config", {})
        row: dict[str, object] = {"number": t.number, "state": t.state.name, "value": t.value}
        for name in param_names:
            row[name] = config.get(name, t.params.get(name))
        for attr in HEALTH_ATTRS:
            row[attr] = t.user_attrs.get(attr)
        row["epochs_run"] = t.user_attrs.get("epochs_run")
        row["epochs"] = config.get("epochs")
        row["seconds"] = (
            round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
            if t.datetime_complete and t.datetime_start else None
        )
        row["error"] = t.user_attrs.get("error")
        row["retry_of"] = t.system_attrs.get("failed_trial")
        at = at_value_epoch(t)
        for name in extra:
            row[f"{name}@best"] = at.get(name)
        rows.append(row)
    columns = ["number", "state", "value", *param_names, *HEALTH_ATTRS, "epochs_run", "epochs", "seconds", "error",
               "retry_of", *(f"{name}@best" for name in extra)]
    return pd.DataFrame(rows, columns=columns)


def curves_frame(trials: Sequence[FrozenTrial]) -> pd.DataFrame:
    """Every reported epoch of every trial: number, state, epoch, then one column per metric."""
    names = history_metrics(trials)
    rows = [{"number": t.number, "state": t.state.name, **row} for t in trials
            for row in t.user_attrs.get("history") or ()]
    return pd.DataFrame(rows, columns=["number", "state", "epoch", *names])


def md_table(frame: pd.DataFrame) -> str:
    """GitHub markdown table (pandas' to_markdown needs the optional tabulate)."""
    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float | np.floating):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


# ---------------------------------------------------------------- factor tables


def factor_levels(values: pd.Series, param: ParamSpec) -> pd.Series:
    """The level each trial's value falls in: the value itself for categorical and small
    int factors, the decade for log-scaled floats, quartile bins otherwise."""
    if isinstance(param, CategoricalParam):
        return values.map(lambda v: "off" if v is None or (isinstance(v, float) and math.isnan(v)) else show_value(v))
    numeric = pd.to_numeric(values, errors="coerce")
    if not isinstance(param, FloatParam) and numeric.nunique() <= MAX_INT_LEVELS:
        return numeric.map(lambda v: "" if math.isnan(v) else str(int(v)))
    if param.log:
        decade = np.floor(np.log10(numeric.where(numeric > 0)))
        return decade.map(lambda d: "" if math.isnan(d) else f"1e{int(d)} to 1e{int(d) + 1}")
    if numeric.nunique() <= 1:
        return numeric.map(lambda v: f"{v:.3g}")
    bins = pd.qcut(numeric, q=min(4, numeric.nunique()), duplicates="drop")
    return bins.map(lambda iv: f"{iv.left:.3g} to {iv.right:.3g}").astype(str)


def _pruned_by_reason(group: pd.DataFrame) -> str:
    pruned = group[group["state"] == TrialState.PRUNED.name]
    counts = pruned["health.reason"].fillna("unknown").value_counts()
    return ", ".join(f"{reason} {n}" for reason, n in counts.items())


def factor_table(frame: pd.DataFrame, name: str, param: ParamSpec, direction: str) -> pd.DataFrame:
    """Per level of one factor: trials, completed, pruned by reason, best and median metric."""
    levels = factor_levels(frame[name], param)
    order = _level_order(frame[name], levels, param)
    rows = []
    for level in order:
        group = frame[levels == level]
        done = group[group["state"] == TrialState.COMPLETE.name]["value"].dropna()
        best = (done.min() if direction == "minimize" else done.max()) if len(done) else math.nan
        rows.append({name: level, "trials": len(group), "completed": len(done),
                     "pruned (reason n)": _pruned_by_reason(group),
                     "best": best, "median": done.median() if len(done) else math.nan})
    return pd.DataFrame(rows)


def _level_order(values: pd.Series, levels: pd.Series, param: ParamSpec) -> list[str]:
    if isinstance(param, CategoricalParam):
        shown = ["off" if c is None else show_value(c) for c in param.choices]
        return [s for s in shown if (levels == s).any()] + sorted(set(levels) - set(shown))
    numeric = pd.to_numeric(values, errors="coerce")
    first = pd.DataFrame({"level": levels, "v": numeric}).groupby("level")["v"].min().sort_values()
    return [lv for lv in first.index if lv != ""]


def pruning_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pruning reason: count, median epoch it was pruned at, one example of the evidence."""
    pruned = frame[frame["state"] == TrialState.PRUNED.name]
    rows = []
    for reason, group in pruned.groupby(pruned["health.reason"].fillna("unknown"), sort=False):
        example = group.dropna(subset=["health.detail"]).head(1)
        rows.append({"reason": reason, "trials": len(group),
                     "median epochs run": group["epochs_run"].median(),
                     "example": (f"trial {int(example['number'].iloc[0])}: {example['health.detail'].iloc[0]}"
                                 if len(example) else "")})
    out = pd.DataFrame(rows, columns=["reason", "trials", "median epochs run", "example"])
    return out.sort_values("trials", ascending=False, kind="stable")


def importances(study: optuna.Study) -> dict[str, float] | str:
    """Parameter importance over completed trials, or why there is none."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return f"{len(done)} completed trial(s): importance needs at least 2"
    # PED-ANOVA is quick on thousands of trials; fANOVA's forest is the better estimate on fewer
    evaluator = (optuna.importance.FanovaImportanceEvaluator(seed=0) if len(done) <= 300
                 else optuna.importance.PedAnovaImportanceEvaluator())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError) as e:
        return f"not computable: {e}"


def compute_spent(frame: pd.DataFrame) -> tuple[float, int, int]:
    """Trial-seconds, epochs run, and epochs saved by pruning (budgeted minus run)."""
    seconds = float(frame["seconds"].fillna(0).sum())
    run = int(frame["epochs_run"].fillna(0).sum())
    pruned = frame[frame["state"] == TrialState.PRUNED.name]
    saved = int((pruned["epochs"].fillna(0) - pruned["epochs_run"].fillna(0)).clip(lower=0).sum())
    return seconds, run, saved


def summary_markdown(study: optuna.Study, spec: StudySpec, *, top: int = 10,
                     frame: pd.DataFrame | None = None) -> str:
    """The study summary: header, top trials, a table per factor, pruning reasons, importance."""
    frame = (trials_frame(study.get_trials(deepcopy=False), list(spec.params), spec.metric) if frame is None
             else frame)
    by_state = frame["state"].value_counts().to_dict() if len(frame) else {}
    seconds, epochs_run, saved = compute_spent(frame)
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"- task: `{spec.task}`; metric: `{spec.metric}` ({spec.direction})",
        f"- budget: {spec.budget.trials} finished trials of {spec.budget.epochs or 'task default'} epochs; "
        "trials by state: " + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) or "none"),
        f"- compute: {seconds:.0f} trial-seconds, {epochs_run} epochs run; pruning saved {saved} epochs "
        "(budgeted epochs of pruned trials that did not run)",
    ]
    done = frame[frame["state"] == TrialState.COMPLETE.name]
    if done.empty:
        lines += ["", "No trial has completed yet: there is no best trial and no comparison to make."]
        if len(frame[frame["state"] == TrialState.PRUNED.name]):
            lines += ["", "## Pruning reasons", "", md_table(pruning_table(frame))]
        return "\n".join(lines) + "\n"
    best = done.sort_values("value", ascending=spec.direction == "minimize")
    first = best.iloc[0]
    lines.append(f"- best: {spec.metric} = {first['value']:.4g} (trial {int(first['number'])})")
    cols = ["number", "value", *spec.params, "epochs_run", "seconds"]
    shown = best[cols].head(top).copy()
    for name, param in spec.params.items():
        if isinstance(param, CategoricalParam) and None in param.choices:
            shown[name] = shown[name].map(lambda v: "off" if v is None else v)
    lines += ["", f"## Top {min(top, len(best))} trials", "", md_table(shown)]
    lines += ["", "## By factor", "",
              f"Trials per level of each factor; best and median {spec.metric} over completed trials."]
    for name, param in spec.params.items():
        lines += ["", f"### {name}", "", md_table(factor_table(frame, name, param, spec.direction))]
    if len(frame[frame["state"] == TrialState.PRUNED.name]):
        lines += ["", "## Pruning reasons", "", md_table(pruning_table(frame))]
    imp = importances(study)
    lines += ["", "## Parameter importance", ""]
    if isinstance(imp, str):
        lines.append(f"Not computed: {imp}.")
    else:
        lines.append("Share of the metric's variance each parameter explains, over completed trials.")
        lines += ["", md_table(pd.DataFrame({"parameter": list(imp), "importance": list(imp.values())}))]
    return "\n".join(lines) + "\n"


def write_results(study: optuna.Study, spec: StudySpec, folder: Path, *, plots: bool = True) -> list[Path]:
    """Write ``trials.csv``, ``summary.md`` and (with ``plots``) ``plots/*.png``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    frame = trials_frame(trials, list(spec.params), spec.metric)
    csv_path = folder / "trials.csv"
    frame.to_csv(csv_path, index=False)
    curves_path = folder / "curves.csv"
    curves_frame(trials).to_csv(curves_path, index=False)
    md_path = folder / "summary.md"
    md_path.write_text(summary_markdown(study, spec, frame=frame))
    paths = [csv_path, curves_path, md_path]
    if plots:
        from .plots import write_plots

        paths += write_plots(study, spec, frame, folder / "plots")
    return paths
